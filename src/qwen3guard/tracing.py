"""Guard decisions in traces: one event per check, to observers and (when installed) OpenTelemetry.

Every check reports exactly one :class:`CheckEvent`: each item of ``Qwen3Guard.screen`` /
``ascreen`` / ``screen_batch`` / ``ascreen_batch`` (``enforce`` goes through ``screen``), and
each run of a :class:`~qwen3guard.StreamGate` when it ends (its final allow, or the flag that
stopped it), not each token. Sync paths call each observer's ``on_check``; async paths await its
``aon_check``. The integrations register observers that forward events to their frameworks
(LangChain custom events, LlamaIndex instrumentation events)::

    class Printer:
        def on_check(self, event): print(event.to_dict())
        async def aon_check(self, event): print(event.to_dict())

    qwen3guard.tracing.add_observer(Printer())

An observer that raises never changes a decision or breaks a check: the error is logged (at
warning, once per observer class).

A check that raises reports no event, except content that cannot be judged as given:
``screen`` / ``ascreen`` / ``enforce`` / ``aenforce`` and ``StreamGate.open`` / ``aopen``
raising :class:`~qwen3guard.InvalidInputError` report it as one blocked check (the decision
``screen_batch`` gives such an item) before raising. Any other exception (a bug, a
cancellation) reports no event; its span still ends, with error status.

The judged text is not in events or spans unless content tracing is on
(:func:`set_trace_content`, or ``QWEN3GUARD_TRACE_CONTENT=1``): guard inputs can be sensitive.
Nor, with it off, is any error's message (an error about bad input quotes the input; a
server's error may quote the request): a decision's ``reason`` in :meth:`CheckEvent.to_dict`
and in spans names the error's type instead (``"cannot be judged: InvalidInputError"``), and
``error`` carries the type only. The :class:`~qwen3guard.Decision` itself (``event.decision``,
the object the caller got) is unchanged.

With OpenTelemetry installed (``pip install qwen3guard[otel]``) each check is also one span of
the tracer ``qwen3guard``, following the GenAI semantic conventions where they apply
(``gen_ai.operation.name`` = ``"guard"``, ``gen_ai.provider.name`` = the backend's kind,
``gen_ai.request.model``, ``error.type``, and a ``gen_ai.evaluation.result`` span event whose
``gen_ai.evaluation.score.label`` is ``"allowed"`` or ``"blocked"``), plus ``qwen3guard.*``
attributes for the decision (surface, allowed, risk, categories, reason, kind; content only
when content tracing is on). A check that could not judge has error status. A batch is one
span per item, children of one ``... batch`` span. Without OpenTelemetry nothing is imported
and nothing is recorded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .errors import InvalidInputError
from .policy import Decision, Surface

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger("qwen3guard.tracing")

__all__ = [
    "CheckEvent",
    "CheckObserver",
    "add_observer",
    "aemit",
    "emit",
    "model_name",
    "remove_observer",
    "set_trace_content",
    "trace_content",
]

Kind = Literal["screen", "stream"]

#: ``gen_ai.operation.name`` of a check. The GenAI conventions' predefined values (chat,
#: text_completion, generate_content, embeddings, retrieval, execute_tool, create_agent,
#: invoke_agent, invoke_workflow) name no moderation call; the attribute is an open enum.
OPERATION_NAME = "guard"


@dataclass(frozen=True)
class CheckEvent:
    """One check's outcome: the decision, how long it took, and which model judged.

    ``kind``: ``"screen"`` for a Gen screen (one item of ``screen`` / ``screen_batch``),
    ``"stream"`` for the outcome of a gated stream (its final allow, or the flag that stopped
    it). ``content``: the judged text (the last turn of a screened conversation; the answer a
    gate was fed), None unless content tracing is on. ``with_content``: whether content
    tracing was on for the check; when it was off, :meth:`to_dict` leaves every error message
    out (see :func:`traced_reason`).
    """

    surface: Surface
    decision: Decision
    latency_s: float
    model: str | None
    kind: Kind
    content: str | None = None
    with_content: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: surface, allowed, risk, categories, reason, refusal, error (type, and its
        message only with content tracing; or None), latency_s, model, kind, and content when
        it is not None."""
        d = self.decision
        v = d.verdict
        error: dict[str, str] | None = None
        if d.error is not None:
            error = {"type": type(d.error).__name__}
            if self.with_content:
                error["message"] = str(d.error)
        out: dict[str, Any] = {
            "surface": Surface(self.surface).value,
            "allowed": d.allowed,
            "risk": v.risk.value if v is not None else None,
            "categories": [c.value for c in v.categories] if v is not None else [],
            "reason": traced_reason(d, self.with_content),
            "refusal": v.refusal if v is not None else None,
            "error": error,
            "latency_s": float(self.latency_s),
            "model": self.model,
            "kind": self.kind,
        }
        if self.content is not None:
            out["content"] = self.content
        return out


