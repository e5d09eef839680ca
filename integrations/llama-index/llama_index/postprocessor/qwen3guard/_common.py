"""Shared helpers: resolve the guard, check options, and turn LlamaIndex messages and content
blocks into the core's shapes. Deciding, failing closed and the metadata shape are the core's
(:meth:`qwen3guard.Qwen3Guard.screen`, :func:`qwen3guard.guard.could_not_judge`,
:meth:`qwen3guard.Decision.to_dict`); what a message contains is read by the core's one rule
(:mod:`qwen3guard.content`): nothing here re-implements them."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from llama_index.core.tools.types import ToolOutput

from qwen3guard import (
    DEFAULT_REFUSAL_MESSAGE,
    METADATA_KEY,
    Decision,
    InvalidInputError,
    Qwen3Guard,
    Surface,
    get_default_guard,
)
from qwen3guard.content import (
    NO_PROMPT,
    MessageContent,
    NonText,
    answer_conversation,
    read_content,
    read_message,
    tool_call_conversation,
    tool_result_conversation,
)

log = logging.getLogger("llama_index.postprocessor.qwen3guard")

ExitBehavior = Literal["error", "replace"]
Messages = list[dict[str, str]]

#: The former name of :data:`qwen3guard.DEFAULT_REFUSAL_MESSAGE` (the same string).
DEFAULT_VIOLATION_MESSAGE = DEFAULT_REFUSAL_MESSAGE

# LlamaIndex roles the core does not spell that way.
_ROLES = {"chatbot": "assistant", "model": "assistant"}


def resolve_guard(guard: Qwen3Guard | None) -> Qwen3Guard:
    """The guard passed in, else the process-wide default (built lazily, on first use)."""
    return guard if guard is not None else get_default_guard()


def check_exit_behavior(value: str) -> ExitBehavior:
    if value not in ("error", "replace"):
        raise ValueError(f"exit_behavior must be 'error' or 'replace', not {value!r}")
    return "error" if value == "error" else "replace"


def check_hold_back(**given: int | None) -> None:
    """``hold_back_tokens`` (the name the LangChain integration uses too) and its former names:
    deprecated, with no effect. The core gate releases a chunk only once its text is settled,
    so it decides what is held back; a value passed warns."""
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        warnings.warn(
            f"{name} is deprecated and has no effect: only text the guard has settled is "
            "passed on (qwen3guard.StreamGate)",
            DeprecationWarning,
            stacklevel=3,
        )


def decision_meta(decision: Decision | None, **extra: Any) -> dict[str, Any]:
    """The one metadata shape (:meth:`qwen3guard.Decision.to_dict`), plus stream details."""
    out = decision.to_dict() if decision is not None else {"allowed": True}
    out.update(extra)
    return out


def user_turn(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def response_turns(prompt: str | Messages | None, response: str) -> Messages:
    """An answer after its prompt (the question, or the messages before it; with neither, the
    core's :data:`~qwen3guard.content.NO_PROMPT` question)."""
    if prompt is None:
        context: Messages = []
    elif isinstance(prompt, str):
        context = user_turn(prompt) if prompt.strip() else []
    else:
        context = list(prompt)
    return answer_conversation(context, response)


def core_blocks(blocks: Sequence[Any]) -> list[Any]:
    """LlamaIndex content blocks in the core's block shapes (:mod:`qwen3guard.content`), so the
    core decides what is text: citable and citation blocks are read through (their title and
    their content), a plain-text document as its text, a cache marker not at all; an image,
    audio, video or binary document stays a block the core says it cannot judge, and a block
    type nobody knows is passed on by its name (the core refuses it by name)."""
    out: list[Any] = []
    for block in blocks:
        if isinstance(block, (str, Mapping)):
            out.append(block)
            continue
        kind = getattr(block, "block_type", None) or type(block).__name__
        if kind == "text":
            out.append({"type": "text", "text": getattr(block, "text", "")})
        elif kind == "thinking":
            out.append({"type": "thinking", "thinking": getattr(block, "content", None) or ""})
        elif kind == "tool_call":
            out.append({
                "type": "tool_call",
                "name": getattr(block, "tool_name", None),
                "args": getattr(block, "tool_kwargs", None),
                "id": getattr(block, "tool_call_id", None),
            })
        elif kind == "citable":
            out.append({"type": "text", "text": getattr(block, "title", "") or ""})
            out += core_blocks(getattr(block, "content", None) or [])
        elif kind == "citation":
            out.append({"type": "text", "text": getattr(block, "title", "") or ""})
            cited = getattr(block, "cited_content", None)
            out += core_blocks([cited] if cited is not None else [])
        elif kind == "document":
            text = _document_text(block)
            out.append({"type": "text", "text": text} if text is not None else {"type": kind})
        elif kind == "cache":
            continue  # a cache marker carries no content
        else:
            out.append({"type": str(kind)})
    return out


def read_blocks(blocks: Sequence[Any], *, role: str = "tool", non_text: NonText = "error"
                ) -> MessageContent:
    """Every text of LlamaIndex content blocks (raises InvalidInputError for what cannot be
    judged, unless ``non_text="skip"``)."""
    return read_content(core_blocks(blocks), role=role, non_text=non_text)


def read_chat_message(message: Any, *, non_text: NonText = "error") -> MessageContent:
    """Every text of a LlamaIndex ``ChatMessage`` (or a plain mapping): its blocks, and the
    fields of ``additional_kwargs`` that carry text (tool calls, reasoning)."""
    if isinstance(message, Mapping):
        return read_message(message, non_text=non_text)
    role = getattr(message, "role", None)
    role = getattr(role, "value", role)
    blocks = getattr(message, "blocks", None)
    content = core_blocks(blocks) if blocks is not None else getattr(message, "content", None)
    return read_message(
        {
            "role": _ROLES.get(str(role), role),
            "content": content,
            "additional_kwargs": getattr(message, "additional_kwargs", None) or {},
        },
        non_text=non_text,
    )


def _document_text(block: Any) -> str | None:
    """A document block's text when it is plain text (else None: it cannot be judged)."""
    mimetype = (getattr(block, "document_mimetype", None) or "").lower()
    if not (mimetype.startswith("text/") or mimetype == "application/json"):
        return None
    try:
        data = block.resolve_document().read()
    except Exception:  # noqa: BLE001 - unreadable data is judged as unreadable
        return None
    if not isinstance(data, (bytes, bytearray)):
        return None
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    title = getattr(block, "title", None)
    return f"{title}\n{text}" if title else text


def chat_messages_to_dicts(messages: Sequence[Any]) -> Messages:
    """LlamaIndex ``ChatMessage`` objects (or dicts) as the guard's plain messages, for use as
    context: every text the LLM reads (tool calls written out); blocks a text guard cannot
    read are left out, and messages with no text are skipped."""
    out: Messages = []
    for m in messages:
        content = read_chat_message(m, non_text="skip")
        if content.full_text.strip():
            out.append({"role": content.role, "content": content.full_text})
    return out


def tool_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, skip: str | None = None
) -> Any:
    """A tool call's arguments as the LLM gave them: the keyword arguments (a lone positional
    argument on its own). Workflow ``Context`` objects are not content and are left out."""
    pos = [a for a in args if not is_context(a)]
    kw = {k: v for k, v in kwargs.items() if k != skip and not is_context(v)}
    if pos and not kw:
        return pos[0] if len(pos) == 1 else pos
    return {"args": pos, **kw} if pos else kw


