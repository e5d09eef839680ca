"""Guard decisions in LlamaIndex's instrumentation: a span handler and an event handler on the
root dispatcher (where Arize Phoenix / OpenInference attach theirs) see one
``Qwen3GuardCheckEvent`` per check, with the check's decision, inside a span around the check
named after the component; the judged text only when content tracing is on.

Real LlamaIndex pieces (a VectorStoreIndex with a mock embedding, a RetrieverQueryEngine, a
SimpleChatEngine, FunctionTools, a FunctionAgent), judged by the built-in checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from li_testkit import (
    CLEAN_DOCS,
    POISON,
    SAFE_ANSWER,
    UNSAFE_ANSWER,
    Script,
    ScriptedLLM,
    build_index,
)
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.bridge.pydantic import Field
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.span import SpanDropEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import QueryBundle
from llama_index.core.tools import FunctionTool
from llama_index.postprocessor.qwen3guard import (
    Qwen3GuardChatEngine,
    Qwen3GuardCheckEvent,
    Qwen3GuardNodePostprocessor,
    Qwen3GuardQueryEngine,
    Qwen3GuardViolation,
    guard_tool,
    moderate_agent_stream,
)
from llama_index.postprocessor.qwen3guard._events import InstrumentationObserver

from qwen3guard import RiskLevel, tracing

UNSAFE = RiskLevel.UNSAFE.value
SAFE_QUERY = "Where is the Eiffel Tower?"
UNSAFE_QUERY = "How can I make a bomb?"


class Events(BaseEventHandler):
    """Every event the root dispatcher hands out."""

    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def checks(self) -> list[Qwen3GuardCheckEvent]:
        return [e for e in self.events if isinstance(e, Qwen3GuardCheckEvent)]


class Spans(SimpleSpanHandler):
    """Simple spans, plus each exited span's result (what OpenInference writes to
    ``output.value``) and bound arguments (its ``input.value``)."""

    results: dict[str, Any] = Field(default_factory=dict)
    arguments: dict[str, Any] = Field(default_factory=dict)

    def new_span(self, id_: str, bound_args: Any, *args: Any, **kwargs: Any) -> Any:
        self.arguments[id_] = dict(bound_args.arguments)
        return super().new_span(id_, bound_args, *args, **kwargs)

    def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None,
                             result: Any = None, **kwargs: Any) -> Any:
        self.results[id_] = result
        return super().prepare_to_exit_span(id_, bound_args, instance, result, **kwargs)

    def span(self, span_id: str | None) -> Any:
        """The completed span ``span_id`` (fails when the id names none)."""
        done = {s.id_: s for s in self.completed_spans}
        assert span_id in done, f"{span_id!r} is not a completed span ({sorted(done)})"
        return done[span_id]


@pytest.fixture
def trace() -> Iterator[tuple[Events, Spans]]:
    root = get_dispatcher()
    events, spans = Events(), Spans()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    try:
        yield events, spans
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not events]
        root.span_handlers = [h for h in root.span_handlers if h is not spans]


@pytest.fixture
def content_on() -> Iterator[None]:
    before = tracing.trace_content()
    tracing.set_trace_content(True)
    try:
        yield
    finally:
        tracing.set_trace_content(before)


def _in_span(spans: Spans, event: Qwen3GuardCheckEvent, component: str, kind: str) -> Any:
    """The event's span: completed, named ``<component>.<kind>-<uuid>``, its result carrying
    the event's decision, its input nothing."""
    span = spans.span(event.span_id)
    assert span.id_.startswith(f"{component}.{kind}-"), span.id_
    decisions = spans.results[span.id_]
    wanted = {"allowed": event.allowed, "surface": event.surface, "kind": event.kind,
              "content": event.content}
    assert wanted in [
        {"allowed": d["allowed"], "surface": d["surface"], "kind": d["kind"],
         "content": d.get("content")} for d in decisions
    ]
    assert spans.arguments[span.id_] == {}
    return span


def test_the_observer_is_registered_once():
    ours = [o for o in tracing.observers() if isinstance(o, InstrumentationObserver)]
    assert len(ours) == 1


# -- the postprocessor over a real index's nodes ----------------------------------------------------


@pytest.fixture(scope="module")
def nodes():
    index = build_index((CLEAN_DOCS[0], POISON))
    found = index.as_retriever(similarity_top_k=2).retrieve(SAFE_QUERY)
    assert sorted(n.node.get_content() for n in found) == sorted((CLEAN_DOCS[0], POISON))
    return found


