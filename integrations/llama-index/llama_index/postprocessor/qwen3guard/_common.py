"""Shared helpers: resolve the guard, check options, and turn LlamaIndex content into the guard's
plain messages. Deciding, failing closed and the metadata shape are the core's
(:meth:`qwen3guard.Qwen3Guard.screen`, :func:`qwen3guard.guard.could_not_judge`,
:meth:`qwen3guard.Decision.to_dict`); nothing here re-implements them."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from qwen3guard import (
    DEFAULT_REFUSAL_MESSAGE,
    METADATA_KEY,
    Decision,
    Qwen3Guard,
    get_default_guard,
)
from qwen3guard.stream.session import NO_PROMPT as _CORE_NO_PROMPT

log = logging.getLogger("llama_index.postprocessor.qwen3guard")

ExitBehavior = Literal["error", "replace"]
Messages = list[dict[str, str]]

#: The prompt an answer is judged against when no question is known (the core's placeholder).
NO_PROMPT: tuple[dict[str, str], ...] = _CORE_NO_PROMPT

#: The former name of :data:`qwen3guard.DEFAULT_REFUSAL_MESSAGE` (the same string).
DEFAULT_VIOLATION_MESSAGE = DEFAULT_REFUSAL_MESSAGE


def resolve_guard(guard: Qwen3Guard | None) -> Qwen3Guard:
    """The guard passed in, else the process-wide default (built lazily, on first use)."""
    return guard if guard is not None else get_default_guard()


def check_exit_behavior(value: str) -> ExitBehavior:
    if value not in ("error", "replace"):
        raise ValueError(f"exit_behavior must be 'error' or 'replace', not {value!r}")
    return "error" if value == "error" else "replace"


def check_hold_back(
    hold_back_tokens: int, old_name: str | None = None, old_value: int | None = None
) -> int:
    """Validate ``hold_back_tokens`` (and a deprecated former name, which is accepted with a
    warning and ignored). The core gate releases a chunk only once its text is settled, so no
    extra hold-back is needed, and more is not supported."""
    if old_value is not None:
        if isinstance(old_value, bool) or not isinstance(old_value, int) or old_value < 0:
            raise ValueError(f"{old_name} must be an int >= 0, not {old_value!r}")
        warnings.warn(
            f"{old_name} is deprecated and ignored: streamed text is released once the guard "
            "has settled it (use hold_back_tokens)",
            DeprecationWarning,
            stacklevel=3,
        )
        return 0
    if isinstance(hold_back_tokens, bool) or not isinstance(hold_back_tokens, int):
        raise ValueError(f"hold_back_tokens must be an int >= 0, not {hold_back_tokens!r}")
    if hold_back_tokens != 0:
        raise ValueError(
            "hold_back_tokens > 0 is not supported: streamed text is released only once the "
            "guard has settled it, so no part of a flagged span is ever shown"
        )
    return hold_back_tokens


def decision_meta(decision: Decision | None, **extra: Any) -> dict[str, Any]:
    """The one metadata shape (:meth:`qwen3guard.Decision.to_dict`), plus stream details."""
    out = decision.to_dict() if decision is not None else {"allowed": True}
    out.update(extra)
    return out


def user_turn(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def response_turns(prompt: str | Messages | None, response: str) -> Messages:
    """An answer after its prompt (the question, or the messages before it)."""
    if prompt is None:
        before: Messages = [dict(m) for m in NO_PROMPT]
    elif isinstance(prompt, str):
        before = user_turn(prompt)
    else:
        before = list(prompt)
    return [*before, {"role": "assistant", "content": response}]


def to_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def block_texts(blocks: Sequence[Any]) -> tuple[list[str], list[str]]:
    """The text of LlamaIndex content blocks, nested ones included, and the kinds of the blocks
    whose content no text guard can read (images, audio, video, binary documents)."""
    texts: list[str] = []
    unreadable: list[str] = []
    for block in blocks:
        kind = getattr(block, "block_type", type(block).__name__)
        if isinstance(block, str):
            texts.append(block)
        elif kind == "text":
            texts.append(getattr(block, "text", "") or "")
        elif kind == "thinking":
            texts.append(getattr(block, "content", None) or "")
        elif kind == "tool_call":
            kwargs = getattr(block, "tool_kwargs", None)
            texts.append(kwargs if isinstance(kwargs, str) else to_json(kwargs))
        elif kind == "citable":
            texts.append(getattr(block, "title", "") or "")
            inner, bad = block_texts(getattr(block, "content", None) or [])
            texts += inner
            unreadable += bad
        elif kind == "citation":
            texts.append(getattr(block, "title", "") or "")
            inner, bad = block_texts([getattr(block, "cited_content", None)] if
                                     getattr(block, "cited_content", None) is not None else [])
            texts += inner
            unreadable += bad
        elif kind == "document":
            text = _document_text(block)
            if text is None:
                unreadable.append(kind)
            else:
                texts.append(text)
        elif kind == "cache":
            continue  # a cache marker carries no content
        else:
            unreadable.append(str(kind))
    return [t for t in texts if t], unreadable


def _document_text(block: Any) -> str | None:
    """A document block's text when it is plain text (else None: it cannot be judged)."""
    mimetype = (getattr(block, "document_mimetype", None) or "").lower()
    if not (mimetype.startswith("text/") or mimetype in ("application/json", "")):
        return None
    try:
        data = block.resolve_document().read() if hasattr(block, "resolve_document") else None
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
    """LlamaIndex ``ChatMessage`` objects (or dicts) as the guard's plain messages.

    Everything the LLM reads is kept: text blocks, thinking, tool calls an assistant turn made
    (as their JSON arguments) and nested citable content. Messages without any text are skipped;
    roles the guard does not know are read as user turns (content is data).
    """
    out: Messages = []
    for m in messages:
        if isinstance(m, Mapping):
            role, content, blocks = m.get("role"), m.get("content"), None
        else:
            role, blocks = getattr(m, "role", None), getattr(m, "blocks", None)
            content = None if blocks is not None else getattr(m, "content", None)
        role = getattr(role, "value", role)
        parts: list[str] = []
        if isinstance(content, str):
            parts.append(content)
        if blocks:
            parts += block_texts(blocks)[0]
        text = "\n".join(p for p in parts if p)
        if not text.strip():
            continue
        role = role if role in ("system", "user", "assistant", "tool") else "user"
        out.append({"role": role, "content": text})
    return out


__all__ = [
    "DEFAULT_REFUSAL_MESSAGE",
    "DEFAULT_VIOLATION_MESSAGE",
    "METADATA_KEY",
    "NO_PROMPT",
    "ExitBehavior",
    "Messages",
    "block_texts",
    "chat_messages_to_dicts",
    "check_exit_behavior",
    "check_hold_back",
    "decision_meta",
    "resolve_guard",
    "response_turns",
    "to_json",
    "user_turn",
]
