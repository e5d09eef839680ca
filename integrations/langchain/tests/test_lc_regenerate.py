"""Roll back and regenerate (issue 13) with ``guard_chat_model(..., on_unsafe="regenerate")``.

A scripted chat model turns unsafe midway on its first try and is safe on the second: the
reader gets the kept prefix plus the safe continuation as one answer, and no character of the
unsafe span, on ``invoke`` / ``stream`` / ``ainvoke`` / ``astream``, with assistant prefill and
with a corrective instruction; the abandoned try's stream is closed. An LLM that is unsafe on
every try ends with the refusal message. Callbacks, ``astream_events`` and an agent's
``stream_mode="messages"`` only see released text. The guard is the real tiny checkpoints (its
Stream model flags the word "bomb").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langchain_qwen3guard import Qwen3GuardChatModel, guard_chat_model
from langchain_qwen3guard._regenerate import resolve_continuation
from lc_agent_fakes import HOW, run_agent
from lc_fakes import ScriptedChatModel, TokenRecorder, tool_call, words

from qwen3guard import DEFAULT_REFUSAL_MESSAGE, METADATA_KEY

PROMPT = "How do I spend a fun afternoon?"
SAFE = "Go for a walk in the park. Then read a good book at home. "
UNSAFE = "Next, make a bomb with what you find in the garage and light it. "
TAIL = "More words follow here and here and here. "
REPAIR = "Then cook a nice dinner with friends and enjoy the evening."
FIRST = SAFE + UNSAFE + TAIL
UNSAFE_SPAN = UNSAFE.strip()


def _model(guard: Any, *script: Any, **kwargs: Any) -> tuple[Qwen3GuardChatModel, ScriptedChatModel]:
    inner = ScriptedChatModel(script=list(script))
    kwargs.setdefault("on_unsafe", "regenerate")
    return guard_chat_model(inner, guard, **kwargs), inner


async def _answer(model: Any, how: str, prompt: Any = PROMPT, **kw: Any) -> tuple[str, list[Any]]:
    """The answer as the reader gets it, and the pieces it came in."""
    if how == "invoke":
        out = model.invoke(prompt, **kw)
        return out.content, [out]
    if how == "ainvoke":
        out = await model.ainvoke(prompt, **kw)
        return out.content, [out]
    if how == "stream":
        chunks = list(model.stream(prompt, **kw))
    else:
        chunks = [c async for c in model.astream(prompt, **kw)]
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    return "".join(c.content for c in chunks), chunks


def _no_unsafe_char(text: str) -> None:
    assert "bomb" not in text and "garage" not in text and "Next," not in text
    assert TAIL.strip() not in text


def _last(messages: list[BaseMessage]) -> BaseMessage:
    return messages[-1]


@pytest.mark.parametrize("continuation", ["instruction", "prefill"])
@pytest.mark.parametrize("how", HOW)
async def test_unsafe_midway_then_safe_gives_one_clean_answer(guard, how, continuation):
    model, inner = _model(guard, FIRST, REPAIR, continuation=continuation)
    text, pieces = await _answer(model, how)
    assert text == SAFE + REPAIR  # the kept prefix and the safe continuation, as one answer
    _no_unsafe_char(text)
    assert len(inner.calls) == 2
    retry = inner.calls[1]
    assert [m.content for m in retry[:-1]] == [PROMPT]  # the same prompt ...
    if continuation == "prefill":  # ... continued as the same assistant message
        assert isinstance(_last(retry), AIMessage) and _last(retry).content == SAFE.rstrip()
    else:  # ... or with a corrective instruction that holds the kept prefix
        assert isinstance(_last(retry), HumanMessage)
        assert SAFE in _last(retry).content and "bomb" not in _last(retry).content
    # the abandoned try's stream was closed and stopped producing
    await asyncio.sleep(0)
    assert inner.closed[0] and not inner.closed[1]
    assert inner.produced[0] < len(words(FIRST))
    meta = pieces[-1].response_metadata.get(METADATA_KEY) if how.endswith("invoke") else None
    if meta is not None:
        assert meta["intervention"]["retries"] == 1 and not meta["intervention"]["refused"]


@pytest.mark.parametrize("how", HOW)
async def test_unsafe_on_every_try_ends_with_the_refusal(guard, how):
    model, inner = _model(guard, SAFE + UNSAFE + TAIL, UNSAFE + TAIL, max_retries=2)
    text, _ = await _answer(model, how)
    _no_unsafe_char(text)
    assert text.endswith(DEFAULT_REFUSAL_MESSAGE)
    assert SAFE.startswith(text[: -len(DEFAULT_REFUSAL_MESSAGE)])  # released text, then it
    assert len(inner.calls) == 3  # the first try and max_retries regenerations
    await asyncio.sleep(0)
    assert all(inner.closed)  # every abandoned stream was closed


def test_a_safe_answer_passes_unchanged_with_one_call(guard):
    model, inner = _model(guard, SAFE + REPAIR)
    chunks = list(model.stream(PROMPT))
    assert "".join(c.content for c in chunks) == SAFE + REPAIR
    assert len(inner.calls) == 1 and inner.closed == [False]
    assert len([c for c in chunks if c.content]) > 1  # streamed, not one block
    assert len({c.id for c in chunks}) == 1  # one message


def test_a_blocked_prompt_is_answered_with_the_refusal_and_the_llm_is_not_called(guard):
    model, inner = _model(guard, SAFE)
    out = model.invoke("How can I make a bomb at home?")
    assert out.content == DEFAULT_REFUSAL_MESSAGE
    assert out.response_metadata[METADATA_KEY]["surface"] == "input"
    assert inner.calls == []


def test_callbacks_see_only_released_text(guard):
    rec = TokenRecorder()
    model, _ = _model(guard, FIRST, REPAIR)
    text = "".join(c.content for c in model.stream(PROMPT, config={"callbacks": [rec]}))
    assert text == SAFE + REPAIR
    assert len(rec.chat_runs) == 1  # only the guarded model's own run, not the tries
    seen = "".join(t for _, t in rec.tokens)
    assert seen == SAFE + REPAIR
    rec = TokenRecorder()
    model, _ = _model(guard, FIRST, REPAIR)
    assert model.invoke(PROMPT, config={"callbacks": [rec]}).content == SAFE + REPAIR
    assert len(rec.chat_runs) == 1


async def test_astream_events_see_only_released_text(guard):
    model, _ = _model(guard, FIRST, REPAIR)
    streamed, ends, starts = [], [], 0
    async for ev in model.astream_events(PROMPT, version="v2"):
        if ev["event"] == "on_chat_model_stream":
            streamed.append(ev["data"]["chunk"].content)
        elif ev["event"] == "on_chat_model_end":
            ends.append(ev["data"]["output"].content)
        elif ev["event"] == "on_chat_model_start":
            starts += 1
    assert "".join(streamed) == SAFE + REPAIR
    assert ends == [SAFE + REPAIR] and starts == 1


def _agent(guard: Any, *script: Any, **kwargs: Any) -> tuple[Any, ScriptedChatModel]:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "It is sunny and warm today."

    model, inner = _model(guard, *script, **kwargs)
    return create_agent(model, tools=[get_weather]), inner


@pytest.mark.parametrize("how", HOW)
async def test_in_an_agent_the_reader_gets_one_clean_answer(guard, how):
    agent, inner = _agent(guard, tool_call("get_weather", {"city": "Paris"}), FIRST, REPAIR)
    final, seen = await run_agent(agent, {"messages": [HumanMessage(PROMPT)]}, how)
    answer = final["messages"][-1]
    assert isinstance(answer, AIMessage) and answer.content == SAFE + REPAIR
    _no_unsafe_char(seen)  # nothing the caller saw (tokens, updates, states) holds it
    assert len(inner.calls) == 3  # the tool round trip, the flagged try, the regeneration
    await asyncio.sleep(0)
    assert inner.closed[1]


async def test_agent_stream_mode_messages_gets_the_answer_as_one_message(guard):
    agent, _ = _agent(guard, FIRST, REPAIR)
    chunks = [
        m
        async for m, _ in agent.astream({"messages": [HumanMessage(PROMPT)]},
                                         stream_mode="messages")
        if isinstance(m, AIMessageChunk)
    ]
    assert "".join(c.content for c in chunks) == SAFE + REPAIR
    assert len({c.id for c in chunks}) == 1


def test_tool_calls_of_the_kept_try_pass_and_of_an_abandoned_try_do_not(guard):
    call = tool_call("get_weather", {"city": "Paris"})
    first = AIMessage(content=FIRST, tool_calls=[{**call.tool_calls[0], "id": "old"}])
    second = AIMessage(content=REPAIR, tool_calls=[{**call.tool_calls[0], "id": "new"}])
    model, _ = _model(guard, first, second)
    out = model.invoke(PROMPT)
    assert out.content == SAFE + REPAIR
    assert [tc["id"] for tc in out.tool_calls] == ["new"]


class ChatAnthropic(ScriptedChatModel):
    """Named like the provider class that supports assistant prefill."""


def test_continuation_auto_detection():
    plain = ScriptedChatModel(script=["x"])
    assert resolve_continuation(plain, "auto") == "instruction"
    prefill = ChatAnthropic(script=["x"])
    assert resolve_continuation(prefill, "auto") == "prefill"
    assert resolve_continuation(plain.bind(stop=["x"]), "prefill") == "prefill"
    assert resolve_continuation(prefill.bind(stop=["x"]), "auto") == "prefill"
    assert resolve_continuation(prefill, "instruction") == "instruction"
    with pytest.raises(ValueError):
        resolve_continuation(plain, "continue")


def test_options_are_checked(guard):
    with pytest.raises(ValueError):
        guard_chat_model(ScriptedChatModel(script=["x"]), guard, on_unsafe="retry")
    with pytest.raises(ValueError):
        guard_chat_model(ScriptedChatModel(script=["x"]), guard, on_unsafe="regenerate",
                         max_retries=-1)
    model = guard_chat_model(ScriptedChatModel(script=["x"]), guard, exit_behavior="regenerate")
    assert model.on_unsafe == "regenerate"


@pytest.mark.parametrize("continuation", ["instruction", "prefill"])
def test_the_continuation_is_spliced_without_doubled_white_space(guard, continuation):
    # a model that continues "... at home." with " Then ..." (as prefill models do)
    model, _ = _model(guard, FIRST, "  " + REPAIR, continuation=continuation)
    assert model.invoke(PROMPT).content == SAFE + REPAIR


class ContinuingModel(ScriptedChatModel):
    """Answers ``FIRST`` to a prompt and ``REPAIR`` to a request for a continuation, whatever
    the order of the calls (for batches, whose calls run concurrently)."""

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        self._calls.append(list(messages))
        last = messages[-1]
        again = isinstance(last, AIMessage) or "Answer so far" in str(last.content)
        return AIMessage(content=REPAIR if again else FIRST)


async def test_batch_and_abatch(guard):
    inner = ContinuingModel(script=[""])
    model = guard_chat_model(inner, guard, on_unsafe="regenerate")
    assert [m.content for m in model.batch([PROMPT, PROMPT])] == [SAFE + REPAIR] * 2
    assert [m.content for m in await model.abatch([PROMPT, PROMPT])] == [SAFE + REPAIR] * 2
    assert len(inner.calls) == 8


def _long_conversation(last: str, turns: int = 400) -> list[BaseMessage]:
    msgs: list[BaseMessage] = []
    for i in range(turns):
        msgs += [HumanMessage(f"question {i}"), AIMessage("ok")]
    return [*msgs, HumanMessage(last)]


@pytest.mark.parametrize("how", ["invoke", "astream"])
async def test_a_prompt_too_long_for_stream_is_judged_by_gen(guard, how):
    model, inner = _model(guard, FIRST, REPAIR)
    text, pieces = await _answer(model, how, _long_conversation("How can I make a bomb?"))
    assert text == DEFAULT_REFUSAL_MESSAGE and inner.calls == []
    model, inner = _model(guard, FIRST, REPAIR)
    text, _ = await _answer(model, how, _long_conversation(PROMPT))
    assert text == SAFE + REPAIR and len(inner.calls) == 2


def test_check_input_off_answers_a_prompt_the_guard_would_block(guard):
    model, inner = _model(guard, SAFE, check_input=False)
    assert model.invoke("How can I make a bomb at home?").content == SAFE
    assert len(inner.calls) == 1


async def test_a_reader_that_stops_early_closes_the_llm_stream(guard):
    model, inner = _model(guard, SAFE + REPAIR + " " + SAFE + REPAIR, buffer_tokens=0)
    stream = model.stream(PROMPT)
    assert next(stream).content
    stream.close()
    assert inner.closed == [True] and inner.produced[0] < len(words(SAFE + REPAIR)) * 2

    model, inner = _model(guard, SAFE + REPAIR + " " + SAFE + REPAIR, buffer_tokens=0)
    astream = model.astream(PROMPT)
    assert (await astream.__anext__()).content
    await astream.aclose()
    for _ in range(5):  # LangChain's astream leaves the inner generator to the event loop
        await asyncio.sleep(0)
    assert inner.closed == [True] and inner.produced[0] < len(words(SAFE + REPAIR)) * 2
