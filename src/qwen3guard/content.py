"""What a message contains: every text an LLM sees or emits, found wherever it hides.

Framework-free. A message is read from a mapping in any of the shapes chat APIs use (an
OpenAI chat message, an Anthropic message, LangChain's standard content blocks and its message
fields, OpenAI Responses items); the LangChain and LlamaIndex integrations turn their message
objects into such a mapping and read them here, so one rule decides what is judged.

What is read, per message (:func:`read_message`):

- ``content``: a string, or a list of blocks. Text blocks (``text``, ``input_text``,
  ``output_text``, ``text-plain`` with its text, ``refusal``) are *text*; ``reasoning`` /
  ``thinking`` / ``reasoning_content`` blocks are *reasoning*; ``tool_call``,
  ``tool_call_chunk``, ``tool_use``, ``server_tool_call(_chunk)`` and ``function_call`` blocks
  are *tool calls*; ``invalid_tool_call`` blocks are tool calls whose arguments did not parse
  (the text the LLM emitted is judged all the same); ``tool_result``,
  ``server_tool_result`` and ``function_call_output`` blocks are text (results the LLM reads).
- the fields ``tool_calls`` (LangChain ``{"name", "args"}`` or OpenAI
  ``{"function": {"name", "arguments"}}``), ``invalid_tool_calls``, ``tool_call_chunks``,
  ``function_call``, ``reasoning_content``, ``reasoning``, ``refusal``, ``parsed`` (a
  structured output) — on the message and in its ``additional_kwargs``. Other keys of
  ``additional_kwargs`` are not sent to an LLM by the chat-model integrations and are not read.
- Blocks that are not text (images, audio, video, files, documents, encrypted
  ``redacted_thinking``) cannot be judged by a text guard: they raise
  :class:`~qwen3guard.InvalidInputError` saying so, unless ``non_text="skip"`` is passed
  (an explicit choice: the caller accepts that they are not judged).
- A block of any other type raises :class:`~qwen3guard.InvalidInputError` naming the type:
  an unknown shape is never passed silently.

Where each text is judged (see :meth:`MessageContent.surface_texts`): text and reasoning on the
message's own surface (a user, system or tool turn as input the model reads, an assistant turn
as output); each tool call on ``tool_call``, as a request made to the tool
(:func:`tool_call_conversation`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidInputError
from .policy import Surface

NonText = Literal["error", "skip"]

NO_PROMPT = "(no question was given)"
"""The user turn an answer is judged after when its question is not known: the Gen template
judges an answer only after a user turn (a leading assistant message is not rendered)."""

TEXT_BLOCKS = frozenset({"text", "input_text", "output_text", "text-plain", "refusal"})
REASONING_BLOCKS = frozenset({"reasoning", "thinking", "reasoning_content"})
TOOL_CALL_BLOCKS = frozenset(
    {
        "tool_call",
        "tool_call_chunk",
        "tool_use",
        "server_tool_call",
        "server_tool_call_chunk",
        "function_call",
    }
)
INVALID_TOOL_CALL_BLOCKS = frozenset({"invalid_tool_call"})
RESULT_BLOCKS = frozenset({"tool_result", "server_tool_result", "function_call_output"})
NON_TEXT_BLOCKS = frozenset(
    {
        "image",
        "image_url",
        "input_image",
        "audio",
        "input_audio",
        "file",
        "input_file",
        "video",
        "document",
        "redacted_thinking",
    }
)
KNOWN_BLOCKS = (
    TEXT_BLOCKS
    | REASONING_BLOCKS
    | TOOL_CALL_BLOCKS
    | INVALID_TOOL_CALL_BLOCKS
    | RESULT_BLOCKS
    | NON_TEXT_BLOCKS
)

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
    "function": "tool",
}

#: Message fields (and ``additional_kwargs`` keys) read for text the LLM sees or emits.
_FIELDS = (
    "tool_calls",
    "invalid_tool_calls",
    "tool_call_chunks",
    "function_call",
    "reasoning_content",
    "reasoning",
    "thinking",
    "refusal",
    "parsed",
)


@dataclass(frozen=True)
class ToolCallText:
    """One tool call as the text the LLM emitted: its name and its arguments."""

    name: str | None
    arguments: str
    id: str | None = None
    invalid: bool = False  # the arguments did not parse (an invalid tool call)

    def render(self) -> str:
        """``name(arguments)``: how a tool call is judged and shown as context."""
        return f"{self.name}({self.arguments})" if self.name else self.arguments

    def _key(self) -> tuple[str | None, str | None, str]:
        return (self.id, self.name, _canonical_json(self.arguments))


@dataclass(frozen=True)
class MessageContent:
    """Every text of one message, by kind. ``role`` is ``system``, ``user``, ``assistant`` or
    ``tool``."""

    role: str
    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallText, ...] = field(default=())

    @property
    def said(self) -> str:
        """Text and reasoning: what is judged on the message's own surface."""
        return _join([self.reasoning, self.text])

    @property
    def full_text(self) -> str:
        """Everything, tool calls written out: the message as context for another turn."""
        return _join([self.said, *(c.render() for c in self.tool_calls)])

    @property
    def own_surface(self) -> Surface:
        if self.role == "assistant":
            return Surface.OUTPUT
        if self.role == "tool":
            return Surface.TOOL_RESULT
        return Surface.INPUT

    def surface_texts(self) -> list[tuple[Surface, str]]:
        """``(surface, text)`` for each text to judge: what the message says on its own
        surface, each tool call on ``tool_call``. Empty texts are left out."""
        out: list[tuple[Surface, str]] = []
        if self.said.strip():
            out.append((self.own_surface, self.said))
        out.extend((Surface.TOOL_CALL, c.render()) for c in self.tool_calls)
        return out