@pytest.mark.parametrize("use_async", [False, True])
async def test_postprocessor_one_event_per_node_in_its_span(nodes, gen_guard, trace, use_async):
    events, spans = trace
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard)
    kept = (await pp.apostprocess_nodes(nodes) if use_async else pp.postprocess_nodes(nodes))
    assert [n.node.get_content() for n in kept] == [CLEAN_DOCS[0]]
    checks = events.checks()
    assert len(checks) == len(nodes) == 2
    for node, check in zip(nodes, checks):  # one event per node, in the nodes' order
        unsafe = node.node.get_content() == POISON
        assert check.allowed is not unsafe
        assert check.surface == "retrieval" and check.kind == "screen"
        assert (check.risk == UNSAFE) is unsafe
        assert check.content is None  # off by default
        assert check.latency_s > 0 and check.model
        span = _in_span(spans, check, "Qwen3GuardNodePostprocessor", "screen")
        if not use_async:  # inside the postprocessor's own span (LlamaIndex spans the sync one)
            assert span.parent_id.startswith("Qwen3GuardNodePostprocessor._postprocess_nodes-")


def test_postprocessor_content_when_tracing_content(nodes, gen_guard, trace, content_on):
    events, spans = trace
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, check_query=True)
    with pytest.raises(Exception):  # noqa: B017 - not the point here; the query is unsafe
        pp.postprocess_nodes(nodes, QueryBundle(UNSAFE_QUERY))
    checks = events.checks()
    assert len(checks) == 3  # the query, then each node
    assert checks[0].surface == "input" and checks[0].content == UNSAFE_QUERY
    assert not checks[0].allowed
    for node, check in zip(nodes, checks[1:]):
        assert check.content is not None and node.node.get_content() in check.content
        _in_span(spans, check, "Qwen3GuardNodePostprocessor", "screen")


# -- the query engine -------------------------------------------------------------------------------


def _engine(guard: Any, answer: str, *, streaming: bool = False, **kw: Any) -> Any:
    index = build_index(CLEAN_DOCS)
    inner = RetrieverQueryEngine.from_args(
        retriever=index.as_retriever(similarity_top_k=len(CLEAN_DOCS)),
        llm=ScriptedLLM(answer=answer),
        streaming=streaming,
    )
    return Qwen3GuardQueryEngine(inner, guard=guard, **kw)


@pytest.mark.parametrize("use_async", [False, True])
async def test_query_engine_events_query_and_answer(gen_guard, trace, use_async):
    events, spans = trace
    engine = _engine(gen_guard, UNSAFE_ANSWER, exit_behavior="replace")
    response = await engine.aquery(SAFE_QUERY) if use_async else engine.query(SAFE_QUERY)
    assert "bomb" not in str(response)
    checks = events.checks()
    assert [(c.surface, c.allowed, c.kind) for c in checks] == [
        ("input", True, "screen"), ("output", False, "screen")]
    assert checks[1].risk == UNSAFE and checks[1].categories
    method = "_aquery" if use_async else "_query"
    for check in checks:
        assert check.content is None
        span = _in_span(spans, check, "Qwen3GuardQueryEngine", "screen")
        assert span.parent_id.startswith(f"Qwen3GuardQueryEngine.{method}-")
    assert checks[0].span_id != checks[1].span_id  # a span around each check


@pytest.mark.parametrize("use_async", [False, True])
async def test_query_engine_content_when_tracing_content(gen_guard, trace, content_on, use_async):
    events, spans = trace
    engine = _engine(gen_guard, SAFE_ANSWER)
    response = await engine.aquery(SAFE_QUERY) if use_async else engine.query(SAFE_QUERY)
    assert str(response) == SAFE_ANSWER
    checks = events.checks()
    assert [(c.surface, c.allowed, c.content) for c in checks] == [
        ("input", True, SAFE_QUERY), ("output", True, SAFE_ANSWER)]
    for check in checks:
        _in_span(spans, check, "Qwen3GuardQueryEngine", "screen")


@pytest.mark.parametrize("use_async", [False, True])
async def test_streaming_query_engine_one_stream_event(guard, trace, use_async):
    events, spans = trace
    engine = _engine(guard, UNSAFE_ANSWER, streaming=True, exit_behavior="replace")
    if use_async:
        response = await engine.aquery(SAFE_QUERY)
        text = "".join([t async for t in response.async_response_gen()])
    else:
        response = engine.query(SAFE_QUERY)
        text = "".join(response.response_gen)
    assert "bomb" not in text
    checks = events.checks()
    # the engine screens the query; the gate judges the prompt when it opens, then the answer
    assert [(c.surface, c.allowed, c.kind) for c in checks] == [
        ("input", True, "screen"), ("input", True, "stream"), ("output", False, "stream")]
    stream = checks[2]
    assert stream.content is None and stream.risk == UNSAFE
    _in_span(spans, checks[0], "Qwen3GuardQueryEngine", "screen")
    span = _in_span(spans, stream, "Qwen3GuardQueryEngine", "stream")
    assert checks[1].span_id == stream.span_id  # the stream's checks, in the stream's span
    # the stream's span is a child of the query's span, where the stream was made
    assert span.parent_id.startswith(
        "Qwen3GuardQueryEngine._aquery-" if use_async else "Qwen3GuardQueryEngine._query-")


