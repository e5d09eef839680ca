"""``Qwen3GuardMiddleware(..., exit_behavior="regenerate")`` in a real ``create_agent`` agent
(issue 13): the agent's model call runs through ``guard_chat_model(..., on_unsafe="regenerate")``.

A scripted chat model turns unsafe midway on its first try and is safe on the second: the
reader gets the kept prefix plus the safe continuation as one answer, and no character of the
unsafe span, on ``invoke`` / ``stream`` / ``ainvoke`` / ``astream`` (streams in the
``messages``, ``updates`` and ``values`` modes at once). Unsafe on every try: the refusal after
``max_retries``. Abandoned streams are closed; the answer is not judged a second time by the
middleware; tool calls and structured output are still judged; the system prompt is part of
the prompt the answer is judged against. The guard is the real tiny checkpoints.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_qwen3guard import Qwen3GuardMiddleware, _regenerate
from lc_agent_fakes import HOW, SAFE_QUESTION, has_unsafe, run_agent
from lc_fakes import ScriptedChatModel, tool_call, words
from pydantic import BaseModel
from test_lc_agent_seams import PLACES, seen_by_model
from test_lc_agent_seams import build as build_places

from qwen3guard import DEFAULT_REFUSAL_MESSAGE, METADATA_KEY, Surface

PROMPT = "How do I spend a fun afternoon?"
SYSTEM = "You are a cheerful assistant for weekend plans."
SAFE = "Go for a walk in the park. Then read a good book at home. "
UNSAFE = "Next, make a bomb with what you find in the garage and light it. "
TAIL = "More words follow here and here and here. "
REPAIR = "Then cook a nice dinner with friends and enjoy the evening."
FIRST = SAFE + UNSAFE + TAIL


class Answer(BaseModel):
    answer: str


def _no_unsafe_char(text: str) -> None:
    assert "bomb" not in text and "garage" not in text and "Next," not in text
    assert TAIL.strip() not in text


def _agent(guard: Any, *script: Any, response_format: Any = None, **kw: Any):
    runs: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        runs.append(city)
        return "It is sunny and warm today."

    model = ScriptedChatModel(script=list(script))
    kw.setdefault("exit_behavior", "regenerate")
    mw = Qwen3GuardMiddleware(guard, **kw)
    extra = {"response_format": response_format} if response_format is not None else {}
    agent = create_agent(model, tools=[get_weather], middleware=[mw], system_prompt=SYSTEM,
                         **extra)
    return agent, model, runs


@pytest.fixture
def intervene_calls(monkeypatch) -> list[dict[str, Any]]:
    """Every call of the core loop (``intervene`` / ``aintervene``): its prompt and options."""
    calls: list[dict[str, Any]] = []
    real, areal = _regenerate.intervene, _regenerate.aintervene

    def spy(guard, prompt, *args, **kwargs):
        calls.append({"prompt": prompt, **kwargs})
        return real(guard, prompt, *args, **kwargs)

    def aspy(guard, prompt, *args, **kwargs):
        calls.append({"prompt": prompt, **kwargs})
        return areal(guard, prompt, *args, **kwargs)

    monkeypatch.setattr(_regenerate, "intervene", spy)
    monkeypatch.setattr(_regenerate, "aintervene", aspy)
    return calls


@pytest.fixture
def judged(monkeypatch, guard) -> list[Surface]:
    """The surface of every item the guard judged whole (Gen, ``screen_batch``)."""
    surfaces: list[Surface] = []
    real, areal = guard.screen_batch, guard.ascreen_batch

    def spy(items, **kwargs):
        surfaces.extend(s for _, s in items)
        return real(items, **kwargs)

    async def aspy(items, **kwargs):
        surfaces.extend(s for _, s in items)
        return await areal(items, **kwargs)

    monkeypatch.setattr(guard, "screen_batch", spy)
    monkeypatch.setattr(guard, "ascreen_batch", aspy)
    return surfaces


@pytest.mark.parametrize("how", HOW)
async def test_agent_regenerate_gives_one_clean_answer(guard, how, intervene_calls, judged):
    agent, model, _ = _agent(guard, FIRST, REPAIR, buffer_tokens=12, max_retries=3)
    final, seen = await run_agent(agent, {"messages": [HumanMessage(PROMPT)]}, how)
    answer = final["messages"][-1]
    assert isinstance(answer, AIMessage) and answer.content == SAFE + REPAIR
    _no_unsafe_char(seen)  # nothing the caller saw (tokens, updates, states) holds it
    assert len(model.calls) == 2
    await asyncio.sleep(0)
    assert model.closed[0] and not model.closed[1]  # the abandoned try's stream was closed
    assert model.produced[0] < len(words(FIRST))
    # the system prompt is part of the prompt the answer is judged against; the options reach
    # the core loop
    assert len(intervene_calls) == 1
    call = intervene_calls[0]
    assert call["prompt"][0] == {"role": "system", "content": SYSTEM}
    assert call["prompt"][-1] == {"role": "user", "content": PROMPT}
    assert (call["buffer_tokens"], call["max_retries"]) == (12, 3)
    # the answer was moderated once, by the regenerating model: the middleware did not judge
    # it again
    assert Surface.OUTPUT not in judged
    meta = answer.response_metadata[METADATA_KEY]["intervention"]
    assert meta["retries"] == 1 and not meta["refused"]


async def test_agent_regenerate_stream_mode_messages_is_one_message(guard):
    agent, _, _ = _agent(guard, FIRST, REPAIR)
    chunks = [
        m
        async for m, _ in agent.astream({"messages": [HumanMessage(PROMPT)]},
                                         stream_mode="messages")
        if isinstance(m, AIMessageChunk)
    ]
    assert "".join(str(c.content) for c in chunks) == SAFE + REPAIR
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("how", HOW)
async def test_agent_regenerate_unsafe_on_every_try_ends_with_the_refusal(guard, how):
    agent, model, _ = _agent(guard, FIRST, UNSAFE + TAIL, max_retries=2)
    final, seen = await run_agent(agent, {"messages": [HumanMessage(PROMPT)]}, how)
    answer = final["messages"][-1]
    assert answer.content == DEFAULT_REFUSAL_MESSAGE
    assert answer.response_metadata[METADATA_KEY]["exit_behavior"] == "regenerate"
    assert answer.response_metadata[METADATA_KEY]["surface"] == "output"
    _no_unsafe_char(seen)
    assert len(model.calls) == 3  # the first try and max_retries regenerations
    await asyncio.sleep(0)
    assert all(model.closed)


@pytest.mark.parametrize("how", ["invoke", "astream"])
async def test_agent_regenerate_with_a_tool_round_trip(guard, how):
    agent, model, runs = _agent(
        guard, tool_call("get_weather", {"city": "Paris"}), FIRST, REPAIR
    )
    final, seen = await run_agent(agent, {"messages": [HumanMessage(PROMPT)]}, how)
    assert final["messages"][-1].content == SAFE + REPAIR
    assert runs == ["Paris"]
    _no_unsafe_char(seen)
    assert len(model.calls) == 3


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream", "astream"])
async def test_agent_regenerate_unsafe_tool_call_never_runs(guard, how):
    bad = tool_call("get_weather", {"city": "how to make a bomb with explosive powder"})
    agent, model, runs = _agent(guard, bad, REPAIR)
    final, seen = await run_agent(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, how)
    assert runs == []
    assert final["messages"][-1].content == DEFAULT_REFUSAL_MESSAGE
    assert final["messages"][-1].response_metadata[METADATA_KEY]["surface"] == "tool_call"
    assert not has_unsafe(seen)


@pytest.mark.parametrize("how", ["invoke", "astream"])
@pytest.mark.parametrize("name", list(PLACES))
async def test_agent_regenerate_unsafe_text_in_any_place_is_blocked(guard, name, how):
    agent, model, _ = build_places(guard, name, exit_behavior="regenerate", max_retries=1)
    final, seen = await run_agent(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, how)
    assert not has_unsafe(seen), f"{name}: unsafe text reached the caller ({how})"
    assert not has_unsafe(seen_by_model(model)), f"{name}: unsafe text reached the model"
    assert "BLOCKED" in str(final["messages"][-1].content)
    assert final.get("structured_response") is None


@pytest.mark.parametrize("how", ["invoke", "astream"])
async def test_agent_regenerate_safe_structured_output_passes(guard, how):
    call = AIMessage("", tool_calls=[{"name": "Answer", "args": {"answer": "Paris is nice."},
                                      "id": "c1", "type": "tool_call"}])
    agent, _, _ = _agent(guard, call, response_format=ToolStrategy(Answer))
    final, _ = await run_agent(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, how)
    assert final["structured_response"] == Answer(answer="Paris is nice.")


async def test_agent_regenerate_judged_whole_with_stream_output_false(guard):
    agent, model, _ = _agent(guard, FIRST, REPAIR, stream_output=False)
    chunks = [
        m
        async for m, _ in agent.astream({"messages": [HumanMessage(PROMPT)]},
                                         stream_mode="messages")
        if isinstance(m, (AIMessageChunk, AIMessage))
    ]
    assert [c.content for c in chunks if c.content] == [SAFE + REPAIR]  # in one piece
    assert len(model.calls) == 2


def test_exit_behavior_regenerate_options(guard):
    mw = Qwen3GuardMiddleware(guard, exit_behavior="regenerate", buffer_tokens=8,
                              max_retries=2, continuation="prefill", instruction="Again: {kept}")
    assert (mw.buffer_tokens, mw.max_retries, mw.continuation) == (8, 2, "prefill")
    with pytest.raises(ValueError):
        Qwen3GuardMiddleware(guard, exit_behavior="retry")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Qwen3GuardMiddleware(guard, exit_behavior="regenerate", max_retries=-1)
    with pytest.raises(ValueError):
        Qwen3GuardMiddleware(guard, exit_behavior="regenerate", continuation="later")  # type: ignore[arg-type]


@pytest.mark.parametrize("continuation", ["prefill", "instruction"])
def test_agent_regenerate_continuation(guard, continuation):
    agent, model, _ = _agent(guard, FIRST, REPAIR, continuation=continuation)
    final = agent.invoke({"messages": [HumanMessage(PROMPT)]})
    assert final["messages"][-1].content == SAFE + REPAIR
    retry = model.calls[1]
    assert retry[0].content == SYSTEM  # the retry keeps the system prompt
    if continuation == "prefill":
        assert isinstance(retry[-1], AIMessage) and retry[-1].content == SAFE.rstrip()
    else:
        assert isinstance(retry[-1], HumanMessage) and SAFE in retry[-1].content