# -- reading ------------------------------------------------------------------------------------


def canonical_role(role: Any, where: str = "message") -> str:
    """``system``, ``user``, ``assistant`` or ``tool`` for any usual spelling of a role."""
    if isinstance(role, str) and role.lower() in _ROLES:
        return _ROLES[role.lower()]
    raise InvalidInputError(
        f"{where} has unknown role {role!r}; expected one of system, user, assistant, tool"
    )


def read_message(
    message: Mapping[str, Any], *, where: str = "message", non_text: NonText = "error"
) -> MessageContent:
    """Every text of a message given as a mapping (see the module docstring). The role is
    ``message["role"]`` (or LangChain's ``message["type"]``)."""
    if not isinstance(message, Mapping):
        raise InvalidInputError(f"{where} must be a mapping, not {type(message).__name__}")
    role = canonical_role(message.get("role", message.get("type")), where)
    reader = _Reader(where, non_text)
    reader.content(message.get("content"), f"{where}.content")
    reader.fields(message, where)
    extra = message.get("additional_kwargs")
    if isinstance(extra, Mapping):
        reader.fields(extra, f"{where}.additional_kwargs")
    return reader.result(role)


def read_content(
    content: Any, *, role: str = "user", where: str = "content", non_text: NonText = "error"
) -> MessageContent:
    """Every text of a message's ``content`` alone (a string or a list of blocks)."""
    reader = _Reader(where, non_text)
    reader.content(content, where)
    return reader.result(canonical_role(role, where))


def content_text(content: Any, *, where: str = "content", non_text: NonText = "error") -> str:
    """All the text of a message's content (text, reasoning, tool calls written out)."""
    return read_content(content, where=where, non_text=non_text).full_text


