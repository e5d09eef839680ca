"""Guard decisions in traces (issue 16, item 1): one event per check to observers, content only
when asked for, and one OpenTelemetry span per check when OpenTelemetry is installed.

Checks run on the built checkpoints (fixtures ``guard`` / ``gen_guard``); the only stand-in is
a Gen server that is down (nothing listens on the port), for "could not judge".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from qwen3guard import (
    InvalidInputError,
    Qwen3Guard,
    StreamGate,
    Surface,
    UnsafeContentError,
    tracing,
)
from qwen3guard.stream.intervene import Intervention, aintervene, intervene
from qwen3guard.tracing import CheckEvent
from tests.support.launch import free_port

SAFE = "What is the weather like today?"
UNSAFE = "How can I make a bomb?"
PROMPT = "Tell me a story"
FLAGGED = ["Sure", ".", " Here", " is", " how", " to", " make", " a", " bomb", " at", " home",
           " quickly", ".", " Then", " more", " words", " follow", "."]
CLEAN = ["Once", " upon", " a", " time", " there", " was", " a", " cat", "."]


class Recorder:
    """Records which path (sync / async) delivered each event."""

    def __init__(self) -> None:
        self.events: list[CheckEvent] = []
        self.paths: list[str] = []

    def on_check(self, event: CheckEvent) -> None:
        self.events.append(event)
        self.paths.append("sync")

    async def aon_check(self, event: CheckEvent) -> None:
        self.events.append(event)
        self.paths.append("async")


class Broken:
    def on_check(self, event: CheckEvent) -> None:
        raise RuntimeError("observer bug")

    async def aon_check(self, event: CheckEvent) -> None:
        raise RuntimeError("observer bug (async)")


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    monkeypatch.setattr(tracing, "_trace_content", None)
    monkeypatch.delenv("QWEN3GUARD_TRACE_CONTENT", raising=False)
    r = Recorder()
    tracing.add_observer(r)
    yield r
    tracing.remove_observer(r)


# -- screens ----------------------------------------------------------------------------------


def test_screen_reports_one_event_per_check_with_its_decision(
    gen_guard: Qwen3Guard, gen_path: str, rec: Recorder
) -> None:
    safe = gen_guard.screen(SAFE)
    unsafe = gen_guard.screen(UNSAFE, "input")
    assert safe.allowed and unsafe.blocked
    assert [e.decision for e in rec.events] == [safe, unsafe]
    assert rec.paths == ["sync", "sync"]
    for e in rec.events:
        assert e.kind == "screen" and e.surface is Surface.INPUT
        assert e.model == gen_path and e.latency_s > 0 and e.content is None
    d = rec.events[1].to_dict()
    assert d["allowed"] is False and d["risk"] == "Unsafe" and "Violent" in d["categories"]
    assert d["surface"] == "input" and d["kind"] == "screen" and d["model"] == gen_path
    assert d["error"] is None and "content" not in d
    assert set(d) == {"surface", "allowed", "risk", "categories", "reason", "refusal", "error",
                      "latency_s", "model", "kind"}


def test_enforce_reports_the_block_once(gen_guard: Qwen3Guard, rec: Recorder) -> None:
    with pytest.raises(UnsafeContentError):
        gen_guard.enforce(UNSAFE)
    assert len(rec.events) == 1 and rec.events[0].decision.blocked


def test_screen_batch_reports_each_item_in_order(gen_guard: Qwen3Guard, rec: Recorder) -> None:
    items: list[tuple[Any, Surface | str]] = [
        (SAFE, "input"), (UNSAFE, "input"), ("", "output"), ([{"role": "user", "content": 3}], "input"),
    ]
    decisions = gen_guard.screen_batch(items)
    assert [e.decision for e in rec.events] == decisions
    assert [d.allowed for d in decisions] == [True, False, True, False]
    assert [e.surface for e in rec.events] == [Surface.INPUT, Surface.INPUT, Surface.OUTPUT,
                                               Surface.INPUT]
    assert rec.events[3].to_dict()["error"]["type"] == "InvalidInputError"


async def test_async_screens_await_the_async_observer(gen_guard: Qwen3Guard, rec: Recorder) -> None:
    single = await gen_guard.ascreen(UNSAFE)
    batch = await gen_guard.ascreen_batch([(SAFE, "input"), (UNSAFE, "output")])
    with pytest.raises(UnsafeContentError):
        await gen_guard.aenforce(UNSAFE)
    assert [e.decision for e in rec.events[:3]] == [single, *batch]
    assert len(rec.events) == 4 and rec.paths == ["async"] * 4


def test_content_is_off_by_default_and_on_by_the_flag(
    gen_guard: Qwen3Guard, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tracing.trace_content() is False
    gen_guard.screen(UNSAFE)
    tracing.set_trace_content(True)
    conv = [{"role": "user", "content": SAFE}, {"role": "assistant", "content": "It is sunny."}]
    gen_guard.screen_batch([(UNSAFE, "input"), (conv, "output")])
    tracing.set_trace_content(False)
    gen_guard.screen(UNSAFE)
    assert [e.content for e in rec.events] == [None, UNSAFE, "It is sunny.", None]
    assert rec.events[1].to_dict()["content"] == UNSAFE
    monkeypatch.setattr(tracing, "_trace_content", None)
    monkeypatch.setenv("QWEN3GUARD_TRACE_CONTENT", "1")
    assert tracing.trace_content() is True


def test_an_observer_that_raises_changes_nothing(
    gen_guard: Qwen3Guard, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken()
    tracing.add_observer(broken)
    try:
        with caplog.at_level(logging.WARNING, logger="qwen3guard.tracing"):
            assert gen_guard.screen(SAFE).allowed
            assert gen_guard.screen(UNSAFE).blocked
            with pytest.raises(UnsafeContentError):
                gen_guard.enforce(UNSAFE)
    finally:
        tracing.remove_observer(broken)
    assert len(rec.events) == 3  # the other observer still hears every check
    warned = [r for r in caplog.records if "Broken" in r.getMessage()]
    assert len(warned) <= 1  # once per observer class (0 if an earlier test warned already)


async def test_an_async_observer_that_raises_changes_nothing(gen_guard: Qwen3Guard) -> None:
    broken = Broken()
    tracing.add_observer(broken)
    try:
        assert (await gen_guard.ascreen(UNSAFE)).blocked
    finally:
        tracing.remove_observer(broken)


def test_a_guard_that_cannot_judge_reports_the_error(rec: Recorder) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with Qwen3Guard.from_endpoint(url, "down-model", timeout=2, max_retries=0) as g:
        decision = g.screen(SAFE)
    assert decision.blocked and rec.events[0].decision == decision
    assert rec.events[0].model == "down-model"
    assert rec.events[0].to_dict()["error"]["type"] == "GuardUnavailableError"


# -- gated streams ------------------------------------------------------------------------------


def _drive(gate: StreamGate[str], chunks: list[str]) -> Any:
    for c in chunks:
        step = gate.feed(c, c)
        if step.flagged:
            return step
    return gate.finish()


def test_a_gated_stream_reports_its_prompt_and_its_flag_once(
    guard: Qwen3Guard, stream_path: str, rec: Recorder
) -> None:
    gate: StreamGate[str] = StreamGate.open(guard, PROMPT)
    step = _drive(gate, FLAGGED)
    assert step.flagged
    gate.finish()
    gate.abort()  # later calls report nothing more
    assert [(e.kind, e.surface) for e in rec.events] == [("stream", Surface.INPUT),
                                                         ("stream", Surface.OUTPUT)]
    prompt, answer = rec.events
    assert prompt.decision == gate.prompt_decision and prompt.decision.allowed
    assert answer.decision == step.decision and answer.decision.blocked
    assert answer.model == stream_path and answer.content is None


def test_a_clean_gated_stream_reports_its_allow_at_the_end(guard: Qwen3Guard, rec: Recorder) -> None:
    gate: StreamGate[str] = StreamGate.open(guard, None)  # no prompt: only the answer is judged
    for c in CLEAN:
        gate.feed(c, c)
        assert rec.events == []  # never per token
    step = gate.finish()
    assert len(rec.events) == 1 and rec.events[0].decision == step.decision
    assert step.decision is not None and step.decision.allowed


def test_the_gated_stream_carries_the_answer_when_content_is_on(
    guard: Qwen3Guard, rec: Recorder
) -> None:
    tracing.set_trace_content(True)
    gate: StreamGate[str] = StreamGate.open(guard, PROMPT)
    _drive(gate, CLEAN)
    assert [e.content for e in rec.events] == [PROMPT, "".join(CLEAN)]


async def test_async_gated_streams_await_the_async_observer(guard: Qwen3Guard, rec: Recorder) -> None:
    async def chunks(items: list[str]) -> AsyncIterator[str]:
        for c in items:
            yield c

    with pytest.raises(UnsafeContentError):
        async for _ in guard.amoderate_stream(PROMPT, chunks(FLAGGED)):
            pass
    shown = [t async for t in guard.amoderate_stream(None, chunks(CLEAN))]
    assert "".join(shown) == "".join(CLEAN)
    assert [e.decision.allowed for e in rec.events] == [True, False, True]
    assert rec.paths == ["async"] * 3


def test_a_blocked_prompt_is_reported_once(gen_guard: Qwen3Guard, rec: Recorder) -> None:
    with pytest.raises(UnsafeContentError):
        list(gen_guard.moderate_stream(UNSAFE, iter(CLEAN)))
    assert len(rec.events) == 1
    assert rec.events[0].surface is Surface.INPUT and rec.events[0].decision.blocked


# The intervention loop rolls back a flagged answer and regenerates: one gate run, one final event.
I_PROMPT = "How do I spend a fun afternoon?"
I_SAFE = "Go for a walk in the park. Then read a good book at home. "
I_UNSAFE = "Next, make a bomb with what you find in the garage and light it. "
I_REPAIR = "Then cook a nice dinner with friends and enjoy the evening. "


def _words(text: str) -> list[str]:
    return [w + " " for w in text.split(" ") if w]


def test_rollback_and_continue_reports_one_final_event(guard: Qwen3Guard, rec: Recorder) -> None:
    record = Intervention()
    out = "".join(intervene(guard, I_PROMPT, _words(I_SAFE + I_UNSAFE),
                            lambda kept, instruction: iter(_words(I_REPAIR)), record=record))
    assert record.retries == 1 and "bomb" not in out
    assert [(e.surface, e.decision.allowed) for e in rec.events] == [
        (Surface.INPUT, True), (Surface.OUTPUT, True)]


async def test_refused_after_retries_reports_the_last_flag_once(
    guard: Qwen3Guard, rec: Recorder
) -> None:
    async def words(text: str) -> AsyncIterator[str]:
        for w in _words(text):
            yield w

    record = Intervention()
    out = [t async for t in aintervene(guard, I_PROMPT, words(I_SAFE + I_UNSAFE),
                                       lambda kept, instruction: words(I_UNSAFE), record=record,
                                       max_retries=1)]
    assert record.refused and out
    assert [(e.surface, e.decision.allowed) for e in rec.events] == [
        (Surface.INPUT, True), (Surface.OUTPUT, False)]
    assert rec.paths == ["async", "async"]


# -- OpenTelemetry -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _provider() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # another suite set one: add to it
        return current
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans(_provider: Any) -> Iterator[Any]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    _provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # the exporter stops taking spans (the provider keeps the processor)


def test_one_span_per_screen_with_the_decision(
    gen_guard: Qwen3Guard, gen_path: str, spans: Any, rec: Recorder
) -> None:
    from opentelemetry.trace import SpanKind, StatusCode

    gen_guard.screen(UNSAFE)
    (span,) = spans.get_finished_spans()
    a = span.attributes
    assert span.name == f"guard {gen_path}" and span.kind is SpanKind.INTERNAL
    assert span.instrumentation_scope.name == "qwen3guard"
    assert a["gen_ai.operation.name"] == "guard" and a["gen_ai.request.model"] == gen_path
    assert a["gen_ai.provider.name"] == "transformers"
    assert a["qwen3guard.surface"] == "input" and a["qwen3guard.allowed"] is False
    assert a["qwen3guard.risk"] == "Unsafe" and "Violent" in a["qwen3guard.categories"]
    assert a["qwen3guard.reason"] == rec.events[0].decision.reason
    assert "qwen3guard.content" not in a
    assert span.status.status_code is not StatusCode.ERROR
    (ev,) = span.events
    assert ev.name == "gen_ai.evaluation.result"
    assert ev.attributes["gen_ai.evaluation.score.label"] == "blocked"


def test_a_batch_is_one_span_per_item_under_one_batch_span(
    gen_guard: Qwen3Guard, spans: Any
) -> None:
    tracing.set_trace_content(True)
    try:
        gen_guard.screen_batch([(SAFE, "input"), (UNSAFE, "output"), ("", "input")])
    finally:
        tracing.set_trace_content(False)
    finished = spans.get_finished_spans()
    (batch,) = [s for s in finished if s.name.endswith(" batch")]
    items = [s for s in finished if s is not batch]
    assert len(items) == 3 and all(s.parent.span_id == batch.context.span_id for s in items)
    assert [s.attributes["qwen3guard.allowed"] for s in items] == [True, False, True]
    assert [s.attributes["qwen3guard.surface"] for s in items] == ["input", "output", "input"]
    assert items[1].attributes["qwen3guard.content"] == UNSAFE


def test_a_check_that_could_not_judge_has_error_status(spans: Any) -> None:
    from opentelemetry.trace import SpanKind, StatusCode

    url = f"http://127.0.0.1:{free_port()}/v1"
    with Qwen3Guard.from_endpoint(url, "down-model", timeout=2, max_retries=0) as g:
        assert g.screen(SAFE).blocked
    (span,) = [s for s in spans.get_finished_spans() if s.name == "guard down-model"]
    assert span.status.status_code is StatusCode.ERROR and span.kind is SpanKind.CLIENT
    assert span.attributes["error.type"] == "GuardUnavailableError"
    assert span.attributes["gen_ai.provider.name"] == "openai"


async def test_one_span_per_gated_stream(guard: Qwen3Guard, stream_path: str, spans: Any) -> None:
    gate: StreamGate[str] = await StreamGate.aopen(guard, PROMPT)
    for c in FLAGGED:
        if (await gate.afeed(c, c)).flagged:
            break
    await gate.afinish()
    finished = spans.get_finished_spans()
    assert len(finished) == 2  # the prompt's check and the answer's
    answer = finished[-1]
    assert answer.name == f"guard {stream_path}"
    assert answer.attributes["qwen3guard.kind"] == "stream"
    assert answer.attributes["qwen3guard.surface"] == "output"
    assert answer.attributes["qwen3guard.allowed"] is False


def test_nothing_without_opentelemetry(
    gen_guard: Qwen3Guard, spans: Any, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import opentelemetry" now fails
    assert tracing._otel() is None
    assert gen_guard.screen(UNSAFE).blocked
    assert gen_guard.screen_batch([(SAFE, "input")])[0].allowed
    gate: StreamGate[str] = StreamGate.open(gen_guard, None)
    _drive(gate, CLEAN)
    assert spans.get_finished_spans() == ()
    assert len(rec.events) == 3  # observers still hear every check


# -- what stays out of traces, and spans that always end (review of 2026-11-30) ---------------

SECRET = "078-05-1120"
# Content that cannot be judged, whose error message quotes the input (a role, a block's type,
# a block's keys).
BAD_ITEMS: list[tuple[Any, Surface | str]] = [
    ([{"role": f"ssn {SECRET}", "content": "hi"}], "input"),
    ([{"role": "user", "content": [{"type": f"ssn {SECRET}", "x": 1}]}], "input"),
    ([{"role": "user", "content": [{f"ssn {SECRET}": 1}]}], "input"),
]


def _span_text(span: Any) -> str:
    """Everything a span carries, as text."""
    return repr((span.name, dict(span.attributes), span.status.description,
                 [(e.name, dict(e.attributes)) for e in span.events]))


@pytest.fixture
def live(_provider: Any) -> Iterator[dict[int, str]]:
    """The spans started and not yet ended during the test."""
    from opentelemetry.sdk.trace import SpanProcessor

    started: dict[int, str] = {}

    class Live(SpanProcessor):
        active = True

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            if self.active:
                started[span.context.span_id] = span.name

        def on_end(self, span: Any) -> None:
            started.pop(span.context.span_id, None)

    processor = Live()
    _provider.add_span_processor(processor)
    yield started
    processor.active = False


def test_input_text_stays_out_of_traces_unless_content_is_on(
    gen_guard: Qwen3Guard, spans: Any, rec: Recorder
) -> None:
    from opentelemetry.trace import StatusCode

    decisions = gen_guard.screen_batch(BAD_ITEMS)
    assert all(d.blocked and SECRET in d.reason for d in decisions)  # the Decision is unchanged
    assert [e.decision for e in rec.events] == decisions
    for e in rec.events:
        d = e.to_dict()
        assert SECRET not in repr(d)
        assert d["reason"] == "cannot be judged: InvalidInputError"
        assert d["error"] == {"type": "InvalidInputError"}
    finished = spans.get_finished_spans()
    assert len(finished) == 4 and all(SECRET not in _span_text(s) for s in finished)
    items = [s for s in finished if not s.name.endswith(" batch")]
    assert all(s.status.status_code is StatusCode.ERROR for s in items)
    assert all(s.attributes["error.type"] == "InvalidInputError" for s in items)

    spans.clear()
    rec.events.clear()
    tracing.set_trace_content(True)  # (the rec fixture restores the setting)
    gen_guard.screen_batch(BAD_ITEMS)
    for e in rec.events:
        d = e.to_dict()
        assert SECRET in d["reason"] and SECRET in d["error"]["message"]
    items = [s for s in spans.get_finished_spans() if not s.name.endswith(" batch")]
    assert len(items) == 3
    assert all(SECRET in s.attributes["qwen3guard.reason"] for s in items)
    assert all(SECRET in s.status.description for s in items)


def test_a_screen_that_raises_on_invalid_input_reports_one_blocked_check(
    gen_guard: Qwen3Guard, spans: Any, live: dict[int, str], rec: Recorder
) -> None:
    from opentelemetry.trace import StatusCode

    with pytest.raises(InvalidInputError):
        gen_guard.screen(BAD_ITEMS[0][0], "output")
    (event,) = rec.events
    assert event.kind == "screen" and event.surface is Surface.OUTPUT
    assert event.decision.blocked and isinstance(event.decision.error, InvalidInputError)
    assert SECRET not in repr(event.to_dict())
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and SECRET not in _span_text(span)
    assert live == {}


async def test_an_async_screen_that_raises_on_invalid_input_reports_one_blocked_check(
    gen_guard: Qwen3Guard, spans: Any, live: dict[int, str], rec: Recorder
) -> None:
    with pytest.raises(InvalidInputError):
        await gen_guard.ascreen(BAD_ITEMS[1][0])
    with pytest.raises(InvalidInputError):
        await gen_guard.aenforce(BAD_ITEMS[2][0])
    assert [(e.surface, e.decision.allowed) for e in rec.events] == [(Surface.INPUT, False)] * 2
    assert rec.paths == ["async", "async"]
    assert len(spans.get_finished_spans()) == 2 and live == {}
    assert all(SECRET not in _span_text(s) for s in spans.get_finished_spans())


async def test_a_gate_whose_prompt_cannot_be_judged_ends_its_span(
    guard: Qwen3Guard, spans: Any, live: dict[int, str], rec: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.trace import StatusCode

    with pytest.raises(InvalidInputError):
        StreamGate.open(guard, BAD_ITEMS[0][0])
    with pytest.raises(InvalidInputError):
        await StreamGate.aopen(guard, BAD_ITEMS[1][0])
    assert [(e.kind, e.surface, e.decision.allowed) for e in rec.events] == [
        ("stream", Surface.INPUT, False)] * 2
    assert all(SECRET not in repr(e.to_dict()) for e in rec.events)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug near {SECRET}")

    async def aboom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug near {SECRET}")

    monkeypatch.setattr(guard, "open_stream", boom)
    monkeypatch.setattr(guard, "aopen_stream", aboom)
    with pytest.raises(RuntimeError):
        StreamGate.open(guard, PROMPT)
    with pytest.raises(RuntimeError):
        await StreamGate.aopen(guard, PROMPT)
    assert len(rec.events) == 2  # an unexpected error is no check's outcome: no event
    finished = spans.get_finished_spans()
    assert len(finished) == 4 and live == {}
    assert all(s.status.status_code is StatusCode.ERROR for s in finished)
    assert [s.attributes["error.type"] for s in finished[2:]] == ["RuntimeError"] * 2
    assert all(SECRET not in _span_text(s) for s in finished)


async def test_an_unexpected_error_while_judging_the_answer_ends_its_span(
    guard: Qwen3Guard, spans: Any, live: dict[int, str], rec: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.trace import StatusCode

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug near {SECRET}")

    async def aboom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a bug near {SECRET}")

    gate: StreamGate[str] = StreamGate.open(guard, None)
    assert gate.session is not None
    monkeypatch.setattr(gate.session, "feed_text", boom)
    with pytest.raises(RuntimeError):
        gate.feed("Once", "Once")
    agate: StreamGate[str] = await StreamGate.aopen(guard, None)
    assert agate.session is not None
    monkeypatch.setattr(agate.session, "afeed_text", aboom)
    with pytest.raises(RuntimeError):
        await agate.afeed("Once", "Once")
    fgate: StreamGate[str] = StreamGate.open(guard, None)
    assert fgate.session is not None
    fgate.feed("Once", "Once")
    monkeypatch.setattr(fgate.session, "close", boom)
    with pytest.raises(RuntimeError):
        fgate.finish()
    finished = spans.get_finished_spans()
    assert len(finished) == 3 and live == {}
    assert all(s.status.status_code is StatusCode.ERROR for s in finished)
    assert all(s.attributes["error.type"] == "RuntimeError" for s in finished)
    assert all(SECRET not in _span_text(s) for s in finished)
    assert rec.events == []


def test_a_kept_flag_is_reported_when_the_gate_is_finished(guard: Qwen3Guard, rec: Recorder) -> None:
    gate: StreamGate[str] = StreamGate.open(guard, PROMPT, keep_on_flag=True)
    step = _drive(gate, FLAGGED)
    assert step.flagged and len(rec.events) == 1  # a rollback may still undo the flag
    assert gate.finish().flagged
    assert len(rec.events) == 2  # finishing gives the gate up: its flag is reported
    gate.abort()
    gate.finish()
    assert [(e.surface, e.decision.allowed) for e in rec.events] == [
        (Surface.INPUT, True), (Surface.OUTPUT, False)]
    assert rec.events[1].decision == step.decision


async def test_a_kept_flag_is_reported_when_the_gate_is_finished_async(
    guard: Qwen3Guard, rec: Recorder
) -> None:
    gate: StreamGate[str] = await StreamGate.aopen(guard, PROMPT, keep_on_flag=True)
    step = None
    for c in FLAGGED:
        step = await gate.afeed(c, c)
        if step.flagged:
            break
    assert step is not None and step.flagged and len(rec.events) == 1
    assert (await gate.afinish()).flagged
    assert len(rec.events) == 2
    await gate.aabort()
    await gate.afinish()
    assert [(e.surface, e.decision.allowed) for e in rec.events] == [
        (Surface.INPUT, True), (Surface.OUTPUT, False)]
    assert rec.paths == ["async", "async"]
