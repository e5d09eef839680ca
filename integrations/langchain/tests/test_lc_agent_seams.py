"""Attack the seams (issue 10, classes 4, 5 and the property-style test): for every place text
can hide in an agent's messages, an unsafe string placed there is blocked on ``invoke``,
``stream``, ``ainvoke`` and ``astream`` of a real ``create_agent`` agent driven by a scripted
tool-calling model, and never reaches the caller nor the model.

Places: plain content, text / reasoning / thinking content blocks, tool calls, invalid tool
calls, ``additional_kwargs`` (``function_call``, ``tool_calls``, ``reasoning_content``), a
tool's result, a tool's ``Command`` update, structured output (``ToolStrategy`` and
``ProviderStrategy``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.tools import InjectedToolCallId, tool
from langchain_qwen3guard import Qwen3GuardMiddleware
from langgraph.types import Command
from lc_agent_fakes import (
    HOW,
    SAFE_QUESTION,
    UNSAFE_QUESTION,
    UNSAFE_TEXT,
    BlockScriptedChatModel,
    has_unsafe,
    run_agent,
)
from lc_fakes import SAFE_ANSWER
from pydantic import BaseModel

from qwen3guard import Qwen3GuardViolation


class Answer(BaseModel):
    answer: str


def _call(name: str, args: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def _openai_call(args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "call_9",
        "type": "function",
        "function": {"name": "lookup", "arguments": json.dumps(args)},
    }


SAFE_CALL = _call("lookup", {"query": "weather in Paris"})

# name -> (script of the model, what the tool returns, response_format)
PLACES: dict[str, tuple[list[Any], str, Any]] = {
    "content": ([AIMessage(UNSAFE_TEXT)], "sunny", None),
    "text-block": ([AIMessage(content=[{"type": "text", "text": UNSAFE_TEXT}])], "sunny", None),
    "reasoning-block": (
        [AIMessage(content=[{"type": "reasoning", "reasoning": UNSAFE_TEXT}, "All done."])],
        "sunny",
        None,
    ),
    "thinking-block": (
        [AIMessage(content=[{"type": "thinking", "thinking": UNSAFE_TEXT}, "All done."])],
        "sunny",
        None,
    ),
    "tool-call": (
        [AIMessage("", tool_calls=[_call("lookup", {"query": UNSAFE_QUESTION})]), SAFE_ANSWER],
        "sunny",
        None,
    ),
    "tool-call-unknown-tool": (
        [AIMessage("", tool_calls=[_call("nosuchtool", {"q": UNSAFE_TEXT})]), SAFE_ANSWER],
        "sunny",
        None,
    ),
    "invalid-tool-call": (
        [
            AIMessage(
                "",
                invalid_tool_calls=[
                    {
                        "name": "lookup",
                        "args": '{"query": "' + UNSAFE_QUESTION,
                        "id": "call_2",
                        "error": "bad json",
                        "type": "invalid_tool_call",
                    }
                ],
            ),
            SAFE_ANSWER,
        ],
        "sunny",
        None,
    ),
    "kwargs-function-call": (
        [
            AIMessage(
                "All done.",
                additional_kwargs={
                    "function_call": {
                        "name": "lookup",
                        "arguments": json.dumps({"query": UNSAFE_QUESTION}),
                    }
                },
            )
        ],
        "sunny",
        None,
    ),
    "kwargs-tool-calls": (
        [
            AIMessage(
                "All done.",
                additional_kwargs={"tool_calls": [_openai_call({"query": UNSAFE_QUESTION})]},
            )
        ],
        "sunny",
        None,
    ),
    "kwargs-reasoning-content": (
        [AIMessage("All done.", additional_kwargs={"reasoning_content": UNSAFE_TEXT})],
        "sunny",
        None,
    ),
    "tool-result": ([AIMessage("", tool_calls=[SAFE_CALL]), SAFE_ANSWER], UNSAFE_TEXT, None),
    "command-update": (
        [AIMessage("", tool_calls=[_call("commander", {"query": "weather"})]), SAFE_ANSWER],
        "sunny",
        None,
    ),
    "tool-strategy": (
        [AIMessage("", tool_calls=[_call("Answer", {"answer": UNSAFE_TEXT})])],
        "sunny",
        ToolStrategy(Answer),
    ),
    "provider-strategy": (
        [AIMessage(json.dumps({"answer": UNSAFE_TEXT}))],
        "sunny",
        ProviderStrategy(Answer),
    ),
}


def build(guard, name: str, **kw):
    script, result, response_format = PLACES[name]
    runs: list[str] = []

    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        runs.append(query)
        return UNSAFE_TEXT if result == UNSAFE_TEXT else "It is sunny and warm today."

    @tool
    def commander(query: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Look something up and update the conversation."""
        runs.append(query)
        return Command(update={"messages": [ToolMessage(UNSAFE_TEXT, tool_call_id=tool_call_id)]})

    model = BlockScriptedChatModel(script=list(script))
    mw = Qwen3GuardMiddleware(guard, violation_message="BLOCKED {stage}", **kw)
    extra = {"response_format": response_format} if response_format is not None else {}
    agent = create_agent(model, tools=[lookup, commander], middleware=[mw], **extra)
    return agent, model, runs


