"""Guard decisions in LangChain traces (issue 16, item 1): every check is one custom event
``"qwen3guard"`` of the run that made it, seen in ``astream_events(version="v2")`` and by
callback handlers, on the sync and the async paths. The guard is the real tiny checkpoints;
the LLMs are fakes.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_qwen3guard import (
    EVENT_NAME,
    Qwen3GuardDocumentFilter,
    Qwen3GuardMiddleware,
    Qwen3GuardRunnable,
    guard_tool,
)
from lc_fakes import SAFE_ANSWER, UNSAFE_ANSWER, ScriptedChatModel, tool_call

from qwen3guard import Qwen3Guard, Qwen3GuardViolation, tracing
from qwen3guard.tracing import CheckEvent

PROMPT = ChatPromptTemplate.from_messages([("user", "{question}")])
QUESTION = "What is the weather like today?"
BOMB = "How can I make a bomb?"


class Core:
    """The core's own view: every check the guard reported, in order."""

    def __init__(self) -> None:
        self.events: list[CheckEvent] = []

    def on_check(self, event: CheckEvent) -> None:
        self.events.append(event)

    async def aon_check(self, event: CheckEvent) -> None:
        self.events.append(event)

    def dicts(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events]


class Handler(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == EVENT_NAME:
            self.events.append(data)


class AsyncHandler(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == EVENT_NAME:
            self.events.append(data)


@pytest.fixture
def core() -> Any:
    c = Core()
    tracing.add_observer(c)
    yield c
    tracing.remove_observer(c)


async def custom_events(runnable: Runnable[Any, Any], value: Any) -> list[dict[str, Any]]:
    out = []
    async for ev in runnable.astream_events(value, version="v2"):
        if ev["event"] == "on_custom_event" and ev["name"] == EVENT_NAME:
            out.append(ev["data"])
    return out


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    return [(e["kind"], e["surface"], e["allowed"]) for e in events]


def fake_llm(*answers: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(answers))


# -- the runnable -------------------------------------------------------------------------------


async def test_astream_events_of_a_guarded_chain_show_each_check(
    guard: Qwen3Guard, stream_path: str, core: Core
) -> None:
    chain = PROMPT | fake_llm(UNSAFE_ANSWER) | Qwen3GuardRunnable(guard=guard,
                                                                  exit_behavior="replace")
    events = await custom_events(chain, {"question": QUESTION})
    assert summary(events) == [("stream", "output", False)]  # one gated stream, flagged
    assert events[0]["risk"] == "Unsafe" and "Violent" in events[0]["categories"]
    assert events[0]["model"] == stream_path and "content" not in events[0]
    assert events == core.dicts()  # one custom event per check the core reported


async def test_astream_events_show_the_input_screen_and_the_clean_answer(
    guard: Qwen3Guard, core: Core
) -> None:
    chain = (Qwen3GuardRunnable(guard=guard, input_key="question") | PROMPT
             | fake_llm(SAFE_ANSWER) | Qwen3GuardRunnable(guard=guard))
    events = await custom_events(chain, {"question": QUESTION})
    assert [(e["surface"], e["allowed"]) for e in events] == [("input", True), ("output", True)]
    assert events == core.dicts()


async def test_astream_events_show_the_blocked_input(guard: Qwen3Guard, core: Core) -> None:
    chain = (Qwen3GuardRunnable(guard=guard, input_key="question", exit_behavior="replace")
             | PROMPT | fake_llm(SAFE_ANSWER))
    events = await custom_events(chain, {"question": BOMB})
    assert summary(events) == [("screen", "input", False)]
    assert events[0]["risk"] == "Unsafe" and events == core.dicts()


def test_a_callback_handler_sees_the_events_on_invoke(gen_guard: Qwen3Guard, core: Core) -> None:
    chain = (Qwen3GuardRunnable(guard=gen_guard, input_key="question") | PROMPT
             | fake_llm(UNSAFE_ANSWER) | Qwen3GuardRunnable(guard=gen_guard))
    handler = Handler()
    with pytest.raises(Qwen3GuardViolation):
        chain.invoke({"question": QUESTION}, {"callbacks": [handler]})
    assert summary(handler.events) == [("screen", "input", True), ("screen", "output", False)]
    assert handler.events == core.dicts()


async def test_an_async_handler_sees_the_events_on_ainvoke(
    gen_guard: Qwen3Guard, core: Core
) -> None:
    chain = PROMPT | fake_llm(SAFE_ANSWER) | Qwen3GuardRunnable(guard=gen_guard)
    handler = AsyncHandler()
    await chain.ainvoke({"question": QUESTION}, {"callbacks": [handler]})
    assert summary(handler.events) == [("screen", "output", True)]
    assert handler.events == core.dicts()


def test_content_rides_along_only_when_on(gen_guard: Qwen3Guard, monkeypatch: Any) -> None:
    monkeypatch.setattr(tracing, "_trace_content", None)
    g = Qwen3GuardRunnable(guard=gen_guard)
    handler = Handler()
    g.invoke(QUESTION, {"callbacks": [handler]})
    tracing.set_trace_content(True)
    g.invoke(QUESTION, {"callbacks": [handler]})
    assert "content" not in handler.events[0] and handler.events[1]["content"] == QUESTION


def test_outside_a_langchain_run_nothing_is_sent(
    gen_guard: Qwen3Guard, core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="qwen3guard.tracing"):
        assert gen_guard.screen(BOMB).blocked
    assert len(core.events) == 1  # the core saw it; LangChain had no run to attach it to
    assert not [r for r in caplog.records if "LangChainEvents" in r.getMessage()]


# -- tools, documents, the middleware agent ----------------------------------------------------------


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return "It is sunny and warm today."


@tool
async def alookup(query: str) -> str:
    """Look something up (async)."""
    return "It is sunny and warm today."


@pytest.mark.parametrize("fn", [lookup, alookup], ids=["sync-tool", "async-tool"])
async def test_a_guarded_tool_reports_its_argument_and_result_checks(
    gen_guard: Qwen3Guard, core: Core, fn: Any
) -> None:
    guarded = guard_tool(fn, gen_guard)
    events = await custom_events(guarded, {"query": "weather in Paris"})
    assert summary(events) == [("screen", "tool_call", True), ("screen", "tool_result", True)]
    assert events == core.dicts()


async def test_the_document_filter_reports_each_document(gen_guard: Qwen3Guard, core: Core) -> None:
    docs = [Document(page_content="The park opens at nine."),
            Document(page_content="To make a bomb, mix the explosive powder with the fuel.")]
    events = await custom_events(Qwen3GuardDocumentFilter(guard=gen_guard), docs)
    assert [(e["surface"], e["allowed"]) for e in events] == [("retrieval", True),
                                                              ("retrieval", False)]
    assert events == core.dicts()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_the_middleware_agent_reports_every_check(
    guard: Qwen3Guard, core: Core, is_async: bool
) -> None:
    model = ScriptedChatModel(script=[tool_call("lookup", {"query": "weather in Paris"}),
                                      SAFE_ANSWER])
    agent = create_agent(model, tools=[lookup], middleware=[Qwen3GuardMiddleware(guard)])
    state = {"messages": [HumanMessage(QUESTION)]}
    if is_async:
        events = await custom_events(agent, state)
    else:
        handler = Handler()
        agent.invoke(state, {"callbacks": [handler]})
        events = handler.events
    surfaces = {e["surface"] for e in events}
    assert {"input", "tool_call", "tool_result", "output"} <= surfaces
    assert all(e["allowed"] for e in events)
    assert events == core.dicts()  # every check the core reported, once, in order