def arguments_messages(name: str | None, arguments: Any) -> Messages | None:
    """How a tool call is judged (the core's :func:`~qwen3guard.content.tool_call_conversation`:
    ``name(arguments)`` as a request); None when there is nothing to judge."""
    return tool_call_conversation(name, arguments) or None


def output_messages(output: ToolOutput) -> Messages | Decision | None:
    """What the LLM will read of a tool's output (every block, read by the core's rule) as the
    guard's conversation; a blocked decision when part of it cannot be judged as text; None
    when it carries no content."""
    try:
        text = read_blocks(output.blocks, role="tool").full_text
    except InvalidInputError as exc:
        error = InvalidInputError(f"the output of tool {output.tool_name!r}: {exc}")
        return Decision(False, None, Surface.TOOL_RESULT, f"cannot be judged: {error}",
                        error=error)
    return tool_result_conversation(text) or None


def is_context(value: Any) -> bool:
    """A workflow ``Context`` (handed to tools by agents; not content)."""
    try:
        from llama_index.core.workflow import Context
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Context)


__all__ = [
    "DEFAULT_REFUSAL_MESSAGE",
    "DEFAULT_VIOLATION_MESSAGE",
    "METADATA_KEY",
    "NO_PROMPT",
    "ExitBehavior",
    "Messages",
    "arguments_messages",
    "chat_messages_to_dicts",
    "core_blocks",
    "check_exit_behavior",
    "check_hold_back",
    "decision_meta",
    "is_context",
    "output_messages",
    "resolve_guard",
    "read_blocks",
    "read_chat_message",
    "response_turns",
    "tool_arguments",
    "user_turn",
]
