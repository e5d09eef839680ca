"""Validation and normalisation of the conversations handed to the guard.

Everything downstream sees a list of ``{"role": ..., "content": str}`` dicts whose roles are
``system``, ``user`` or ``assistant``, in a form the Gen chat template renders in full. Every
text of a message is read (:mod:`qwen3guard.content`): text, reasoning / thinking, tool calls,
invalid tool calls, ``function_call``, structured output; a part that cannot be judged raises
:class:`InvalidInputError`.

Which turn is an answer (:data:`ANSWER_ROLES`, :func:`role_of`): only an ``assistant``
message. The conversation is judged as an answer (response moderation, with refusal) when its
last message is an assistant turn, and as a request (prompt moderation) otherwise. A ``tool``
(or ``function``) result is text the model is about to *read*: it becomes a ``user`` turn and
is judged as a request, so that instructions injected into it are judged as what they are.
(The official Gen template would render ``[user, tool]`` as response moderation with the tool
message dropped, judging no answer at all; we do not follow it there.)

How the template would lose text, and what is done instead (:func:`normalize_messages`):

- it drops a ``system`` message that is not first: such a message is folded into the ``user``
  turn that follows it (``"<system>\\n\\n<user>"``, judged with it when that turn is judged),
  or, when an assistant turn follows, becomes a ``user`` turn of its own (a conversation that
  *ends* with a system message is an error: there is no turn to judge);
- it drops an ``assistant`` message that comes first: a :data:`~qwen3guard.content.NO_PROMPT`
  user turn is put before it, so the answer is rendered and judged;
- it drops ``tool`` messages: they become ``user`` turns (above).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .content import NO_PROMPT, NonText, checked_text, read_message
from .content import content_text as _content_text
from .errors import InvalidInputError
from .verdict import Role

Message = dict[str, str]

#: Roles whose last turn makes a conversation an answer to judge (response moderation).
ANSWER_ROLES = frozenset({"assistant"})

__all__ = [
    "ANSWER_ROLES",
    "Message",
    "checked_text",
    "content_text",
    "normalize_messages",
    "require_text",
    "role_of",
]


def content_text(content: Any, *, where: str = "content", non_text: NonText = "error") -> str:
    """All the text of a message's content: a string, or content blocks (text, reasoning,
    tool calls written out). Blocks that are not text raise :class:`InvalidInputError`."""
    return _content_text(content, where=where, non_text=non_text)


def _read(m: Any, i: int, non_text: NonText) -> Message:
    where = f"messages[{i}]"
    if isinstance(m, Mapping):
        if "role" not in m and "type" not in m:
            raise InvalidInputError(f"{where} must be a dict with 'role' and 'content'")
        content = read_message(m, where=where, non_text=non_text)
    elif hasattr(m, "role") and hasattr(m, "content"):
        fields = {"role": m.role, "content": m.content}
        extra = getattr(m, "additional_kwargs", None)  # e.g. a LlamaIndex ChatMessage
        if isinstance(extra, Mapping):
            fields["additional_kwargs"] = extra
        content = read_message(fields, where=where, non_text=non_text)
    else:
        raise InvalidInputError(
            f"{where} must be a dict with 'role' and 'content', not {type(m).__name__}"
        )
    role = "user" if content.role == "tool" else content.role
    return {"role": role, "content": content.full_text}


def _fold(messages: list[Message]) -> list[Message]:
    """The conversation in a form the Gen template renders in full (see the module
    docstring)."""
    out: list[Message] = []
    pending: list[str] = []  # system texts waiting for the user turn that follows them
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            if m["content"].strip():
                pending.append(m["content"])
            continue
        if pending:
            if m["role"] == "user":
                m = {"role": "user", "content": "\n\n".join([*pending, m["content"]])}
            else:
                out.append({"role": "user", "content": "\n\n".join(pending)})
            pending = []
        out.append(m)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    if out and out[0]["role"] == "assistant":
        out.insert(0, {"role": "user", "content": NO_PROMPT})
    return out


def normalize_messages(messages: Any, *, non_text: NonText = "error") -> list[Message]:
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
    read = [_read(m, i, non_text) for i, m in enumerate(messages)]
    if read[-1]["role"] == "system":
        raise InvalidInputError(
            "the last message is a system message: judge a user or assistant turn"
        )
    if not read[-1]["content"].strip():
        raise InvalidInputError("the last message is empty: there is nothing to judge")
    return _fold(read)


def role_of(messages: Sequence[Message]) -> Role:
    """The role the Gen template judges: an answer when the last message is in
    :data:`ANSWER_ROLES`, a request otherwise."""
    return Role.RESPONSE if messages[-1]["role"] in ANSWER_ROLES else Role.PROMPT


def require_text(value: Any, name: str) -> str:
    if value is None:
        raise InvalidInputError(f"{name} is None: there is nothing to judge")
    text = content_text(value, where=name)
    if not text.strip():
        raise InvalidInputError(f"{name} is empty: there is nothing to judge")
    return text


