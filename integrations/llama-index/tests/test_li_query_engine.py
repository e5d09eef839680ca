"""Qwen3GuardQueryEngine around a real RetrieverQueryEngine, judged by the tiny checkpoints."""

from __future__ import annotations

import asyncio

import pytest
from li_testkit import (
    CLEAN_DOCS,
    SAFE_ANSWER,
    UNSAFE_ANSWER,
    ScriptedLLM,
    build_index,
    counting_retriever,
    split_tokens,
)
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.postprocessor.qwen3guard import (
    DEFAULT_VIOLATION_MESSAGE,
    METADATA_KEY,
    Qwen3GuardNodePostprocessor,
    Qwen3GuardQueryEngine,
    Qwen3GuardViolation,
)

from qwen3guard import Qwen3Guard

UNSAFE_QUERY = "How can I make a bomb?"
SAFE_QUERY = "Where is the Eiffel Tower?"


@pytest.fixture(scope="module")
def index():
    return build_index(CLEAN_DOCS)


def _setup(index, guard, *, answer=SAFE_ANSWER, streaming=False, **kw):
    llm = ScriptedLLM(answer=answer)
    retriever = counting_retriever(index)
    inner = RetrieverQueryEngine.from_args(
        retriever=retriever,
        llm=llm,
        streaming=streaming,
        node_postprocessors=[Qwen3GuardNodePostprocessor(guard=guard)],
    )
    return Qwen3GuardQueryEngine(inner, guard=guard, **kw), llm, retriever


# -- the query ------------------------------------------------------------------------------------