@runtime_checkable
class CheckObserver(Protocol):
    """Receives every check's event: ``on_check`` from sync paths, ``aon_check`` from async
    ones."""

    def on_check(self, event: CheckEvent) -> None: ...

    async def aon_check(self, event: CheckEvent) -> None: ...


# -- observers ---------------------------------------------------------------------------------

_lock = threading.Lock()
_observers: tuple[CheckObserver, ...] = ()
_warned: set[type] = set()


def add_observer(observer: CheckObserver) -> None:
    """Register ``observer`` for every check's event (adding one twice has no effect)."""
    global _observers
    with _lock:
        if not any(o is observer for o in _observers):
            _observers = (*_observers, observer)


def remove_observer(observer: CheckObserver) -> None:
    """Unregister ``observer`` (no effect if it is not registered)."""
    global _observers
    with _lock:
        _observers = tuple(o for o in _observers if o is not observer)


def observers() -> tuple[CheckObserver, ...]:
    """The registered observers, in order."""
    return _observers


def _observer_failed(observer: object, exc: BaseException) -> None:
    cls = type(observer)
    if cls in _warned:
        log.debug("qwen3guard trace observer %s failed: %r", cls.__qualname__, exc)
        return
    _warned.add(cls)
    log.warning("qwen3guard trace observer %s failed (the decision stands; further failures "
                "of this observer class are logged at debug): %r", cls.__qualname__, exc)


def emit(event: CheckEvent) -> None:
    """Hand ``event`` to each observer's ``on_check`` (sync paths). Never raises."""
    for observer in _observers:
        try:
            observer.on_check(event)
        except Exception as exc:  # noqa: BLE001 - an observer never breaks a check
            _observer_failed(observer, exc)


async def aemit(event: CheckEvent) -> None:
    """Await each observer's ``aon_check`` (async paths); an observer without one gets
    ``on_check``. Never raises (except cancellation)."""
    for observer in _observers:
        try:
            aon = getattr(observer, "aon_check", None)
            if aon is not None:
                await aon(event)
            else:
                observer.on_check(event)
        except Exception as exc:  # noqa: BLE001
            _observer_failed(observer, exc)


# -- content -------------------------------------------------------------------------------------

_trace_content: bool | None = None


def trace_content() -> bool:
    """Whether events and spans carry the judged text. Default off (guard inputs can be
    sensitive); ``QWEN3GUARD_TRACE_CONTENT=1`` or :func:`set_trace_content` turns it on."""
    if _trace_content is not None:
        return _trace_content
    return os.environ.get("QWEN3GUARD_TRACE_CONTENT", "").strip().lower() in (
        "1", "true", "yes", "on")


def set_trace_content(on: bool) -> None:
    """Turn content tracing on or off for this process (overrides the environment)."""
    global _trace_content
    _trace_content = bool(on)


def judged_text(conv: Any) -> str | None:
    """The text a screen judges in ``conv``: its last turn (earlier turns are context)."""
    if conv is None:
        return None
    if isinstance(conv, str):
        return conv
    try:
        from .messages import normalize_messages

        messages = normalize_messages(conv)
        return messages[-1]["content"] if messages else None
    except Exception:  # noqa: BLE001 - content that cannot be read has no text to trace
        return None


