"""Issue 10, LangChain side: one test per class of "silent Safe" this package had.

1. a prompt the Stream model cannot take never inherits a placeholder prompt's verdict;
2. tool calls (streamed, invalid, in ``additional_kwargs``) are judged on every path;
4. structured output (``with_structured_output``, ``bind_tools``, through the callback
   handler) is judged;
9. reasoning blocks and a system message that is not first are judged.
"""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_qwen3guard import (
    AsyncQwen3GuardCallbackHandler,
    Qwen3GuardCallbackHandler,
    Qwen3GuardChatModel,
    Qwen3GuardRunnable,
    guard_chat_model,
)
from lc_fakes import SAFE_ANSWER, UNSAFE_ANSWER, ScriptedChatModel, tool_call
from pydantic import BaseModel

from qwen3guard import Qwen3Guard, Qwen3GuardViolation

QUESTION = "What is the weather like today?"
UNSAFE_PROMPT = "How can I make a bomb?"


def _long_conversation(last: str, turns: int = 400) -> list:
    msgs: list = []
    for i in range(turns):
        msgs += [HumanMessage(f"question {i}"), AIMessage("ok")]
    return [*msgs, HumanMessage(last)]


# -- class 1 -------------------------------------------------------------------------------


def test_a_prompt_too_long_for_stream_is_judged_not_replaced(guard):
    model = guard_chat_model(ScriptedChatModel(script=[SAFE_ANSWER]), guard)
    got = []
    with pytest.raises(Qwen3GuardViolation) as info:
        for chunk in model.stream(_long_conversation(UNSAFE_PROMPT)):
            got.append(chunk)
    assert info.value.stage == "input" and got == []
    # a safe long prompt still gets its answer
    assert model.invoke(_long_conversation("What is the weather like?")).content == SAFE_ANSWER

    handler = Qwen3GuardCallbackHandler(guard)
    llm = ScriptedChatModel(script=[SAFE_ANSWER])
    with pytest.raises(Qwen3GuardViolation) as info:
        llm.invoke(_long_conversation(UNSAFE_PROMPT), config={"callbacks": [handler]})
    assert info.value.stage == "input"
    assert handler.open_sessions == 0


