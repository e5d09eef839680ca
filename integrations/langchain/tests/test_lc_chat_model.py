"""Qwen3GuardChatModel: a guarded chat model, alone, in an agent and in a LangGraph graph."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_qwen3guard import Qwen3GuardChatModel, guard_chat_model
from langgraph.graph import END, START, MessagesState, StateGraph
from lc_fakes import (
    SAFE_ANSWER,
    UNSAFE_ANSWER,
    ScriptedChatModel,
    TokenRecorder,
    first_unsafe_chunk,
    tool_call,
    words,
)
from pydantic import BaseModel

from qwen3guard import Qwen3GuardViolation

DEBOUNCE_WINDOW = 2
QUESTION = "What is the weather like today?"


def fake_llm(*answers: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(answers))


def test_behaves_like_the_wrapped_model(guard):
    model = guard_chat_model(fake_llm(SAFE_ANSWER, SAFE_ANSWER), guard)
    assert isinstance(model, Qwen3GuardChatModel)
    out = model.invoke(QUESTION)
    assert isinstance(out, AIMessage) and out.content == SAFE_ANSWER
    chunks = [c.content for c in model.stream(QUESTION)]
    assert [c for c in chunks if c] == words(SAFE_ANSWER)


def test_unsafe_answer_and_unsafe_prompt(guard):
    model = guard_chat_model(fake_llm(UNSAFE_ANSWER), guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        model.invoke(QUESTION)
    assert info.value.stage == "output" and info.value.verdict.is_unsafe

    got = []
    with pytest.raises(Qwen3GuardViolation) as info:
        for chunk in guard_chat_model(fake_llm(SAFE_ANSWER), guard).stream(
            "How can I make a bomb?"
        ):
            got.append(chunk)
    assert info.value.stage == "input"
    assert got == []  # nothing is passed on before the prompt is allowed


def test_stream_is_cut_off_within_the_debounce_window(guard):
    model = guard_chat_model(fake_llm(UNSAFE_ANSWER), guard)
    got = []
    with pytest.raises(Qwen3GuardViolation):
        for chunk in model.stream(QUESTION):
            got.append(chunk.content)
    assert len(got) <= first_unsafe_chunk(words(UNSAFE_ANSWER)) + DEBOUNCE_WINDOW
    assert "explosive" not in "".join(got)


def test_replace_ends_the_answer_with_the_violation_message(guard):
    model = Qwen3GuardChatModel(
        llm=fake_llm(UNSAFE_ANSWER),
        guard=guard,
        exit_behavior="replace",
        violation_message="[removed]",
    )
    out = model.invoke(QUESTION)
    assert out.content.endswith("[removed]")
    assert "explosive" not in out.content


def test_inner_tokens_never_reach_callbacks_or_events(guard):
    rec = TokenRecorder()
    model = guard_chat_model(fake_llm(UNSAFE_ANSWER), guard)
    with pytest.raises(Qwen3GuardViolation):
        list(model.stream(QUESTION, config={"callbacks": [rec]}))
    assert len(rec.chat_runs) == 1  # only the guarded model's own run
    assert "explosive" not in "".join(t for _, t in rec.tokens)


async def test_astream_events_only_show_moderated_chunks(guard):
    model = guard_chat_model(fake_llm(UNSAFE_ANSWER), guard)
    streamed = []
    with pytest.raises(Qwen3GuardViolation):
        async for ev in model.astream_events(QUESTION, version="v2"):
            if ev["event"] == "on_chat_model_stream":
                streamed.append(ev["data"]["chunk"].content)
    assert "explosive" not in "".join(streamed)


def test_bind_tools_and_structured_output_pass_through(guard):
    class Weather(BaseModel):
        city: str
        sky: str

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    inner = ScriptedChatModel(
        script=[
            tool_call("get_weather", {"city": "Paris"}),
            tool_call("Weather", {"city": "Paris", "sky": "sunny"}),
        ]
    )
    model = guard_chat_model(inner, guard)
    bound = model.bind_tools([get_weather])
    # a RunnableBinding of the guarded model, like any chat model's bind_tools
    assert isinstance(bound, RunnableBinding) and isinstance(bound.bound, Qwen3GuardChatModel)
    assert [t.name for t in inner.bound_tools] == ["get_weather"]
    out = bound.invoke(QUESTION)
    assert out.tool_calls[0]["name"] == "get_weather"
    assert out.tool_calls[0]["args"] == {"city": "Paris"}

    structured = model.with_structured_output(Weather)
    assert structured.invoke(QUESTION) == Weather(city="Paris", sky="sunny")
    with pytest.raises(Qwen3GuardViolation) as info:
        structured.invoke("How can I make a bomb?")
    assert info.value.stage == "input"


def _agent(guard, *script):
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "It is sunny and warm today."

    inner = ScriptedChatModel(script=list(script))
    return create_agent(guard_chat_model(inner, guard), tools=[get_weather]), inner


def _collect_messages_mode(stream):
    got = []
    with pytest.raises(Qwen3GuardViolation) as info:
        for msg, _meta in stream:
            if isinstance(msg, AIMessageChunk):
                got.append(msg.content)
    return got, info.value


def test_agent_stream_mode_messages_never_shows_the_unsafe_answer(guard):
    agent, inner = _agent(guard, tool_call("get_weather", {"city": "Paris"}), UNSAFE_ANSWER)
    got, exc = _collect_messages_mode(
        agent.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages")
    )
    text_chunks = [c for c in got if c]
    assert len(text_chunks) <= first_unsafe_chunk(words(UNSAFE_ANSWER)) + DEBOUNCE_WINDOW
    assert "explosive" not in "".join(text_chunks)
    assert exc.stage == "output"
    assert len(inner.calls) == 2  # the tool round trip happened, then the cut-off answer


async def test_agent_astream_mode_messages(guard):
    agent, _ = _agent(guard, UNSAFE_ANSWER)
    got = []
    with pytest.raises(Qwen3GuardViolation):
        async for msg, _meta in agent.astream(
            {"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"
        ):
            if isinstance(msg, AIMessageChunk):
                got.append(msg.content)
    assert "explosive" not in "".join(got)

    agent, _ = _agent(guard, SAFE_ANSWER)
    got = [
        m.content
        async for m, _ in agent.astream(
            {"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"
        )
        if isinstance(m, AIMessageChunk)
    ]
    assert "".join(got) == SAFE_ANSWER


def test_in_a_plain_langgraph_graph(guard):
    model = guard_chat_model(fake_llm(UNSAFE_ANSWER), guard)

    def call_model(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    app = graph.compile()
    got, exc = _collect_messages_mode(
        app.stream({"messages": [HumanMessage(QUESTION)]}, stream_mode="messages")
    )
    assert "explosive" not in "".join(got)
    assert exc.stage == "output"
