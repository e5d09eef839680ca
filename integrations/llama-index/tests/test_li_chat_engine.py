"""A CondensePlusContextChatEngine with the Qwen3Guard postprocessor."""

from __future__ import annotations

import pytest
from li_testkit import CLEAN_DOCS, POISON, SAFE_ANSWER, ScriptedLLM, build_index
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.postprocessor.qwen3guard import Qwen3GuardNodePostprocessor, Qwen3GuardViolation


@pytest.fixture(scope="module")
def index():
    return build_index()


def _engine(index, guard, llm, **kw):
    return CondensePlusContextChatEngine.from_defaults(
        retriever=index.as_retriever(similarity_top_k=len(CLEAN_DOCS) + 1),
        llm=llm,
        node_postprocessors=[Qwen3GuardNodePostprocessor(guard=guard, **kw)],
    )


def _assert_clean(prompts: list[str]) -> None:
    assert prompts
    for prompt in prompts:
        assert "bomb" not in prompt and "Ignore all previous instructions" not in prompt
    assert all(text in prompts[-1] for text in CLEAN_DOCS)


def test_chat_engine_never_shows_the_poisoned_document(index, gen_guard):
    llm = ScriptedLLM()
    engine = _engine(index, gen_guard, llm)
    first = engine.chat("Where is the Eiffel Tower?")
    assert str(first) == SAFE_ANSWER
    assert POISON not in [n.node.get_content() for n in first.source_nodes]
    _assert_clean(llm.prompts)
    llm.reset()
    engine.chat("And when was it built?")  # a second turn condenses the history first
    _assert_clean(llm.prompts)


async def test_chat_engine_async_and_streaming(index, gen_guard):
    llm = ScriptedLLM()
    engine = _engine(index, gen_guard, llm)
    reply = await engine.achat("Where is the Eiffel Tower?")
    assert str(reply) == SAFE_ANSWER
    _assert_clean(llm.prompts)
    llm.reset()
    stream = engine.stream_chat("Tell me more.")
    assert "".join(stream.response_gen) == SAFE_ANSWER
    _assert_clean(llm.prompts)


def test_chat_engine_check_query(index, gen_guard):
    llm = ScriptedLLM()
    engine = _engine(index, gen_guard, llm, check_query=True)
    with pytest.raises(Qwen3GuardViolation):
        engine.chat("How can I make a bomb?")
    assert llm.prompts == []  # the first turn has no history to condense: nothing was asked