_NOT_JUDGED = "could not judge: "


def traced_reason(decision: Decision, with_content: bool) -> str:
    """``decision.reason`` as traces carry it: whole with content tracing on; otherwise with
    the error's message (which may quote the input) replaced by the error's type name."""
    reason = decision.reason
    if with_content:
        return reason
    exc = decision.error
    if exc is not None:
        name = type(exc).__name__
        message = str(exc)
        if message and reason.endswith(message):  # "<why>: <message>"
            return reason[: len(reason) - len(message)] + name
        if isinstance(exc, InvalidInputError):
            return f"cannot be judged: {name}"
        return f"guard could not judge: {name}"
    # A stream session's own failure, reported in its update ("guard could not judge: <error>").
    at = reason.find(_NOT_JUDGED)
    if at >= 0:
        return reason[: at + len(_NOT_JUDGED) - 2]
    return reason


def invalid_input(exc: InvalidInputError, surface: Surface | str) -> Decision:
    """The decision for content that cannot be judged as given (as ``screen_batch`` gives a
    bad item), for a check that raises ``exc``."""
    try:
        surface = Surface(surface)
    except ValueError:
        surface = Surface.INPUT
    return Decision(False, None, surface, f"cannot be judged: {exc}", error=exc)


# -- models --------------------------------------------------------------------------------------