class _Reader:
    def __init__(self, where: str, non_text: NonText) -> None:
        self.where = where
        self.non_text = non_text
        self.texts: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCallText] = []
        self._seen: set[tuple[str | None, str | None, str]] = set()

    def result(self, role: str) -> MessageContent:
        return MessageContent(
            role=role,
            text=_join(self.texts),
            reasoning=_join(self.reasoning),
            tool_calls=tuple(self.calls),
        )

    def _text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InvalidInputError(f"{where} must be a string, not {type(value).__name__}")
        return checked_text(value, where)

    def _call(self, name: Any, args: Any, call_id: Any, where: str, invalid: bool = False) -> None:
        arguments = checked_text(as_text(args), where) if args is not None else ""
        if name is not None and not isinstance(name, str):
            name = as_text(name)
        if name is not None:
            name = checked_text(name, where)
        call = ToolCallText(
            name=name or None,
            arguments=arguments,
            id=call_id if isinstance(call_id, str) else None,
            invalid=invalid,
        )
        if not call.render().strip():
            return
        key = call._key()
        if key in self._seen:  # the same call in two fields (e.g. tool_calls and a block)
            return
        self._seen.add(key)
        self.calls.append(call)

    # -- content -------------------------------------------------------------------------------

    def content(self, content: Any, where: str) -> None:
        if content is None:
            return
        if isinstance(content, str):
            self.texts.append(checked_text(content, where))
            return
        if isinstance(content, Mapping):  # a single block
            self.block(content, where)
            return
        if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
            for i, part in enumerate(content):
                if isinstance(part, str):
                    self.texts.append(checked_text(part, f"{where}[{i}]"))
                elif isinstance(part, Mapping):
                    self.block(part, f"{where}[{i}]")
                else:
                    raise InvalidInputError(
                        f"{where}[{i}]: cannot judge a content part of type "
                        f"{type(part).__name__}; expected a string or a typed block"
                    )
            return
        raise InvalidInputError(
            f"{where} must be a string or a list of content blocks, not {type(content).__name__}"
        )

    def block(self, block: Mapping[str, Any], where: str) -> None:
        kind = block.get("type")
        if not isinstance(kind, str):
            raise InvalidInputError(
                f"{where}: cannot judge a content block without a 'type' "
                f"(keys: {sorted(map(str, block))})"
            )
        where = f"{where} ({kind})"
        if kind in TEXT_BLOCKS:
            value = block.get("refusal") if kind == "refusal" else block.get("text")
            if kind == "text-plain" and value is None:
                self._non_text(kind, where)  # a plain-text file given by URL or as base64
                return
            self.texts.append(self._text(value, where))
        elif kind in REASONING_BLOCKS:
            self.reasoning.extend(_reasoning_texts(block, where))
        elif kind in TOOL_CALL_BLOCKS:
            args = block.get("args", block.get("input", block.get("arguments")))
            self._call(block.get("name"), args, block.get("id", block.get("call_id")), where)
        elif kind in INVALID_TOOL_CALL_BLOCKS:
            self._call(block.get("name"), block.get("args"), block.get("id"), where, True)
        elif kind in RESULT_BLOCKS:
            output = block.get("content", block.get("output"))
            if isinstance(output, (list, Mapping)) and kind == "tool_result":
                self.content(output, where)
            elif output is not None:
                self.texts.append(checked_text(as_text(output), where))
        elif kind in NON_TEXT_BLOCKS:
            self._non_text(kind, where)
        else:
            raise InvalidInputError(
                f"{where}: cannot judge a content block of type {kind!r}: it is not a shape "
                f"qwen3guard knows (known: {', '.join(sorted(KNOWN_BLOCKS))}); convert it to "
                "text before it is judged"
            )

    def _non_text(self, kind: str, where: str) -> None:
        if self.non_text == "skip":
            return
        raise InvalidInputError(
            f"{where}: a {kind!r} block cannot be judged by a text guard; remove it, or pass "
            "non_text='skip' to accept that it is not judged"
        )

    # -- fields ------------------------------------------------------------------------------

    def fields(self, message: Mapping[str, Any], where: str) -> None:
        for key in _FIELDS:
            value = message.get(key)
            if value is None or value == "" or value == []:
                continue
            at = f"{where}.{key}"
            if key in ("tool_calls", "invalid_tool_calls", "tool_call_chunks"):
                if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
                    raise InvalidInputError(f"{at} must be a list, not {type(value).__name__}")
                for i, call in enumerate(value):
                    self._field_call(call, f"{at}[{i}]", invalid=key == "invalid_tool_calls")
            elif key == "function_call":
                self._field_call(value, at, invalid=False)
            elif key in ("reasoning_content", "reasoning", "thinking"):
                if isinstance(value, str):
                    self.reasoning.append(checked_text(value, at))
                elif isinstance(value, Mapping):
                    self.reasoning.extend(_reasoning_texts(value, at))
                else:
                    raise InvalidInputError(
                        f"{at} must be a string or a mapping, not {type(value).__name__}"
                    )
            elif key == "refusal":
                self.texts.append(self._text(value, at))
            elif key == "parsed":
                text = checked_text(as_text(value), at)
                if _canonical_json(text) not in {_canonical_json(t) for t in self.texts}:
                    self.texts.append(text)

    def _field_call(self, call: Any, where: str, *, invalid: bool) -> None:
        if not isinstance(call, Mapping):
            raise InvalidInputError(f"{where} must be a mapping, not {type(call).__name__}")
        fn = call.get("function")
        if isinstance(fn, Mapping):  # OpenAI: {"id", "type": "function", "function": {...}}
            self._call(fn.get("name"), fn.get("arguments"), call.get("id"), where, invalid)
        else:
            args = call.get("args", call.get("arguments", call.get("input")))
            self._call(call.get("name"), args, call.get("id"), where, invalid)


