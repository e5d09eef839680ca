"""The LlamaIndex streaming query engine shows exactly what the core gate releases (issue 11).

A scripted unsafe stream is driven through ``Qwen3GuardQueryEngine`` (sync and async) and,
separately, through the core :class:`qwen3guard.StreamGate` on its own. The reader of the query
engine must receive exactly the text the core gate releases, and none of the flagged span. The
LangChain integration's tests assert the same against the same function of the core, so all
integrations agree by construction of the one gate.
"""

from __future__ import annotations

import pytest
from li_testkit import CLEAN_DOCS, ScriptedLLM, build_index, counting_retriever
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.postprocessor.qwen3guard import (
    METADATA_KEY,
    Qwen3GuardQueryEngine,
    Qwen3GuardViolation,
)

from qwen3guard import Qwen3Guard, StreamGate

QUERY = "Where is the Eiffel Tower?"
CHUNKS = [
    "Sure", ".", " Here", " is", " how", " to", " make", " a", " bomb", ":", " mix", " the",
    " explosive", " powder", " with", " sugar", " and", " pack", " it", " into", " a", " pipe",
    ".",
]  # fmt: skip


def expected_released_text(
    guard: Qwen3Guard, prompt: list[dict[str, str]], chunks: list[str]
) -> tuple[str, int | None]:
    """What the core gate, driven directly, lets a reader see of ``chunks``; and where the
    flagged span starts (None when the answer is not flagged)."""
    gate: StreamGate[str] = StreamGate.open(guard, prompt)
    shown: list[str] = []
    step = None
    for chunk in chunks:
        step = gate.feed(chunk, chunk)
        shown += step.released
        if step.flagged:
            break
    if step is None or not step.flagged:
        step = gate.finish()
        shown += step.released
    if step.partial is not None:
        shown.append(step.partial[1])
    offset = step.update.flag_offset if step.flagged and step.update is not None else None
    return "".join(shown), offset


@pytest.fixture(scope="module")
def index():
    return build_index(CLEAN_DOCS)


def _engine(index, guard: Qwen3Guard, chunks: list[str]) -> Qwen3GuardQueryEngine:
    inner = RetrieverQueryEngine.from_args(
        retriever=counting_retriever(index), llm=ScriptedLLM(chunks=chunks), streaming=True
    )
    return Qwen3GuardQueryEngine(inner, guard=guard)


def test_scripted_stream_is_flagged(guard):
    # The premise: the tiny Stream model flags this answer, at the bomb.
    text, offset = expected_released_text(guard, [{"role": "user", "content": QUERY}], CHUNKS)
    answer = "".join(CHUNKS)
    assert offset is not None and offset <= answer.index(" bomb") + 1
    assert answer.startswith(text) and len(text) <= offset


def test_query_engine_shows_what_the_core_gate_releases(index, guard):
    expected, offset = expected_released_text(
        guard, [{"role": "user", "content": QUERY}], CHUNKS
    )
    response = _engine(index, guard, CHUNKS).query(QUERY)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        for chunk in response.response_gen:
            shown += chunk
    assert shown == expected
    assert offset is not None and len(shown) <= offset  # none of the flagged span
    assert response.metadata[METADATA_KEY]["output"]["flag_offset"] == offset


async def test_query_engine_shows_what_the_core_gate_releases_async(index, guard):
    expected, offset = expected_released_text(
        guard, [{"role": "user", "content": QUERY}], CHUNKS
    )
    response = await _engine(index, guard, CHUNKS).aquery(QUERY)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        async for chunk in response.async_response_gen():
            shown += chunk
    assert shown == expected
    assert offset is not None and len(shown) <= offset


def test_gen_only_query_engine_shows_what_the_core_gate_releases(index, gen_guard):
    gen_only = Qwen3Guard(gen_guard.gen, stream_fallback_every=4)
    expected, offset = expected_released_text(
        gen_only, [{"role": "user", "content": QUERY}], CHUNKS
    )
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        for chunk in _engine(index, gen_only, CHUNKS).query(QUERY).response_gen:
            shown += chunk
    assert shown == expected
    assert offset is not None and len(shown) <= offset
