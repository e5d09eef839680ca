"""Roll back and regenerate a flagged answer of a LlamaIndex query engine (issue 13).

The loop is the core's (:func:`qwen3guard.stream.intervene.intervene` / ``aintervene``): text
is released once settled and ``buffer_tokens`` behind the moderation head; on a flag the
unreleased text is dropped from the start of the flagged sentence, the LLM's stream is closed,
and the LLM is asked to continue the kept prefix, at most ``max_retries`` times, then the
answer ends with the refusal message. This module is the LlamaIndex side of it, with the
LangChain integration's option names and meanings:

- **What the LLM was asked.** While the wrapped engine runs, :func:`capture_llm_call` records
  (through LlamaIndex's instrumentation dispatcher, for the current context only) the LLM
  instance of its last ``predict``/``stream`` span and the request of its last LLM call: the
  chat messages (``LLMChatStartEvent``) or the formatted completion prompt
  (``LLMCompletionStartEvent``; one nested in a chat call of a completion LLM is not a call of
  its own). A continuation is the same request, continued.
- **How the LLM continues** (``continuation``): ``"prefill"`` sends the messages plus an
  assistant message holding the kept prefix (a completion LLM: the prompt followed by the kept
  prefix), so the model continues the same assistant message; ``"instruction"`` sends the
  messages plus a user message with the corrective instruction, which holds the kept prefix (a
  completion LLM: the prompt followed by the instruction), and splices the new answer after
  it. ``"auto"`` uses prefill for a completion LLM (it continues the text it is given) and for
  chat models known to take an assistant prefill (:data:`PREFILL_MODELS`), else the
  instruction. Either way the white space the kept prefix ends with is not doubled by the
  continuation's leading white space.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent
from llama_index.core.instrumentation.span import BaseSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

from qwen3guard import Decision
from qwen3guard.stream.intervene import Intervention

Continuation = Literal["auto", "prefill", "instruction"]
Mode = Literal["prefill", "instruction"]

#: LlamaIndex chat LLM classes whose providers continue a final assistant message (prefill).
PREFILL_MODELS = frozenset({"Anthropic"})


def check_continuation(value: str) -> Continuation:
    if value not in ("auto", "prefill", "instruction"):
        raise ValueError(f"continuation must be 'auto', 'prefill' or 'instruction', not {value!r}")
    return value  # type: ignore[return-value]


def resolve_continuation(llm: Any, continuation: str, *, chat: bool) -> Mode:
    """How ``llm`` is asked to continue a kept prefix (``chat``: its request was chat
    messages; see the module docstring)."""
    if check_continuation(continuation) != "auto":
        return continuation  # type: ignore[return-value]
    if not chat or type(llm).__name__ in PREFILL_MODELS:
        return "prefill"
    return "instruction"


# -- what the wrapped engine asked its LLM ------------------------------------------------------


@dataclass
class LLMCall:
    """The wrapped engine's last LLM call: the instance and its request."""

    llm: BaseLLM | None = None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    _last_chat: bool = field(default=False, repr=False)


_current: ContextVar[LLMCall | None] = ContextVar("qwen3guard_llm_call", default=None)
_installed = False
_lock = threading.Lock()


class _SpanCapture(BaseSpanHandler[BaseSpan]):
    """Records the LLM instance of an LLM span entered in a capturing context."""

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3GuardLLMCapture"

    def new_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        call = _current.get()
        if call is not None and isinstance(instance, BaseLLM):
            call.llm = instance
        return None

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return None

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return None


class _EventCapture(BaseEventHandler):
    """Records the request of an LLM call started in a capturing context."""

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3GuardLLMRequestCapture"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        call = _current.get()
        if call is None:
            return
        if isinstance(event, LLMChatStartEvent):
            call.messages, call.prompt, call._last_chat = list(event.messages), None, True
        elif isinstance(event, LLMCompletionStartEvent):
            if not call._last_chat:  # not the completion a chat call of a completion LLM makes
                call.messages, call.prompt = None, event.prompt
            call._last_chat = False


def _install() -> None:
    global _installed
    with _lock:
        if not _installed:
            root = get_dispatcher()
            root.add_span_handler(_SpanCapture())
            root.add_event_handler(_EventCapture())
            _installed = True


@contextmanager
def capture_llm_call(call: LLMCall | None = None) -> Iterator[LLMCall]:
    """Record the LLM call(s) made in this block into ``call`` (a new one by default); this
    context only: concurrent queries in other threads or tasks are not mixed in."""
    _install()
    call = call if call is not None else LLMCall()
    token = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(token)


