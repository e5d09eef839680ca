"""Issue 11: the streaming of the runnable and of the chat-model wrapper comes from the one core
gate. The same scripted unsafe stream, with the same prompt, shows the reader the same text
through ``guard.moderate_stream`` (the core), ``llm | Qwen3GuardRunnable()`` and
``Qwen3GuardChatModel``: the text before the flagged span, and none of it."""

from __future__ import annotations

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_qwen3guard import Qwen3GuardRunnable, guard_chat_model
from lc_fakes import UNSAFE_ANSWER, words

from qwen3guard import Qwen3GuardViolation, UnsafeContentError

QUESTION = "What is the weather like today?"


def _fake() -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([UNSAFE_ANSWER]))


def _text(stream) -> tuple[str, BaseException]:
    got = []
    with pytest.raises(UnsafeContentError) as info:
        for chunk in stream:
            got.append(chunk if isinstance(chunk, str) else chunk.content)
    return "".join(got), info.value


def test_the_same_text_reaches_the_reader_on_every_path(guard):
    core, core_exc = _text(
        guard.moderate_stream([{"role": "user", "content": QUESTION}], iter(words(UNSAFE_ANSWER)))
    )
    chain = _fake() | Qwen3GuardRunnable(guard=guard)
    runnable, runnable_exc = _text(
        chain.stream(QUESTION, config={"configurable": {"qwen3guard_prompt": QUESTION}})
    )
    model, model_exc = _text(guard_chat_model(_fake(), guard).stream(QUESTION))
    assert core == runnable == model
    assert UNSAFE_ANSWER.startswith(core) and "explosive" not in core
    decisions = []
    for exc in (core_exc, runnable_exc, model_exc):
        assert isinstance(exc, Qwen3GuardViolation) and exc.stage == "output"
        d = exc.decision.to_dict()
        decisions.append((d["allowed"], d["surface"], d["risk"], d["categories"]))
    assert decisions[0] == decisions[1] == decisions[2]
