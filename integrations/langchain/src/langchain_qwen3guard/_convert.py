"""LangChain objects -> what the guard judges.

A LangChain message is handed to the core reader (:mod:`qwen3guard.content`) as a mapping of
the fields an LLM sees or emits: its role, ``content`` (a string or content blocks),
``tool_calls``, ``invalid_tool_calls``, ``tool_call_chunks`` and ``additional_kwargs``; so text,
reasoning / thinking blocks, tool calls (well-formed or not), ``function_call`` and structured
output are all read, and a block the guard cannot read raises
:class:`qwen3guard.InvalidInputError` naming its type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue

from qwen3guard import DEFAULT_REFUSAL_MESSAGE, METADATA_KEY, Decision
from qwen3guard.content import (
    NO_PROMPT,
    MessageContent,
    NonText,
    ToolCallText,
    answer_conversation,
    as_text,
    read_message,
)

__all__ = [
    "DEFAULT_VIOLATION_MESSAGE",
    "METADATA_KEY",
    "NO_PROMPT",
    "GuardMessage",
    "answer_conversation",
    "as_text",
    "chunk_text",
    "decision_metadata",
    "format_violation",
    "message_content",
    "message_text",
    "message_to_guard",
    "messages_to_guard",
    "to_messages",
    "tool_calls_of",
]

GuardMessage = dict[str, str]

#: The text shown in place of blocked content unless a component is given its own
#: (``violation_message=``): the one default of every qwen3guard integration.
DEFAULT_VIOLATION_MESSAGE = DEFAULT_REFUSAL_MESSAGE

#: Deprecated name of :data:`NO_PROMPT` (never documented).
UNKNOWN_PROMPT = NO_PROMPT

_ROLES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "AIMessageChunk": "assistant",
    "assistant": "assistant",
    "system": "system",
    "SystemMessageChunk": "system",
    "developer": "system",
    "tool": "tool",
    "ToolMessageChunk": "tool",
    "function": "tool",
    "FunctionMessageChunk": "tool",
    "HumanMessageChunk": "user",
}

_STAGE_NAMES = {
    "input": "request",
    "output": "response",
    "tool_call": "tool call",
    "tool_result": "tool result",
    "retrieval": "retrieved content",
}


def role_of_message(message: BaseMessage) -> str:
    """``system``, ``user``, ``assistant`` or ``tool``. A ``ChatMessage`` with a role the guard
    does not know is read as ``user`` (text the model reads)."""
    role = _ROLES.get(message.type)
    if role is None:  # ChatMessage / ChatMessageChunk: its own role
        role = _ROLES.get(str(getattr(message, "role", "")).lower(), "user")
    return role


def _fields(message: BaseMessage, role: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "role": role,
        "content": message.content,
        "additional_kwargs": message.additional_kwargs,
    }
    for key in ("tool_calls", "invalid_tool_calls", "tool_call_chunks"):
        value = getattr(message, key, None)
        if value:
            fields[key] = value
    return fields


def message_content(message: BaseMessage, *, non_text: NonText = "error") -> MessageContent:
    """Every text of a LangChain message (see the module docstring)."""
    where = f"{type(message).__name__}"
    return read_message(_fields(message, role_of_message(message)), where=where,
                        non_text=non_text)


def message_text(message: BaseMessage) -> str:
    """What a message says: its text and reasoning (tool calls aside)."""
    return message_content(message).said


def chunk_text(message: BaseMessage) -> str:
    """The text a streamed chunk adds to the answer: its text and reasoning, exactly as
    streamed (no separators added). Tool-call data is not text (see :func:`tool_calls_of`)."""
    fields = _fields(message, "assistant")
    for key in ("tool_calls", "invalid_tool_calls", "tool_call_chunks"):
        fields.pop(key, None)
    extra = {k: v for k, v in message.additional_kwargs.items() if k not in _HELD_KWARGS}
    fields["additional_kwargs"] = extra
    content = read_message(fields, where=type(message).__name__)
    if isinstance(message.content, str) and not content.reasoning:
        return message.content  # the common case: whitespace kept as streamed
    return content.reasoning + content.text


#: ``additional_kwargs`` that are not streamed answer text: tool calls, and a structured output
#: (judged whole, by Gen, once the stream has ended).
_HELD_KWARGS = ("tool_calls", "function_call", "parsed")


def structured_output_of(message: BaseMessage) -> str | None:
    """A message's structured output (``additional_kwargs["parsed"]``) as JSON text."""
    parsed = message.additional_kwargs.get("parsed")
    return as_text(parsed) if parsed is not None else None


def has_tool_call_data(message: BaseMessage) -> bool:
    """Whether a (chunk) message carries tool-call data of any kind, or a structured output:
    data that is judged whole once the stream has ended."""
    if getattr(message, "tool_call_chunks", None) or getattr(message, "tool_calls", None):
        return True
    if getattr(message, "invalid_tool_calls", None):
        return True
    extra = message.additional_kwargs
    if any(extra.get(k) is not None for k in _HELD_KWARGS):
        return True
    content = message.content
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") in (
            "tool_call", "tool_call_chunk", "tool_use", "server_tool_call",
            "server_tool_call_chunk", "function_call", "invalid_tool_call",
        )
        for b in content
    )


def tool_calls_of(message: BaseMessage) -> tuple[ToolCallText, ...]:
    """Every tool call of a message (parsed, invalid, raw provider fields, blocks)."""
    return message_content(message, non_text="skip").tool_calls


def message_to_guard(message: BaseMessage) -> GuardMessage | None:
    """One LangChain message as a guard message (everything it holds, tool calls written
    out); ``None`` when it has no text."""
    content = message_content(message)
    text = content.full_text
    if not text.strip():
        return None
    return {"role": content.role, "content": text}


def messages_to_guard(messages: Sequence[Any]) -> list[GuardMessage]:
    """A conversation (LangChain messages, tuples, dicts or strings) as guard messages; turns
    without text are left out. A message the guard cannot read raises
    :class:`qwen3guard.InvalidInputError`."""
    out: list[GuardMessage] = []
    for m in convert_to_messages(list(messages)):
        g = message_to_guard(m)
        if g is not None:
            out.append(g)
    return out


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
    """What the integration records about a decision: :meth:`qwen3guard.Decision.to_dict`."""
    return decision.to_dict()


def document_text(doc: Document) -> str:
    return doc.page_content


def text_of_value(value: Any) -> str:
    """Text of an arbitrary tool input / output (strings as they are, the rest as JSON)."""
    if isinstance(value, BaseMessage):
        return message_text(value)
    if isinstance(value, Document):
        return value.page_content
    return as_text(value)
