"""A completion as TRL passes it, turned into what the guard judges: the prompt's messages, and
the completion split into its thinking and its answer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass(frozen=True)
class CompletionParts:
    """A completion split into its thinking and its answer (either may be empty)."""

    thinking: str
    answer: str
    closed: bool = True  # False when a thinking block was opened and never closed


def split_thinking(text: str) -> CompletionParts:
    """Split ``<think>...</think>answer``.

    Also handles a completion that starts inside the thinking (Qwen3's chat template puts
    ``<think>`` in the generation prompt, so the completion is ``...</think>answer``) and one
    whose thinking never closes (everything after ``<think>`` is thinking, the answer empty).
    Several thinking blocks are joined.
    """
    if _THINK_CLOSE not in text and _THINK_OPEN not in text:
        return CompletionParts("", text.strip())
    blocks: list[str] = []
    rest = text
    first_close = rest.find(_THINK_CLOSE)
    first_open = rest.find(_THINK_OPEN)
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        blocks.append(rest[:first_close])  # started inside the thinking
        rest = rest[first_close + len(_THINK_CLOSE) :]
    answer_parts: list[str] = []
    pos = 0
    for m in _THINK_BLOCK.finditer(rest):
        answer_parts.append(rest[pos : m.start()])
        blocks.append(m.group(1))
        pos = m.end()
    tail = rest[pos:]
    closed = True
    if _THINK_OPEN in tail:  # a block that never closes
        before, _, inside = tail.partition(_THINK_OPEN)
        answer_parts.append(before)
        blocks.append(inside)
        closed = False
    else:
        answer_parts.append(tail)
    thinking = "\n".join(b.strip() for b in blocks if b.strip())
    return CompletionParts(thinking, "".join(answer_parts).strip(), closed)


# -- turning TRL's arguments into conversations -------------------------------------------------


def _content(message: Any) -> str:
    if isinstance(message, Mapping):
        c = message.get("content")
    else:
        c = getattr(message, "content", None)
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    from ..messages import content_text

    return content_text(c)


def _role(message: Any) -> str:
    r = message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)
    return str(r or "").lower()


def prompt_messages(prompt: Any) -> list[dict[str, str]]:
    """A TRL prompt (a string, or a list of ``{role, content}`` messages) as messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        return [{"role": str(prompt.get("role", "user")), "content": _content(prompt)}]
    return [{"role": _role(m) or "user", "content": _content(m)} for m in prompt]


def completion_parts(completion: Any) -> CompletionParts:
    """The thinking and answer of a TRL completion: a string, or a list of messages (the
    assistant messages' contents are the answer; a ``reasoning_content`` / ``reasoning`` field
    or inline ``<think>`` blocks are the thinking)."""
    if isinstance(completion, str):
        return split_thinking(completion)
    messages = [completion] if isinstance(completion, Mapping) else list(completion)
    thinking: list[str] = []
    answers: list[str] = []
    closed = True
    for m in messages:
        if _role(m) not in ("assistant", "ai", ""):
            continue  # tool results etc. are not the policy's own words
        for key in ("reasoning_content", "reasoning"):
            r = m.get(key) if isinstance(m, Mapping) else getattr(m, key, None)
            if isinstance(r, str) and r.strip():
                thinking.append(r.strip())
        parts = split_thinking(_content(m))
        closed = closed and parts.closed
        if parts.thinking:
            thinking.append(parts.thinking)
        if parts.answer:
            answers.append(parts.answer)
    return CompletionParts("\n".join(thinking), "\n\n".join(answers), closed)