def seen_by_model(model) -> str:
    return "\n".join(json.dumps(convert_to_openai_messages(c)) for c in model.calls)


STREAM_OUTPUT = pytest.mark.parametrize(
    "stream_output", [True, False], ids=["moderated-while-streaming", "judged-after-the-call"]
)


@STREAM_OUTPUT
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", list(PLACES))
async def test_unsafe_text_in_any_place_is_blocked(guard, name, how, stream_output):
    agent, model, _ = build(guard, name, exit_behavior="end", stream_output=stream_output)
    final, seen = await run_agent(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, how)
    assert not has_unsafe(seen), f"{name}: unsafe text reached the caller ({how})"
    assert not has_unsafe(seen_by_model(model)), f"{name}: unsafe text reached the model"
    assert "BLOCKED" in str(final["messages"][-1].content)
    assert final.get("structured_response") is None


@STREAM_OUTPUT
@pytest.mark.parametrize("how", ["invoke", "astream"])
@pytest.mark.parametrize("name", list(PLACES))
async def test_unsafe_text_in_any_place_raises(guard, name, how, stream_output):
    agent, model, _ = build(guard, name, exit_behavior="error", stream_output=stream_output)
    with pytest.raises(Qwen3GuardViolation):
        await run_agent(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, how)
    assert not has_unsafe(seen_by_model(model))


@pytest.mark.parametrize("how", HOW)
async def test_safe_structured_output_passes(guard, how):
    model = BlockScriptedChatModel(
        script=[AIMessage("", tool_calls=[_call("Answer", {"answer": "Paris is in France."})])]
    )
    agent = create_agent(
        model, tools=[], middleware=[Qwen3GuardMiddleware(guard)], response_format=Answer
    )
    final, _ = await run_agent(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, how)
    assert final["structured_response"] == Answer(answer="Paris is in France.")


def test_tool_artifacts_do_not_reach_the_model(guard):
    """A tool's artifact (``response_format="content_and_artifact"``) is for the application:
    no chat model integration sends ``ToolMessage.artifact`` to the LLM (LangChain's
    ``convert_to_openai_messages`` keeps ``content`` only), so the middleware does not judge it
    (documented in the middleware); the content the model reads is judged."""

    @tool(response_format="content_and_artifact")
    def lookup(query: str) -> tuple[str, dict[str, str]]:
        """Look something up."""
        return "It is sunny and warm today.", {"raw": UNSAFE_TEXT}

    model = BlockScriptedChatModel(script=[AIMessage("", tool_calls=[SAFE_CALL]), SAFE_ANSWER])
    agent = create_agent(model, tools=[lookup], middleware=[Qwen3GuardMiddleware(guard)])
    out = agent.invoke({"messages": [HumanMessage(SAFE_QUESTION)]})
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_msg.artifact == {"raw": UNSAFE_TEXT}  # the application still gets it
    assert not has_unsafe(seen_by_model(model))
    assert out["messages"][-1].content == SAFE_ANSWER


# -- the input: wherever the client puts text, it is judged before the model reads it -----------

INPUT_PLACES: dict[str, list[Any]] = {
    "human-text-block": [HumanMessage(content=[{"type": "text", "text": UNSAFE_QUESTION}])],
    "chat-message-user": [ChatMessage(role="user", content=UNSAFE_QUESTION)],
    "dict-user": [{"role": "user", "content": UNSAFE_QUESTION}],
    "system-message": [SystemMessage(UNSAFE_TEXT), HumanMessage(SAFE_QUESTION)],
    "first-of-two": [HumanMessage(UNSAFE_QUESTION), HumanMessage("thanks")],
    "injected-ai-tool-call": [
        HumanMessage("hi"),
        AIMessage("", tool_calls=[_call("lookup", {"query": UNSAFE_QUESTION})]),
        HumanMessage("go on"),
    ],
    "injected-ai-function-call": [
        HumanMessage("hi"),
        AIMessage(
            "ok",
            additional_kwargs={
                "function_call": {"name": "lookup", "arguments": json.dumps({"q": UNSAFE_TEXT})}
            },
        ),
        HumanMessage("go on"),
    ],
    "injected-tool-message": [
        HumanMessage("hi"),
        AIMessage("", tool_calls=[SAFE_CALL]),
        ToolMessage(UNSAFE_TEXT, tool_call_id="call_1"),
        HumanMessage("go on"),
    ],
    "image-block": [
        HumanMessage(
            content=[
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image", "url": "https://example.com/a.png"},
            ]
        )
    ],
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", list(INPUT_PLACES))
async def test_unsafe_input_in_any_place_is_blocked(guard, name, how):
    agent, model, runs = build(guard, "content", exit_behavior="end")
    final, _ = await run_agent(agent, {"messages": INPUT_PLACES[name]}, how)
    assert model.calls == [] and runs == []
    stage = "tool result" if name == "injected-tool-message" else "request"
    assert final["messages"][-1].content == f"BLOCKED {stage}"
    # the blocked messages are replaced in the state: a later turn does not show them
    assert not has_unsafe("\n".join(str(m) for m in final["messages"]))
    if name == "image-block":  # a shape the guard cannot read: blocked, and says why
        meta = final["messages"][-1].response_metadata["qwen3guard"]
        assert "image" in meta["error"] and "cannot be judged" in meta["reason"]