def _reasoning_texts(block: Mapping[str, Any], where: str) -> list[str]:
    """The texts of a reasoning block in any of its shapes: LangChain ``reasoning``,
    Anthropic ``thinking``, OpenAI Responses ``summary`` / ``content`` lists, Bedrock
    ``reasoning_content: {"text"}``."""
    out: list[str] = []
    for key in ("reasoning", "thinking", "text"):
        value = block.get(key)
        if isinstance(value, str):
            out.append(checked_text(value, f"{where}.{key}"))
        elif isinstance(value, Mapping):
            out.extend(_reasoning_texts(value, f"{where}.{key}"))
    inner = block.get("reasoning_content")
    if isinstance(inner, Mapping):
        out.extend(_reasoning_texts(inner, f"{where}.reasoning_content"))
    elif isinstance(inner, str):
        out.append(checked_text(inner, f"{where}.reasoning_content"))
    for key in ("summary", "content"):
        parts = block.get(key)
        if isinstance(parts, str):
            out.append(checked_text(parts, f"{where}.{key}"))
        elif isinstance(parts, Sequence) and not isinstance(parts, (bytes, bytearray)):
            for i, p in enumerate(parts):
                if isinstance(p, str):
                    out.append(checked_text(p, f"{where}.{key}[{i}]"))
                elif isinstance(p, Mapping) and isinstance(p.get("text"), str):
                    out.append(checked_text(p["text"], f"{where}.{key}[{i}]"))
                else:
                    raise InvalidInputError(
                        f"{where}.{key}[{i}]: cannot judge a reasoning part of this shape"
                    )
    return out


# -- how tool traffic is judged --------------------------------------------------------------------


def tool_call_conversation(name: str | None, args: Any) -> list[dict[str, str]]:
    """How a tool call is judged (surface ``tool_call``): its arguments, as a request made to
    the tool. Empty when there is nothing to judge."""
    text = as_text(args) if args is not None else ""
    call = ToolCallText(name=name or None, arguments=text)
    if not text.strip():
        return []
    return [{"role": "user", "content": call.render()}]


def tool_result_conversation(output: Any) -> list[dict[str, str]]:
    """How a tool result is judged (surface ``tool_result``): as input the model will read
    (a request, so that injected instructions are judged as what they are)."""
    text = as_text(output) if output is not None else ""
    return [{"role": "user", "content": text}] if text.strip() else []


def answer_conversation(context: Sequence[Mapping[str, Any]], text: str) -> list[dict[str, str]]:
    """An answer to judge after its context (a :data:`NO_PROMPT` user turn when there is
    none). Empty when the answer is."""
    if not text.strip():
        return []
    before = [dict(m) for m in context] or [{"role": "user", "content": NO_PROMPT}]
    return [*before, {"role": "assistant", "content": text}]


def items_to_judge(
    content: MessageContent, context: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[list[dict[str, str]], Surface]]:
    """``(conversation, surface)`` for every text of ``content`` (for ``screen_batch``): an
    answer after ``context``, a request (or a tool result) on its own after ``context``, and
    each tool call on ``tool_call``."""
    out: list[tuple[list[dict[str, str]], Surface]] = []
    said = content.said
    if said.strip():
        if content.role == "assistant":
            out.append((answer_conversation(context, said), Surface.OUTPUT))
        else:
            role = "user"  # a system or tool turn is read by the model: judged as a request
            out.append(([*map(dict, context), {"role": role, "content": said}],
                        content.own_surface))
    for call in content.tool_calls:
        out.append((tool_call_conversation(call.name, call.arguments), Surface.TOOL_CALL))
    return out


# -- text helpers ----------------------------------------------------------------------------------


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


def as_text(value: Any) -> str:
    """Text of an arbitrary value: strings as they are, the rest as JSON (objects with
    ``model_dump`` / ``dict`` through it; anything else through ``str``)."""
    if isinstance(value, str):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            value = dump(mode="json")
        except Exception:  # noqa: BLE001 - fall back to str below
            return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _canonical_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return text.strip()


def _join(parts: Iterable[str]) -> str:
    return "\n".join(p for p in parts if p and p.strip())