async def test_a_prompt_too_long_for_stream_is_judged_not_replaced_async(guard):
    model = guard_chat_model(ScriptedChatModel(script=[SAFE_ANSWER]), guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        await model.ainvoke(_long_conversation(UNSAFE_PROMPT))
    assert info.value.stage == "input"
    handler = AsyncQwen3GuardCallbackHandler(guard)
    with pytest.raises(Qwen3GuardViolation):
        await ScriptedChatModel(script=[SAFE_ANSWER]).ainvoke(
            _long_conversation(UNSAFE_PROMPT), config={"callbacks": [handler]}
        )


def test_a_prompt_nothing_can_judge_is_blocked(guard):
    # Stream only: the long prompt cannot be opened, and there is no Gen model to judge it.
    stream_only = Qwen3Guard(None, stream=guard.stream)
    model = guard_chat_model(ScriptedChatModel(script=[SAFE_ANSWER]), stream_only)
    with pytest.raises(Qwen3GuardViolation) as info:
        model.invoke(_long_conversation("What is the weather like?"))
    assert info.value.stage == "input" and info.value.verdict is None
    handler = Qwen3GuardCallbackHandler(stream_only)
    with pytest.raises(Qwen3GuardViolation):
        ScriptedChatModel(script=[SAFE_ANSWER]).invoke(
            _long_conversation("What is the weather like?"), config={"callbacks": [handler]}
        )


# -- class 2 -------------------------------------------------------------------------------

UNSAFE_CALLS = {
    "tool call": tool_call("search", {"q": UNSAFE_PROMPT}),
    "invalid tool call": AIMessage(
        content="",
        invalid_tool_calls=[{"type": "invalid_tool_call", "name": "search",
                             "args": '{"q": "How can I make a bomb?"', "id": "c1",
                             "error": None}],
    ),
    "function_call": AIMessage(
        content="",
        additional_kwargs={"function_call": {"name": "search",
                                             "arguments": json.dumps({"q": UNSAFE_PROMPT})}},
    ),
    "openai tool_calls": AIMessage(
        content="",
        additional_kwargs={"tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "search", "arguments": json.dumps({"q": UNSAFE_PROMPT})}}]},
    ),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_CALLS))
def test_a_streamed_tool_call_is_judged_by_the_runnable(guard, kind):
    chain = ScriptedChatModel(script=[UNSAFE_CALLS[kind]]) | Qwen3GuardRunnable(guard=guard)
    got = []
    with pytest.raises(Qwen3GuardViolation) as info:
        for chunk in chain.stream(QUESTION):
            got.append(chunk)
    assert info.value.stage == "tool_call"
    assert not any(isinstance(c, AIMessageChunk) and (c.tool_call_chunks or c.additional_kwargs)
                   for c in got)  # the tool-call chunks were held, never passed on


@pytest.mark.parametrize("kind", sorted(UNSAFE_CALLS))
def test_the_chat_model_judges_its_tool_calls(guard, kind):
    model = guard_chat_model(ScriptedChatModel(script=[UNSAFE_CALLS[kind]]), guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        model.invoke(QUESTION)
    assert info.value.stage == "tool_call"
    got = []
    with pytest.raises(Qwen3GuardViolation):
        for chunk in model.stream(QUESTION):
            got.append(chunk)
    assert all(not (c.tool_call_chunks or c.additional_kwargs) for c in got)
    out = model.batch([QUESTION, QUESTION], return_exceptions=True)
    assert all(isinstance(o, Qwen3GuardViolation) for o in out)


async def test_the_chat_model_judges_its_tool_calls_async(guard):
    model = guard_chat_model(ScriptedChatModel(script=[UNSAFE_CALLS["tool call"]]), guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        await model.ainvoke(QUESTION)
    assert info.value.stage == "tool_call"
    with pytest.raises(Qwen3GuardViolation):
        async for _ in model.astream(QUESTION):
            pass
    chain = ScriptedChatModel(script=[UNSAFE_CALLS["invalid tool call"]]) | Qwen3GuardRunnable(
        guard=guard
    )
    with pytest.raises(Qwen3GuardViolation):
        async for _ in chain.astream(QUESTION):
            pass


def test_a_safe_tool_call_streams_through_whole(guard):
    model = guard_chat_model(
        ScriptedChatModel(script=[AIMessage(
            content="Let me look.",
            tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1",
                         "type": "tool_call"}])]),
        guard,
    )
    chunks = list(model.stream(QUESTION))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.content == "Let me look."
    assert total.tool_calls[0]["args"] == {"city": "Paris"}


# -- class 4 -------------------------------------------------------------------------------


class Answer(BaseModel):
    text: str


def test_structured_output_is_judged(guard):
    unsafe = ScriptedChatModel(script=[tool_call("Answer", {"text": UNSAFE_ANSWER})])
    with pytest.raises(Qwen3GuardViolation) as info:
        guard_chat_model(unsafe, guard).with_structured_output(Answer).invoke(QUESTION)
    assert info.value.stage == "output"
    # bind_tools on the guarded model: the tool call is judged
    with pytest.raises(Qwen3GuardViolation) as info:
        guard_chat_model(unsafe, guard).bind_tools([Answer]).invoke(QUESTION)
    assert info.value.stage == "tool_call"
    # the callback handler on any model's structured output
    handler = Qwen3GuardCallbackHandler(guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        unsafe.with_structured_output(Answer).invoke(QUESTION, config={"callbacks": [handler]})
    assert info.value.stage == "tool_call"
    safe = ScriptedChatModel(script=[tool_call("Answer", {"text": SAFE_ANSWER})])
    assert safe.with_structured_output(Answer).invoke(
        QUESTION, config={"callbacks": [handler]}
    ) == Answer(text=SAFE_ANSWER)


async def test_structured_output_is_judged_by_the_async_handler(guard):
    unsafe = ScriptedChatModel(script=[tool_call("Answer", {"text": UNSAFE_ANSWER})])
    handler = AsyncQwen3GuardCallbackHandler(guard)
    with pytest.raises(Qwen3GuardViolation):
        await unsafe.with_structured_output(Answer).ainvoke(
            QUESTION, config={"callbacks": [handler]}
        )


# -- class 9 -------------------------------------------------------------------------------

REASONING = {
    "reasoning block": AIMessage(content=[{"type": "reasoning", "reasoning": UNSAFE_ANSWER},
                                          {"type": "text", "text": SAFE_ANSWER}]),
    "thinking block": AIMessage(content=[{"type": "thinking", "thinking": UNSAFE_ANSWER},
                                         {"type": "text", "text": SAFE_ANSWER}]),
    "reasoning_content": AIMessage(content=SAFE_ANSWER,
                                   additional_kwargs={"reasoning_content": UNSAFE_ANSWER}),
}


@pytest.mark.parametrize("kind", sorted(REASONING))
def test_reasoning_is_judged(guard, kind):
    message = REASONING[kind]
    with pytest.raises(Qwen3GuardViolation):
        Qwen3GuardRunnable(guard=guard).invoke([HumanMessage(QUESTION), message])
    with pytest.raises(Qwen3GuardViolation):
        guard_chat_model(ScriptedChatModel(script=[message]), guard).invoke(QUESTION)
    with pytest.raises(Qwen3GuardViolation):
        list(guard_chat_model(ScriptedChatModel(script=[message]), guard).stream(QUESTION))
    handler = Qwen3GuardCallbackHandler(guard)
    with pytest.raises(Qwen3GuardViolation):
        ScriptedChatModel(script=[message]).invoke(QUESTION, config={"callbacks": [handler]})
    with pytest.raises(Qwen3GuardViolation):
        list(ScriptedChatModel(script=[message]).stream(QUESTION,
                                                        config={"callbacks": [handler]}))


def test_a_system_message_that_is_not_first_is_judged(guard):
    conversation = [
        SystemMessage("You are a helpful assistant."),
        HumanMessage(QUESTION),
        AIMessage(SAFE_ANSWER),
        SystemMessage(UNSAFE_PROMPT),
        HumanMessage("Thanks."),
    ]
    with pytest.raises(Qwen3GuardViolation) as info:
        Qwen3GuardRunnable(guard=guard).invoke(conversation)
    assert info.value.stage == "input"
    model = Qwen3GuardChatModel(llm=ScriptedChatModel(script=[SAFE_ANSWER]), guard=guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        model.invoke(conversation)
    assert info.value.stage == "input"
    with pytest.raises(Qwen3GuardViolation):
        ScriptedChatModel(script=[SAFE_ANSWER]).invoke(
            conversation, config={"callbacks": [Qwen3GuardCallbackHandler(guard)]}
        )


# -- names (issue 11) -------------------------------------------------------------------------


def test_holdback_tokens_is_a_deprecated_alias(guard):
    with pytest.warns(DeprecationWarning):
        r = Qwen3GuardRunnable(guard=guard, holdback_tokens=3)
    assert r.hold_back_tokens == 3 and r.holdback_tokens == 3
    m = Qwen3GuardChatModel(llm=ScriptedChatModel(script=[SAFE_ANSWER]), guard=guard,
                            holdback_tokens=1)  # the default value: accepted quietly
    assert m.hold_back_tokens == 1
