"""Guard decisions in LlamaIndex's instrumentation: one :class:`Qwen3GuardCheckEvent` per check,
inside a span around the check, so span and event handlers (Arize Phoenix / OpenInference,
Langfuse, a custom handler on the root dispatcher) record them.

- The core reports every check once (:mod:`qwen3guard.tracing`: each item of ``screen`` /
  ``screen_batch`` and their async forms, and each gated stream at its end or flag). Importing
  this package registers one observer that turns each report into a
  :class:`Qwen3GuardCheckEvent` and fires it through this package's dispatcher
  (``get_dispatcher("llama_index.postprocessor.qwen3guard")``, a child of the root one).
- The integration's components make their checks inside a span named after the component
  and the kind of check, e.g. ``Qwen3GuardQueryEngine.screen-<uuid>`` or
  ``Qwen3GuardQueryEngine.stream-<uuid>`` (LlamaIndex's ``Class.method-uuid`` form, whose part
  before ``-`` OpenInference uses as the span name). An event takes the span that is active
  when it is made (``BaseEvent.span_id``), so each check's event lands in its span. The span's
  bound arguments are empty and its result is the list of the checks' decisions
  (:meth:`qwen3guard.tracing.CheckEvent.to_dict`), so a span handler that records inputs and
  results (OpenInference writes them to ``input.value`` / ``output.value``) sees the decision
  and no judged text.
- The judged text (``content``) is None unless content tracing is on
  (:func:`qwen3guard.tracing.set_trace_content` or ``QWEN3GUARD_TRACE_CONTENT=1``).

Read from llama-index-core 0.14.25 / llama-index-instrumentation 0.6.0 as installed:
``llama_index_instrumentation/dispatcher.py`` (``Dispatcher.event`` / ``span_enter`` /
``span_exit`` / ``span_drop``, the ``span`` decorator's id and ``active_span_id`` handling),
``llama_index_instrumentation/base/event.py`` (``BaseEvent.span_id`` defaults to
``active_span_id.get()``), ``llama_index_instrumentation/__init__.py`` (``get_dispatcher``:
the parent is the dispatcher named by the name's prefix, else the root).
"""

from __future__ import annotations

import contextvars
import inspect
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import active_instrument_tags
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.span import SpanDropEvent
from llama_index.core.instrumentation.span import active_span_id

from qwen3guard import tracing
from qwen3guard.tracing import CheckEvent

T = TypeVar("T")
Kind = Literal["screen", "stream"]

#: The name of this package's dispatcher (the parent of its modules' dispatchers).
DISPATCHER_NAME = __name__.rpartition(".")[0]

dispatcher = get_dispatcher(DISPATCHER_NAME)


class Qwen3GuardCheckEvent(BaseEvent):
    """One guard check's decision (the fields of :meth:`qwen3guard.tracing.CheckEvent.to_dict`).

    ``kind``: ``"screen"`` (one screened item) or ``"stream"`` (a gated stream's final allow or
    the flag that stopped it). ``content``: the judged text, None unless content tracing is on.
    """

    surface: str
    allowed: bool
    risk: str | None = None
    categories: list[str] = Field(default_factory=list)
    reason: str | None = None
    refusal: bool | None = None
    error: dict[str, str] | None = None
    latency_s: float = 0.0
    model: str | None = None
    kind: Kind = "screen"
    content: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3GuardCheckEvent"

    @classmethod
    def from_check(cls, event: CheckEvent) -> Qwen3GuardCheckEvent:
        """The instrumentation event for a core check event (made now: it takes the span
        active now)."""
        return cls(**event.to_dict())


# -- the spans ----------------------------------------------------------------------------------

_NO_ARGUMENTS = inspect.signature(lambda: None).bind()
_current: contextvars.ContextVar[CheckSpan | None] = contextvars.ContextVar(
    "qwen3guard_llama_index_check_span", default=None
)