def model_name(backend: Any) -> str | None:
    """The judging model's name or path, from a backend's ``model_id`` (local checkpoints) or
    ``model`` (a served model's name); None when it holds neither as a string."""
    if backend is None:
        return None
    for attr in ("model_id", "model", "model_name", "name_or_path"):
        value = getattr(backend, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def provider_name(backend: Any) -> str | None:
    """The backend's kind (``transformers``, ``openai``, ``local``, ``vllm-stream``...)."""
    value = getattr(backend, "name", None)
    return value if isinstance(value, str) and value else None


# -- OpenTelemetry (optional) --------------------------------------------------------------------


def _otel() -> Any:
    """The ``opentelemetry.trace`` module, or None when OpenTelemetry is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


_tracers: dict[int, Any] = {}


def _tracer(otel: Any) -> Any:
    """The ``qwen3guard`` tracer (cached: before a provider is set, the API hands out a proxy
    that switches to the provider's tracer once one is set)."""
    tracer = _tracers.get(id(otel))
    if tracer is None:
        from . import __version__

        tracer = _tracers[id(otel)] = otel.get_tracer("qwen3guard", __version__)
    return tracer


def _span_name(model: str | None) -> str:
    return f"{OPERATION_NAME} {model}" if model else OPERATION_NAME


def _base_attributes(kind: Kind, model: str | None, provider: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": OPERATION_NAME, "qwen3guard.kind": kind}
    if provider:
        attrs["gen_ai.provider.name"] = provider
    if model:
        attrs["gen_ai.request.model"] = model
    return attrs


def _finish_span(otel: Any, span: Any, event: CheckEvent) -> None:
    """Set the decision's attributes on ``span`` and end it."""
    try:
        d = event.decision
        v = d.verdict
        reason = traced_reason(d, event.with_content)
        attrs: dict[str, Any] = {
            "qwen3guard.surface": Surface(event.surface).value,
            "qwen3guard.allowed": d.allowed,
            "qwen3guard.categories": [c.value for c in v.categories] if v is not None else [],
            "qwen3guard.reason": reason,
            "qwen3guard.latency_s": float(event.latency_s),
        }
        if v is not None:
            attrs["qwen3guard.risk"] = v.risk.value
            if v.refusal is not None:
                attrs["qwen3guard.refusal"] = v.refusal
        if event.content is not None:
            attrs["qwen3guard.content"] = event.content
        span.set_attributes(attrs)
        evaluation: dict[str, Any] = {
            "gen_ai.evaluation.name": "qwen3guard",
            "gen_ai.evaluation.score.label": "allowed" if d.allowed else "blocked",
            "gen_ai.evaluation.explanation": reason,
        }
        span.add_event("gen_ai.evaluation.result", evaluation)
        if d.error is not None:
            _error_status(otel, span, d.error, event.with_content,
                          f"could not judge: {d.error}")
    except Exception as exc:  # noqa: BLE001 - tracing never breaks a check
        log.debug("qwen3guard could not annotate its span: %r", exc)
    finally:
        span.end()


def _error_status(
    otel: Any, span: Any, exc: BaseException, with_content: bool, description: str
) -> None:
    """Error status for ``exc``: with content tracing, ``description`` and the recorded
    exception (message, stack); without, the exception's type name only."""
    name = type(exc).__qualname__
    span.set_attribute("error.type", name)
    if with_content:
        span.record_exception(exc)
        span.set_status(otel.Status(otel.StatusCode.ERROR, description))
    else:
        span.add_event("exception", {"exception.type": name})
        span.set_status(otel.Status(otel.StatusCode.ERROR, name))


def _fail_span(otel: Any, span: Any, exc: BaseException, with_content: bool) -> None:
    try:
        _error_status(otel, span, exc, with_content, str(exc))
    except Exception as err:  # noqa: BLE001
        log.debug("qwen3guard could not annotate its span: %r", err)
    finally:
        span.end()


def _span_kind(otel: Any, backend: Any) -> Any:
    """CLIENT for a served model, INTERNAL for one in this process (GenAI conventions)."""
    remote = any(getattr(backend, a, None) for a in ("base_url", "url"))
    return otel.SpanKind.CLIENT if remote else otel.SpanKind.INTERNAL


class ScreenTrace:
    """The trace of one ``screen`` / ``screen_batch`` call: a clock, the spans (one per item,
    children of one batch span for a batch; the single item's span is current while it is
    judged, so spans of the backend's own calls nest under it), and one event per item.

        with ScreenTrace(guard.gen, items, batch=True) as trace:
            plan = ScreenPlan(...)
            trace.judging(plan.surfaces)       # the items' spans start
            ...judge...
        for event in trace.done(decisions):    # the spans end; the events to emit
            emit(event)
    """

    def __init__(self, backend: Any, items: Sequence[Any], *, batch: bool) -> None:
        self.t0 = time.perf_counter()
        self.model = model_name(backend)
        self.batch = batch
        self._items = items
        self._content = trace_content()
        self._otel = _otel()
        self._outer: Any = None
        self._spans: list[Any] = []
        self._token: Any = None
        #: After a single screen raised InvalidInputError: its one event, to emit.
        self.raised: list[CheckEvent] = []
        if self._otel is not None:
            try:
                attrs = _base_attributes("screen", self.model, provider_name(backend))
                kind = _span_kind(self._otel, backend)
                if batch:
                    attrs["qwen3guard.batch_size"] = len(items) if isinstance(items, Sequence) else 0
                    name = f"{_span_name(self.model)} batch"
                else:
                    name = _span_name(self.model)
                self._outer = _tracer(self._otel).start_span(name, kind=kind, attributes=attrs)
                self._attrs, self._kind = attrs, kind
            except Exception as exc:  # noqa: BLE001
                log.debug("qwen3guard could not start its span: %r", exc)
                self._otel = None

    def __enter__(self) -> ScreenTrace:
        if self._outer is not None:
            try:
                from opentelemetry import context

                self._token = context.attach(self._otel.set_span_in_context(self._outer))
            except Exception as exc:  # noqa: BLE001
                log.debug("qwen3guard could not make its span current: %r", exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._detach()
        if exc is None:
            return
        if isinstance(exc, InvalidInputError) and not self.batch and self._items:
            # A single screen of content that cannot be judged: one blocked check, then raise.
            item = self._items[0]
            surface = item[1] if isinstance(item, tuple) and len(item) > 1 else Surface.INPUT
            self.raised = self.done([invalid_input(exc, surface)])
            return
        if self._otel is not None:
            for span in self._spans:
                _fail_span(self._otel, span, exc, self._content)
            if self._outer is not None:
                _fail_span(self._otel, self._outer, exc, self._content)
        self._spans, self._outer = [], None

    def _detach(self) -> None:
        if self._token is not None:
            from opentelemetry import context

            try:
                context.detach(self._token)
            except Exception as exc:  # noqa: BLE001
                log.debug("qwen3guard could not detach its span: %r", exc)
            self._token = None

    def judging(self, surfaces: Sequence[Surface]) -> None:
        """The items are known (and about to be judged): start one span per item of a batch."""
        if self._outer is None or not self.batch:
            return
        try:
            ctx = self._otel.set_span_in_context(self._outer)
            tracer = _tracer(self._otel)
            for surface in surfaces:
                attrs = {**self._attrs, "qwen3guard.surface": Surface(surface).value}
                attrs.pop("qwen3guard.batch_size", None)
                self._spans.append(tracer.start_span(_span_name(self.model), context=ctx,
                                                     kind=self._kind, attributes=attrs))
        except Exception as exc:  # noqa: BLE001
            log.debug("qwen3guard could not start its spans: %r", exc)

    def done(self, decisions: Sequence[Decision]) -> list[CheckEvent]:
        """End the spans with the decisions; the events to emit, one per item."""
        self._detach()
        latency = time.perf_counter() - self.t0
        events: list[CheckEvent] = []
        for i, decision in enumerate(decisions):
            content = None
            if self._content and i < len(self._items):
                item = self._items[i]
                content = judged_text(item[0] if isinstance(item, tuple) else item)
            events.append(CheckEvent(decision.surface, decision, latency, self.model,
                                     "screen", content, self._content))
        if self._otel is not None:
            if self.batch:
                for span, event in zip(self._spans, events):
                    _finish_span(self._otel, span, event)
                if self._outer is not None:
                    self._outer.end()
            elif self._outer is not None and events:
                _finish_span(self._otel, self._outer, events[0])
            self._spans, self._outer = [], None
        return events


class GateTrace:
    """The trace of one gated stream: started when the gate opens (before the prompt is
    judged), ended once with the gate's final decision."""

    def __init__(self, backend: Any, *, reported: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.model = model_name(backend)
        self.with_content = trace_content()
        self.content: list[str] | None = [] if self.with_content else None
        self.reported = reported  # True: a trace with nothing to report (and no span)
        self._otel = None if reported else _otel()
        self._span: Any = None
        if self._otel is not None:
            try:
                attrs = _base_attributes("stream", self.model, provider_name(backend))
                attrs["gen_ai.request.stream"] = True
                self._span = _tracer(self._otel).start_span(
                    _span_name(self.model), kind=_span_kind(self._otel, backend),
                    attributes=attrs)
            except Exception as exc:  # noqa: BLE001
                log.debug("qwen3guard could not start its span: %r", exc)
                self._otel = None

    def fed(self, text: str) -> None:
        if self.content is not None and text:
            self.content.append(text)

    def rolled_back(self, offset: int) -> None:
        if self.content is not None:
            self.content = ["".join(self.content)[:offset]]

    def done(self, decision: Decision) -> CheckEvent | None:
        """The event for the gate's final decision (None if it was reported already); ends
        the span."""
        if self.reported:
            return None
        self.reported = True
        content = "".join(self.content) if self.content is not None else None
        event = CheckEvent(decision.surface, decision, time.perf_counter() - self.t0,
                           self.model, "stream", content, self.with_content)
        if self._span is not None:
            _finish_span(self._otel, self._span, event)
            self._span = None
        return event

    def failed(self, exc: BaseException) -> None:
        """The check raised ``exc`` (no decision): end the span with error status, no event."""
        if self.reported:
            return
        self.reported = True
        if self._span is not None:
            _fail_span(self._otel, self._span, exc, self.with_content)
            self._span = None