def captured(upstream: Iterable[Any], call: LLMCall) -> Iterator[Any]:
    """``upstream`` read with its LLM call recorded into ``call``: a streaming synthesizer
    calls its LLM lazily, when its stream is first read."""
    it = iter(upstream)
    try:
        while True:
            with capture_llm_call(call):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            close()


async def acaptured(upstream: AsyncIterable[Any], call: LLMCall) -> AsyncIterator[Any]:
    """The async form of :func:`captured`."""
    it = aiter(upstream)
    try:
        while True:
            with capture_llm_call(call):
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    return
            yield item
    finally:
        aclose = getattr(it, "aclose", None)
        if callable(aclose):
            await aclose()


# -- the continuation ---------------------------------------------------------------------------


@dataclass
class Request:
    """One continuation request: chat ``messages`` or a completion ``prompt``."""

    messages: list[ChatMessage] | None
    prompt: str | None
    strip: bool  # drop the continuation's leading white space at the splice


def continuation_request(
    call: LLMCall, query: str, kept: str, instruction: str, mode: Mode
) -> Request:
    """The request for a continuation of ``kept`` (see the module docstring)."""
    body = kept.rstrip()
    strip = body != kept or not kept
    prefill = mode == "prefill" and bool(body.strip())
    if call.prompt is not None and call.messages is None:
        if prefill:
            return Request(None, call.prompt + body, strip)
        return Request(None, f"{call.prompt}\n\n{instruction}\n", strip)
    messages = (
        list(call.messages)
        if call.messages is not None
        else [ChatMessage(role=MessageRole.USER, content=query)]
    )
    if prefill:
        last = messages[-1] if messages else None
        if (
            last is not None
            and last.role == MessageRole.ASSISTANT
            and isinstance(last.content, str)
            and last.content
        ):
            # the caller's own prefill: the kept prefix continues it
            return Request(
                [
                    *messages[:-1],
                    ChatMessage(role=MessageRole.ASSISTANT, content=last.content + body),
                ],
                None,
                strip,
            )
        return Request(
            [*messages, ChatMessage(role=MessageRole.ASSISTANT, content=body)], None, strip
        )
    return Request(
        [*messages, ChatMessage(role=MessageRole.USER, content=instruction)], None, strip
    )


class _Deltas:
    """The text each streamed response adds (``delta``, or the growth of the whole text), with
    the leading white space dropped where the splice asks for it."""

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.seen = ""

    def __call__(self, response: Any) -> str:
        delta = getattr(response, "delta", None)
        if delta is None:
            whole = getattr(response, "text", None)
            if whole is None:
                message = getattr(response, "message", None)
                whole = getattr(message, "content", None) or ""
            delta = whole[len(self.seen) :] if whole.startswith(self.seen) else ""
        self.seen += delta
        if self.strip and delta:
            stripped = delta.lstrip()
            if stripped:
                self.strip = False
            delta = stripped
        return delta


def stream_continuation(llm: BaseLLM, request: Request) -> Iterator[str]:
    """The continuation's text chunks; closing this generator closes the LLM's stream."""
    gen: Any = (
        llm.stream_chat(request.messages)
        if request.messages is not None
        else llm.stream_complete(request.prompt or "", formatted=True)
    )
    deltas = _Deltas(request.strip)
    try:
        for response in gen:
            text = deltas(response)
            if text:
                yield text
    finally:
        close = getattr(gen, "close", None)
        if callable(close):
            close()


async def astream_continuation(llm: BaseLLM, request: Request) -> AsyncIterator[str]:
    """The async form of :func:`stream_continuation`."""
    gen: Any = (
        await llm.astream_chat(request.messages)
        if request.messages is not None
        else await llm.astream_complete(request.prompt or "", formatted=True)
    )
    deltas = _Deltas(request.strip)
    try:
        async for response in gen:
            text = deltas(response)
            if text:
                yield text
    finally:
        aclose = getattr(gen, "aclose", None)
        if callable(aclose):
            await aclose()


def summary(record: Intervention) -> dict[str, Any]:
    """What the metadata says about an intervention (never the flagged text)."""
    return {
        "retries": record.retries,
        "refused": record.refused,
        "decisions": [
            a.decision.to_dict() for a in record.attempts if a.flagged and a.decision is not None
        ],
    }


def last_flag(record: Intervention) -> Decision | None:
    flagged = [a.decision for a in record.attempts if a.flagged and a.decision is not None]
    return flagged[-1] if flagged else None