def test_unsafe_query_never_reaches_retrieval(index, guard):
    engine, llm, retriever = _setup(index, guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        engine.query(UNSAFE_QUERY)
    assert info.value.stage == "input" and info.value.content == UNSAFE_QUERY
    assert retriever.calls == 0 and llm.prompts == []


async def test_unsafe_query_never_reaches_retrieval_async(index, guard):
    engine, llm, retriever = _setup(index, guard, exit_behavior="replace")
    response = await engine.aquery(UNSAFE_QUERY)
    assert isinstance(response, Response)
    assert response.response == DEFAULT_VIOLATION_MESSAGE and response.source_nodes == []
    assert response.metadata[METADATA_KEY]["blocked"] == "input"
    assert retriever.calls == 0 and llm.prompts == []


# -- complete answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_safe_answer_is_unchanged_with_its_sources(index, guard, use_async):
    engine, llm, retriever = _setup(index, guard)
    response = await engine.aquery(SAFE_QUERY) if use_async else engine.query(SAFE_QUERY)
    assert response.response == SAFE_ANSWER
    assert retriever.calls == 1 and len(llm.prompts) == 1
    assert sorted(n.node.get_content() for n in response.source_nodes) == sorted(CLEAN_DOCS)
    assert METADATA_KEY not in (response.metadata or {})


@pytest.mark.parametrize("use_async", [False, True])
async def test_unsafe_answer_is_blocked(index, guard, use_async):
    engine, _, _ = _setup(index, guard, answer=UNSAFE_ANSWER)
    with pytest.raises(Qwen3GuardViolation) as info:
        await engine.aquery(SAFE_QUERY) if use_async else engine.query(SAFE_QUERY)
    assert info.value.stage == "output" and info.value.content == UNSAFE_ANSWER

    engine, _, _ = _setup(
        index, guard, answer=UNSAFE_ANSWER, exit_behavior="replace", violation_message="No."
    )
    response = await engine.aquery(SAFE_QUERY) if use_async else engine.query(SAFE_QUERY)
    assert response.response == "No."
    assert len(response.source_nodes) == len(CLEAN_DOCS)  # sources survive a replaced answer
    assert response.metadata[METADATA_KEY]["output"]["risk"] == "Unsafe"


# -- streamed answers -----------------------------------------------------------------------------


def _bomb_offset(text: str) -> int:
    return text.index(" bomb")


def _check_cut(shown: str, meta: dict, llm: ScriptedLLM) -> None:
    """The consumer saw a prefix of the answer that stops before the flagged span."""
    assert UNSAFE_ANSWER.startswith(shown)
    flag_offset = meta["flag_offset"]
    # The flagged span starts at (or just before) the first unsafe word.
    assert flag_offset is not None and flag_offset <= _bomb_offset(UNSAFE_ANSWER) + 1
    assert len(shown) <= flag_offset  # none of the flagged span is shown
    # The upstream generator stopped right after the flag and was closed.
    assert llm.state["closed"] is True and llm.state["finished"] is False
    assert llm.state["yielded"] < len(split_tokens(UNSAFE_ANSWER))


def test_unsafe_stream_stops_before_the_flagged_span(index, guard):
    engine, llm, _ = _setup(index, guard, answer=UNSAFE_ANSWER, streaming=True)
    response = engine.query(SAFE_QUERY)
    assert isinstance(response, StreamingResponse)
    shown = ""
    with pytest.raises(Qwen3GuardViolation) as info:
        for chunk in response.response_gen:
            shown += chunk
    assert info.value.stage == "output" and info.value.verdict.is_unsafe
    assert info.value.decision.blocked and info.value.content.startswith(shown)
    meta = response.metadata[METADATA_KEY]
    assert meta["blocked"] == "output" and meta["output"]["shown"] == len(shown)
    assert meta["output"]["risk"] == "Unsafe" and meta["output"]["surface"] == "output"
    _check_cut(shown, meta["output"], llm)
    assert len(response.source_nodes) == len(CLEAN_DOCS)


async def test_unsafe_stream_stops_before_the_flagged_span_async(index, guard):
    engine, llm, _ = _setup(index, guard, answer=UNSAFE_ANSWER, streaming=True)
    response = await engine.aquery(SAFE_QUERY)
    assert isinstance(response, AsyncStreamingResponse)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        async for chunk in response.async_response_gen():
            shown += chunk
    for _ in range(50):  # the inner async generators are finalised by the event loop
        if llm.state.get("closed"):
            break
        await asyncio.sleep(0)
    _check_cut(shown, response.metadata[METADATA_KEY]["output"], llm)


def test_hold_back_names(index, guard):
    # hold_back_chunks shipped in the README, hold_back_tokens is the LangChain name: both
    # are accepted, deprecated, without effect (the core gate decides what is held back).
    for name in ("hold_back_chunks", "hold_back_tokens"):
        with pytest.warns(DeprecationWarning, match=name):
            engine, _, _ = _setup(index, guard, streaming=True, **{name: 3})
        assert "".join(engine.query(SAFE_QUERY).response_gen) == SAFE_ANSWER
    with pytest.raises(ValueError, match="hold_back_tokens"):
        _setup(index, guard, streaming=True, hold_back_tokens=-1)


def test_unsafe_stream_replaced(index, guard):
    engine, llm, _ = _setup(
        index, guard, answer=UNSAFE_ANSWER, streaming=True, exit_behavior="replace"
    )
    response = engine.query(SAFE_QUERY)
    text = response.get_response().response
    assert text.endswith(DEFAULT_VIOLATION_MESSAGE) and " bomb" not in text
    assert llm.state["closed"] is True


@pytest.mark.parametrize("use_async", [False, True])
async def test_safe_stream_is_unchanged(index, guard, use_async):
    engine, llm, _ = _setup(index, guard, streaming=True)
    if use_async:
        response = await engine.aquery(SAFE_QUERY)
        chunks = [c async for c in response.async_response_gen()]
    else:
        response = engine.query(SAFE_QUERY)
        chunks = list(response.response_gen)
    assert "".join(chunks) == SAFE_ANSWER
    assert chunks == split_tokens(SAFE_ANSWER)  # chunking is kept too
    assert llm.state["finished"] is True
    assert sorted(n.node.get_content() for n in response.source_nodes) == sorted(CLEAN_DOCS)
    assert response.metadata[METADATA_KEY]["output"]["allowed"] is True


def test_consumer_stopping_early_closes_upstream(index, guard):
    engine, llm, _ = _setup(index, guard, streaming=True)
    gen = engine.query(SAFE_QUERY).response_gen
    next(gen)
    gen.close()
    assert llm.state["closed"] is True


def test_prompts_of_wrapped_engine_are_exposed(index, guard):
    engine, _, _ = _setup(index, guard)
    assert any(k.startswith("query_engine:") for k in engine.get_prompts())


def test_stream_without_a_stream_model_falls_back_to_gen(index, gen_guard):
    # Remote-only deployments have no Stream model: the session re-checks with Gen.
    gen_only = Qwen3Guard(gen_guard.gen, stream_fallback_every=16)
    engine, llm, _ = _setup(index, gen_only, answer=UNSAFE_ANSWER, streaming=True)
    response = engine.query(SAFE_QUERY)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        for chunk in response.response_gen:
            shown += chunk
    assert UNSAFE_ANSWER.startswith(shown) and len(shown) < len(UNSAFE_ANSWER)
    assert llm.state["closed"] is True

    engine, _, _ = _setup(index, gen_only, streaming=True)
    assert "".join(engine.query(SAFE_QUERY).response_gen) == SAFE_ANSWER