class CheckSpan:
    """One instrumentation span around guard checks.

    ``owner`` names it: a component (its class name) or a string. The span is entered with
    :meth:`enter` and ended with :meth:`exit`; it is the active span only inside
    :meth:`active`, so a stream's span can stay open while its reader runs between chunks.
    ``detached``: enter and exit run in a copy of the context this span was made in, so a span
    handler that makes its span current (OpenInference attaches an OpenTelemetry context) does
    not leak it into the reader's code between chunks, and parents it where the stream was made.
    """

    def __init__(self, owner: object, kind: Kind, *, detached: bool = False) -> None:
        name = owner if isinstance(owner, str) else type(owner).__name__
        self.id_ = f"{name}.{kind}-{uuid.uuid4()}"
        self.parent_id = active_span_id.get()
        self.tags = dict(active_instrument_tags.get())
        self.checks: list[dict[str, Any]] = []
        self._context = contextvars.copy_context() if detached else None
        self.entered = False
        self.closed = False

    def _call(self, fn: Callable[..., None], **kwargs: Any) -> None:
        if self._context is not None:
            self._context.run(fn, **kwargs)
        else:
            fn(**kwargs)

    def enter(self) -> None:
        if self.entered:
            return
        self.entered = True
        self._call(
            dispatcher.span_enter,
            id_=self.id_,
            bound_args=_NO_ARGUMENTS,
            instance=None,
            parent_id=self.parent_id,
            tags=self.tags,
        )

    def exit(self, err: BaseException | None = None) -> None:
        """End the span: dropped with ``err`` when a check's call raised, else exited with the
        checks' decisions as its result."""
        if not self.entered or self.closed:
            return
        self.closed = True
        if err is None:
            self._call(
                dispatcher.span_exit,
                id_=self.id_,
                bound_args=_NO_ARGUMENTS,
                instance=None,
                result=list(self.checks),
            )
        else:
            # as LlamaIndex's span decorator does: a SpanDropEvent, then the drop
            self._call(dispatcher.event, event=SpanDropEvent(span_id=self.id_, err_str=str(err)))
            self._call(
                dispatcher.span_drop,
                id_=self.id_,
                bound_args=_NO_ARGUMENTS,
                instance=None,
                err=err,
            )

    @contextmanager
    def active(self) -> Iterator[CheckSpan]:
        """This span is the active one (events made inside take its id)."""
        token = active_span_id.set(self.id_)
        current = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(current)
            active_span_id.reset(token)


@contextmanager
def check_span(owner: object, kind: Kind = "screen") -> Iterator[CheckSpan]:
    """A span around the checks made inside the ``with`` block (sync or async code)."""
    span = CheckSpan(owner, kind)
    span.enter()
    try:
        with span.active():
            yield span
    except BaseException as exc:
        span.exit(exc)
        raise
    span.exit()


def traced_stream(owner: object, stream: Iterator[T]) -> Generator[T, None, None]:
    """``stream`` (a generator whose reading makes checks) inside one span: entered at the
    first read, active while each chunk is produced, ended when the stream ends, fails or is
    closed (closing ``stream`` too)."""
    span = CheckSpan(owner, "stream", detached=True)

    def run() -> Generator[T, None, None]:
        span.enter()
        err: BaseException | None = None
        try:
            while True:
                with span.active():
                    try:
                        item = next(stream)
                    except StopIteration:
                        return
                yield item
        except GeneratorExit:
            raise
        except BaseException as exc:
            err = exc
            raise
        finally:
            try:
                close = getattr(stream, "close", None)
                if callable(close):
                    with span.active():
                        close()
            finally:
                span.exit(err)

    return run()


def atraced_stream(owner: object, stream: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """The async form of :func:`traced_stream`."""
    span = CheckSpan(owner, "stream", detached=True)

    async def run() -> AsyncGenerator[T, None]:
        span.enter()
        err: BaseException | None = None
        try:
            while True:
                with span.active():
                    try:
                        item = await stream.__anext__()
                    except StopAsyncIteration:
                        return
                yield item
        except GeneratorExit:
            raise
        except BaseException as exc:
            err = exc
            raise
        finally:
            try:
                aclose = getattr(stream, "aclose", None)
                if callable(aclose):
                    with span.active():
                        await aclose()
            finally:
                span.exit(err)

    return run()


# -- the observer -------------------------------------------------------------------------------


def fire(event: CheckEvent) -> Qwen3GuardCheckEvent:
    """Fire the instrumentation event for ``event`` through this package's dispatcher (in the
    active span) and record its decision on that span."""
    out = Qwen3GuardCheckEvent.from_check(event)
    span = _current.get()
    if span is not None and span.id_ == out.span_id:
        span.checks.append(event.to_dict())
    dispatcher.event(out)
    return out


class InstrumentationObserver:
    """The core observer (:class:`qwen3guard.tracing.CheckObserver`) that fires a
    :class:`Qwen3GuardCheckEvent` for every check. LlamaIndex fires its own events with the
    sync ``Dispatcher.event`` from async code too (``BaseQueryEngine.aquery``), so both paths
    do the same."""

    def on_check(self, event: CheckEvent) -> None:
        fire(event)

    async def aon_check(self, event: CheckEvent) -> None:
        fire(event)


#: The observer registered when this package is imported.
OBSERVER = InstrumentationObserver()
tracing.add_observer(OBSERVER)


__all__ = [
    "DISPATCHER_NAME",
    "OBSERVER",
    "CheckSpan",
    "InstrumentationObserver",
    "Qwen3GuardCheckEvent",
    "atraced_stream",
    "check_span",
    "dispatcher",
    "fire",
    "traced_stream",
]
