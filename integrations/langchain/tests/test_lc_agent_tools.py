"""The middleware's tool checks in a real ``create_agent`` agent: what a tool's ``Command``
adds is judged (class 5), a tool call is judged once (with the answer that makes it) unless it
changed on its way to the tool."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langchain_qwen3guard import Qwen3GuardMiddleware
from langgraph.types import Command
from lc_agent_fakes import (
    COMMAND_UPDATES,
    SAFE_QUESTION,
    UNSAFE_QUESTION,
    has_unsafe,
)
from lc_fakes import SAFE_ANSWER, ScriptedChatModel, tool_call

from qwen3guard import Surface

# "tool-message" is in test_lc_agent_seams; an update given as (key, value) pairs is refused by
# the agent's ToolNode itself (langgraph-prebuilt 1.1.3 tool_node.py: a clear ValueError).
UPDATES = {
    k: v for k, v in COMMAND_UPDATES.items() if k not in ("tool-message", "update-as-pairs")
}


def seen_by(model: ScriptedChatModel) -> str:
    return "\n".join(str(m.content) for c in model.calls for m in c)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", list(UPDATES))
async def test_command_update_judged_by_the_middleware(guard, name, is_async):
    @tool
    def lookup(query: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Look something up and update the conversation."""
        return Command(update=UPDATES[name](tool_call_id))

    model = ScriptedChatModel(script=[tool_call("lookup", {"query": "weather"}), SAFE_ANSWER])
    mw = Qwen3GuardMiddleware(guard, exit_behavior="replace", violation_message="BLOCKED {stage}")
    agent = create_agent(model, tools=[lookup], middleware=[mw])
    state = {"messages": [HumanMessage(SAFE_QUESTION)]}
    out = await agent.ainvoke(state) if is_async else agent.invoke(state)
    assert not has_unsafe(seen_by(model))
    assert not has_unsafe("\n".join(str(m.content) for m in out["messages"]))
    assert "notes" not in out
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_msg.content == "BLOCKED tool result"


def _spy(guard, monkeypatch, seen: list[tuple[str, Surface]]) -> None:
    real = type(guard).screen_batch

    def spy(self, items, **kw):
        seen.extend((conv[-1]["content"], Surface(s)) for conv, s in items if conv)
        return real(self, items, **kw)

    monkeypatch.setattr(type(guard), "screen_batch", spy)


@pytest.mark.parametrize("stream_output", [True, False])
def test_a_tool_call_is_judged_once(gen_guard, monkeypatch, stream_output):
    runs: list[str] = []

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        runs.append(query)
        return "It is sunny and warm today."

    seen: list[tuple[str, Surface]] = []
    _spy(gen_guard, monkeypatch, seen)
    model = ScriptedChatModel(
        script=[tool_call("lookup", {"query": "weather in Paris"}), SAFE_ANSWER]
    )
    mw = Qwen3GuardMiddleware(gen_guard, stream_output=stream_output)
    agent = create_agent(model, tools=[lookup], middleware=[mw])
    agent.invoke({"messages": [HumanMessage(SAFE_QUESTION)]})
    assert runs == ["weather in Paris"]
    calls = [t for t, s in seen if s is Surface.TOOL_CALL]
    # judged with the answer (by the middleware, or by the guarded chat model's check of the
    # streamed tool calls); not a second time before the tool runs
    assert calls == ['lookup({"query": "weather in Paris"})']


class Rewrite(AgentMiddleware[Any, Any]):
    """A middleware outside the guard that changes a tool call's arguments."""

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        call = {**request.tool_call, "args": {"query": UNSAFE_QUESTION}}
        return handler(request.override(tool_call=call))


def test_a_tool_call_changed_on_its_way_is_judged_again(gen_guard):
    runs: list[str] = []

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        runs.append(query)
        return "It is sunny and warm today."

    model = ScriptedChatModel(
        script=[tool_call("lookup", {"query": "weather in Paris"}), SAFE_ANSWER]
    )
    mw = Qwen3GuardMiddleware(gen_guard, exit_behavior="end", violation_message="BLOCKED {stage}")
    agent = create_agent(model, tools=[lookup], middleware=[Rewrite(), mw])
    out = agent.invoke({"messages": [HumanMessage(SAFE_QUESTION)]})
    assert runs == []
    assert out["messages"][-1].content == "BLOCKED tool call"
