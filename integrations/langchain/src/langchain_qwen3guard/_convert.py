"""LangChain objects -> the ``{"role", "content"}`` conversations the guard judges, and the
violation messages shown in place of blocked content."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue

from qwen3guard import Decision

GuardMessage = dict[str, str]

DEFAULT_VIOLATION_MESSAGE = (
    "I'm sorry, but I can't help with that. The {stage} was blocked by Qwen3Guard ({categories})."
)

#: Where the integration records what it did on a message (``response_metadata`` /
#: ``additional_kwargs``) or a document (``metadata``).
METADATA_KEY = "qwen3guard"

#: The user turn an answer is judged after when its question is not known: both Qwen3Guard
#: models judge an answer in the context of a user turn.
UNKNOWN_PROMPT = "(the question is not available; judge the answer on its own)"

_ROLES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}

_STAGE_NAMES = {
    "input": "request",
    "output": "response",
    "tool_call": "tool call",
    "tool_result": "tool result",
    "retrieval": "retrieved content",
}


def message_text(message: BaseMessage) -> str:
    """The text of a message (string content or its text blocks)."""
    return str(message.text)


def tool_calls_text(message: BaseMessage) -> str:
    """An AI message's tool calls written out as text, for judging them or their context."""
    calls = getattr(message, "tool_calls", None) or []
    return "\n".join(f"{c.get('name')}({_json(c.get('args', {}))})" for c in calls)


def message_to_guard(message: BaseMessage) -> GuardMessage | None:
    """One LangChain message as a guard message; ``None`` when it has no text to judge."""
    role = _ROLES.get(message.type)
    if role is None:  # ChatMessage with a custom role
        role = _ROLES.get(str(getattr(message, "role", "")).lower(), "user")
    text = message_text(message)
    if role == "assistant":
        calls = tool_calls_text(message)
        if calls:
            text = f"{text}\n{calls}" if text.strip() else calls
    if not text.strip():
        return None
    return {"role": role, "content": text}


def messages_to_guard(messages: Sequence[Any]) -> list[GuardMessage]:
    """A conversation (LangChain messages, tuples, dicts or strings) as guard messages; turns
    without text (an AI turn that only calls tools with no arguments, an empty chunk) are
    left out."""
    out: list[GuardMessage] = []
    for m in convert_to_messages(list(messages)):
        g = message_to_guard(m)
        if g is not None:
            out.append(g)
    return out


def answer_conversation(context: Sequence[GuardMessage], text: str) -> list[GuardMessage]:
    """An answer to judge, after its context (or :data:`UNKNOWN_PROMPT` when there is none)."""
    if not text.strip():
        return []
    before = list(context) or [{"role": "user", "content": UNKNOWN_PROMPT}]
    return [*before, {"role": "assistant", "content": text}]


def to_messages(value: Any) -> list[BaseMessage] | None:
    """``value`` as LangChain messages when it is a conversation, else ``None``."""
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], Document):
        try:
            return convert_to_messages(list(value))
        except (ValueError, TypeError, NotImplementedError):
            return None
    return None


def document_text(doc: Document) -> str:
    return doc.page_content


def format_violation(template: str | None, decision: Decision, content: str = "") -> str:
    """The text shown instead of blocked content. ``template`` may use ``{stage}``,
    ``{categories}``, ``{risk}``, ``{reason}`` and ``{content}``."""
    verdict = decision.verdict
    if verdict is None:
        categories = "the guard could not judge it"
        risk = "Unjudged"
    else:
        categories = ", ".join(c.value for c in verdict.categories) or verdict.risk.value
        risk = verdict.risk.value
    stage = decision.surface.value
    try:
        return (template or DEFAULT_VIOLATION_MESSAGE).format(
            stage=_STAGE_NAMES.get(stage, stage),
            categories=categories,
            risk=risk,
            reason=decision.reason,
            content=content,
        )
    except (KeyError, IndexError, ValueError):
        return template or DEFAULT_VIOLATION_MESSAGE


def decision_metadata(decision: Decision) -> dict[str, Any]:
    """What the integration records about a decision (JSON-friendly)."""
    return {
        "allowed": decision.allowed,
        "surface": decision.surface.value,
        "reason": decision.reason,
        "verdict": decision.verdict.to_dict() if decision.verdict is not None else None,
    }


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def as_text(value: Any) -> str:
    """Text of an arbitrary tool input / output (strings as they are, the rest as JSON)."""
    if isinstance(value, BaseMessage):
        return message_text(value)
    if isinstance(value, Document):
        return value.page_content
    if isinstance(value, (Mapping, list, tuple)):
        return _json(value)
    return value if isinstance(value, str) else _json(value)