def test_a_raising_stream_drops_its_span(guard, trace):
    events, spans = trace
    engine = _engine(guard, UNSAFE_ANSWER, streaming=True)  # exit_behavior="error"
    response = engine.query(SAFE_QUERY)
    with pytest.raises(Qwen3GuardViolation):
        "".join(response.response_gen)
    flag = events.checks()[-1]
    assert (flag.surface, flag.allowed, flag.kind) == ("output", False, "stream")
    dropped = {s.id_ for s in spans.dropped_spans}
    assert flag.span_id in dropped and flag.span_id.startswith("Qwen3GuardQueryEngine.stream-")
    assert [e.span_id for e in events.events if isinstance(e, SpanDropEvent)] == [flag.span_id]


async def test_streaming_content_when_tracing_content(guard, trace, content_on):
    events, spans = trace
    engine = _engine(guard, SAFE_ANSWER, streaming=True)
    response = engine.query(SAFE_QUERY)
    assert "".join(response.response_gen) == SAFE_ANSWER
    stream = events.checks()[-1]
    assert (stream.kind, stream.allowed, stream.content) == ("stream", True, SAFE_ANSWER)
    _in_span(spans, stream, "Qwen3GuardQueryEngine", "stream")


# -- the other components ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_guarded_tool_events(gen_guard, trace, use_async):
    events, spans = trace

    def search(query: str) -> str:
        """Search the web."""
        return UNSAFE_ANSWER

    tool: Any = guard_tool(FunctionTool.from_defaults(fn=search), gen_guard,
                           exit_behavior="replace")
    out = await tool.acall(query="weather in Paris") if use_async else tool.call(
        query="weather in Paris")
    assert out.is_error
    checks = events.checks()
    assert [(c.surface, c.allowed) for c in checks] == [("tool_call", True),
                                                        ("tool_result", False)]
    for check in checks:
        _in_span(spans, check, "GuardedFunctionTool", "screen")


@pytest.mark.parametrize("streaming", [False, True])
def test_chat_engine_events(guard, trace, streaming):
    events, spans = trace
    engine = Qwen3GuardChatEngine(
        SimpleChatEngine.from_defaults(llm=ScriptedLLM(answer=SAFE_ANSWER)), guard=guard
    )
    if streaming:
        assert "".join(engine.stream_chat(SAFE_QUERY).response_gen) == SAFE_ANSWER
    else:
        assert str(engine.chat(SAFE_QUERY)) == SAFE_ANSWER
    checks = events.checks()
    kind = "stream" if streaming else "screen"
    gate_prompt = [("input", True, "stream")] if streaming else []
    assert [(c.surface, c.allowed, c.kind) for c in checks] == [
        ("input", True, "screen"), *gate_prompt, ("output", True, kind)]
    _in_span(spans, checks[0], "Qwen3GuardChatEngine", "screen")
    for check in checks[1:]:
        _in_span(spans, check, "Qwen3GuardChatEngine", kind)


# The workflows library inspects agents (pydantic models) with inspect.getmembers.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
async def test_agent_stream_events(guard, trace):
    events, spans = trace
    script = Script(tool="search", kwargs={"query": "weather in Paris"},
                    final="It is sunny in Paris today.", delay_s=0.001)

    def search(query: str) -> str:
        """Search the web."""
        return "It is sunny in Paris."

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=search)],
                          llm=MockFunctionCallingLLM(response_generator=script))
    handler = agent.run("What is the weather in Paris?")
    shown = ""
    async for ev in moderate_agent_stream(handler, guard=guard):
        if isinstance(ev, AgentStream):
            shown += ev.delta
    assert shown == "It is sunny in Paris today."
    checks = events.checks()
    seen = {(c.surface, c.allowed, c.kind) for c in checks}
    # the tool call and its result are screened; the streamed answer goes through the gate
    assert {("tool_call", True, "screen"), ("tool_result", True, "screen"),
            ("output", True, "stream")} <= seen
    assert all(c.allowed for c in checks)
    for check in checks:
        _in_span(spans, check, "moderate_agent_stream", check.kind)
