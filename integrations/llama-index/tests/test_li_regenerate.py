"""Roll back and regenerate (issue 13) with ``Qwen3GuardQueryEngine(..., on_unsafe="regenerate")``.

A scripted LLM (chat or completion) turns unsafe midway on its first try and is safe on the
second, behind a real ``RetrieverQueryEngine``: the reader gets the kept prefix plus the safe
continuation as one answer, and no character of the unsafe span, streamed (sync and async) and
not streamed (sync and async), with assistant prefill and with a corrective instruction; the
abandoned try's stream is closed. An LLM that is unsafe on every try ends with the refusal
message. The guard is the real tiny checkpoints (its Stream model flags the word "bomb").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from li_testkit import CLEAN_DOCS, SequenceLLM, build_index, split_tokens
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.chat_engine import CondenseQuestionChatEngine
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.postprocessor.qwen3guard import (
    METADATA_KEY,
    Qwen3GuardChatEngine,
    Qwen3GuardQueryEngine,
)
from llama_index.postprocessor.qwen3guard._regenerate import resolve_continuation

from qwen3guard import DEFAULT_REFUSAL_MESSAGE

QUERY = "How do I spend a fun afternoon?"
SAFE = "Go for a walk in the park. Then read a good book at home. "
UNSAFE = "Next, make a bomb with what you find in the garage and light it. "
TAIL = "More words follow here and here and here. "
REPAIR = "Then cook a nice dinner with friends and enjoy the evening."
FIRST = SAFE + UNSAFE + TAIL
HOW = ["stream", "astream", "query", "aquery"]


@pytest.fixture(scope="module")
def index():
    return build_index(CLEAN_DOCS)


def _engine(
    index: Any, guard: Any, *answers: str, how: str, chat: bool = True, **kw: Any
) -> tuple[Qwen3GuardQueryEngine, SequenceLLM]:
    llm = SequenceLLM(answers=list(answers), chat_model=chat)
    inner = RetrieverQueryEngine.from_args(
        retriever=index.as_retriever(similarity_top_k=len(CLEAN_DOCS)),
        llm=llm,
        streaming=how in ("stream", "astream"),
    )
    kw.setdefault("on_unsafe", "regenerate")
    return Qwen3GuardQueryEngine(inner, guard=guard, **kw), llm


async def _answer(engine: Qwen3GuardQueryEngine, how: str) -> tuple[str, list[str], Any]:
    """The answer as the reader gets it, the chunks it came in, and the response."""
    if how == "stream":
        response = engine.query(QUERY)
        assert isinstance(response, StreamingResponse)
        chunks = list(response.response_gen)
    elif how == "astream":
        response = await engine.aquery(QUERY)
        assert isinstance(response, AsyncStreamingResponse)
        chunks = [c async for c in response.async_response_gen()]
    else:
        response = engine.query(QUERY) if how == "query" else await engine.aquery(QUERY)
        assert isinstance(response, Response)
        chunks = [response.response or ""]
    return "".join(chunks), chunks, response


def _no_unsafe_char(text: str) -> None:
    assert "bomb" not in text and "garage" not in text and "Next," not in text
    assert TAIL.strip() not in text


async def _settle(llm: SequenceLLM) -> None:
    for _ in range(20):  # async generators are finalised by the event loop
        await asyncio.sleep(0)


@pytest.mark.parametrize("continuation", ["instruction", "prefill"])
@pytest.mark.parametrize("how", HOW)
async def test_unsafe_midway_then_safe_gives_one_clean_answer(index, guard, how, continuation):
    engine, llm = _engine(index, guard, FIRST, REPAIR, how=how, continuation=continuation)
    text, _, response = await _answer(engine, how)
    assert text == SAFE + REPAIR  # the kept prefix and the safe continuation, as one answer
    _no_unsafe_char(text)
    assert len(llm.calls) == 2
    first, retry = llm.calls[0]["messages"], llm.calls[1]["messages"]
    if continuation == "prefill":  # the same request, continued as the same assistant message
        assert retry[:-1] == first
        assert retry[-1].role == MessageRole.ASSISTANT and retry[-1].content == SAFE.rstrip()
    else:  # the same request and a corrective instruction that holds the kept prefix
        assert retry[:-1] == first and retry[-1].role == MessageRole.USER
        assert SAFE in retry[-1].content and "bomb" not in retry[-1].content
    await _settle(llm)
    if how in ("stream", "astream"):  # the abandoned try's stream stopped producing
        assert llm.calls[0]["closed"] and llm.calls[0]["yielded"] < len(split_tokens(FIRST))
    assert llm.calls[1]["finished"] and not llm.calls[1]["closed"]
    assert sorted(n.node.get_content() for n in response.source_nodes) == sorted(CLEAN_DOCS)
    meta = response.metadata[METADATA_KEY]["intervention"]
    assert meta["retries"] == 1 and not meta["refused"]
    assert meta["decisions"][0]["risk"] == "Unsafe"


@pytest.mark.parametrize("how", HOW)
async def test_unsafe_on_every_try_ends_with_the_refusal(index, guard, how):
    engine, llm = _engine(index, guard, FIRST, UNSAFE + TAIL, how=how, max_retries=2)
    text, _, response = await _answer(engine, how)
    _no_unsafe_char(text)
    assert text.endswith(DEFAULT_REFUSAL_MESSAGE)
    assert SAFE.startswith(text[: -len(DEFAULT_REFUSAL_MESSAGE)])  # released text, then it
    assert len(llm.calls) == 3  # the first try and max_retries regenerations
    await _settle(llm)
    streamed = range(3) if how in ("stream", "astream") else range(1, 3)
    assert all(llm.calls[i]["closed"] for i in streamed)  # every abandoned stream was closed
    meta = response.metadata[METADATA_KEY]
    assert meta["blocked"] == "output" and meta["intervention"]["refused"]
    assert meta["intervention"]["retries"] == 2


@pytest.mark.parametrize("how", ["stream", "aquery"])
async def test_a_completion_llm_continues_its_own_prompt(index, guard, how):
    # A completion LLM continues the text it is given: prefill is the prompt plus the kept
    # prefix ("auto" picks it).
    engine, llm = _engine(index, guard, FIRST, " " + REPAIR, how=how, chat=False)
    text, _, _ = await _answer(engine, how)
    assert text == SAFE + REPAIR  # no doubled white space at the splice
    assert llm.calls[1]["prompt"] == llm.calls[0]["prompt"] + SAFE.rstrip()


@pytest.mark.parametrize("how", HOW)
async def test_a_safe_answer_passes_unchanged_with_one_call(index, guard, how):
    engine, llm = _engine(index, guard, SAFE + REPAIR, how=how)
    text, chunks, response = await _answer(engine, how)
    assert text == SAFE + REPAIR and len(llm.calls) == 1
    if how in ("stream", "astream"):
        assert chunks == split_tokens(SAFE + REPAIR)  # chunking is kept
    assert "intervention" not in (response.metadata or {}).get(METADATA_KEY, {})


def test_a_reader_that_stops_early_closes_the_llm_stream(index, guard):
    engine, llm = _engine(index, guard, FIRST, REPAIR, how="stream", buffer_tokens=0)
    gen = engine.query(QUERY).response_gen
    next(gen)
    gen.close()
    assert llm.calls[0]["closed"] and len(llm.calls) == 1


def test_options_are_checked(index, guard):
    with pytest.raises(ValueError, match="continuation"):
        _engine(index, guard, SAFE, how="stream", continuation="maybe")
    with pytest.raises(ValueError, match="max_retries"):
        _engine(index, guard, SAFE, how="stream", max_retries=-1)
    with pytest.raises(ValueError, match="disagree"):
        _engine(index, guard, SAFE, how="stream", exit_behavior="error")
    with pytest.raises(ValueError, match="exit_behavior"):
        _engine(index, guard, SAFE, how="stream", on_unsafe="retry")


def test_continuation_auto_detection():
    assert resolve_continuation(SequenceLLM(chat_model=True), "auto", chat=True) == "instruction"
    assert resolve_continuation(SequenceLLM(chat_model=False), "auto", chat=False) == "prefill"
    assert resolve_continuation(SequenceLLM(), "prefill", chat=True) == "prefill"


# -- a chat engine: the recipe (a condense-question chat engine over the regenerating engine) --


def _chat_engine(index: Any, guard: Any, *answers: str) -> tuple[Any, SequenceLLM]:
    engine, llm = _engine(index, guard, *answers, how="stream")
    condense = SequenceLLM(answers=[QUERY])  # condenses a follow-up into a question
    chat = CondenseQuestionChatEngine.from_defaults(query_engine=engine, llm=condense)
    return Qwen3GuardChatEngine(chat, guard=guard, check_response=False), llm


@pytest.mark.parametrize("how", ["stream_chat", "chat"])
def test_chat_engine_recipe_gives_one_clean_answer_and_memory(index, guard, how):
    chat, llm = _chat_engine(index, guard, FIRST, REPAIR)
    if how == "stream_chat":
        text = "".join(chat.stream_chat(QUERY).response_gen)
    else:
        text = chat.chat(QUERY).response
    assert text == SAFE + REPAIR
    _no_unsafe_char(text)
    assert llm.calls[0]["closed"] and len(llm.calls) == 2  # the abandoned stream was closed
    history = chat.chat_history
    assert history[-1].role == MessageRole.ASSISTANT and history[-1].content == SAFE + REPAIR


def test_chat_engine_regenerate_names_the_recipe(index, guard):
    chat, _ = _chat_engine(index, guard, SAFE)
    with pytest.raises(ValueError, match="CondenseQuestionChatEngine"):
        Qwen3GuardChatEngine(chat.chat_engine, guard=guard, exit_behavior="regenerate")
