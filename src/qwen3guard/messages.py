"""Validation and normalisation of the conversations handed to the guard.

Everything downstream sees a list of ``{"role": ..., "content": str}`` dicts whose roles are
``system``, ``user`` or ``assistant``. Tool results are judged as input the model will read,
so a ``tool`` message becomes a ``user`` turn (the Gen template drops tool messages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInputError
from .verdict import Role

Message = dict[str, str]

_ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "user",
    "function": "user",
}


def checked_text(text: str, where: str) -> str:
    """``text`` if it can be encoded (UTF-8); a lone surrogate cannot, and would fail the whole
    batch it is in deep inside the tokenizer, so it fails here, alone."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{where} is not valid text: {exc.reason} at position {exc.start}"
        ) from None
    return text


def content_text(content: Any, *, where: str = "content") -> str:
    """Plain text of a message's content: a string, or OpenAI-style text parts."""
    if isinstance(content, str):
        return checked_text(content, where)
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(checked_text(part, where))
            elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(
                part.get("text"), str
            ):
                parts.append(checked_text(part["text"], where))
            else:
                raise InvalidInputError(
                    f"{where}: only text can be judged; got a part of type "
                    f"{part.get('type') if isinstance(part, Mapping) else type(part).__name__!r}"
                )
        return "\n".join(parts)
    raise InvalidInputError(
        f"{where} must be a string (or a list of text parts), not {type(content).__name__}"
    )


def normalize_messages(messages: Any) -> list[Message]:
    """Check a conversation and return it in canonical form. Raises InvalidInputError."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or isinstance(messages, (bytes, bytearray)):
        raise InvalidInputError(
            f"messages must be a string or a list of {{'role', 'content'}} dicts, "
            f"not {type(messages).__name__}"
        )
    if not messages:
        raise InvalidInputError("messages is empty: there is nothing to judge")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
        elif hasattr(m, "role") and hasattr(m, "content"):
            role, content = m.role, m.content
        else:
            raise InvalidInputError(
                f"messages[{i}] must be a dict with 'role' and 'content', not {type(m).__name__}"
            )
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise InvalidInputError(
                f"messages[{i}] has unknown role {role!r}; expected one of "
                "system, user, assistant, tool"
            )
        out.append({"role": _ROLE_ALIASES[role.lower()], "content": content_text(content, where=f"messages[{i}].content")})
    last = out[-1]
    if last["role"] == "system":
        raise InvalidInputError("the last message is a system message: judge a user or assistant turn")
    if not last["content"].strip():
        raise InvalidInputError("the last message is empty: there is nothing to judge")
    return out


def role_of(messages: Sequence[Message]) -> Role:
    """The role the Gen template judges: the last message's."""
    return Role.RESPONSE if messages[-1]["role"] == "assistant" else Role.PROMPT


def require_text(value: Any, name: str) -> str:
    if value is None:
        raise InvalidInputError(f"{name} is None: there is nothing to judge")
    text = content_text(value, where=name)
    if not text.strip():
        raise InvalidInputError(f"{name} is empty: there is nothing to judge")
    return text
