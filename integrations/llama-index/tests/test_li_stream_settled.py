"""Streams release only text the guard has settled (issue 10, class 7).

A chunk reaches the reader once all of its text has been judged and lies before any offset
where a future flag could start. A fixed count of held-back chunks is not enough: empty or
whitespace chunks, text without word boundaries (CJK, one long word) and the Gen fallback all
let the old gate show text the guard had not scored, or the flagged span itself.

The expected cut is computed independently of the integration: a plain stream session fed the
same chunks says where the flagged span starts; the reader must see none of it.
"""

from __future__ import annotations

import pytest
from li_testkit import (
    CLEAN_DOCS,
    UNSAFE_ANSWER,
    Script,
    ScriptedLLM,
    build_index,
    counting_retriever,
    split_tokens,
)
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.postprocessor.qwen3guard import (
    METADATA_KEY,
    Qwen3GuardQueryEngine,
    Qwen3GuardViolation,
    moderate_agent_stream,
)

from qwen3guard import Qwen3Guard

pytestmark = [
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]

QUERY = "Where is the Eiffel Tower?"
AGENT_PROMPT = "Tell me about the tower."

# The answer's words, each followed by an empty chunk and a lone space.
WHITESPACE_CHUNKS = [c for tok in split_tokens(UNSAFE_ANSWER) for c in (tok, "", " ")]
# Chinese without spaces: the re-tokenizer commits nothing until punctuation or the end.
CJK_UNSAFE = "好的，这是制造炸弹的方法：把炸药粉末装进管子里然后点燃引信。"
CJK_CHUNKS = list(CJK_UNSAFE)
# One long word: no boundary at all until the answer ends.
NO_SPACE_CHUNKS = list("Tomakeabombyouneedexplosivepowderandapipe")

CASES = {
    "whitespace": WHITESPACE_CHUNKS,
    "cjk": CJK_CHUNKS,
    "no-space": NO_SPACE_CHUNKS,
}


def flag_offset_of(guard: Qwen3Guard, prompt: str, chunks: list[str]) -> int:
    """Where a plain session fed ``chunks`` says the flagged span starts (it must flag)."""
    session = guard.open_stream([{"role": "user", "content": prompt}])
    update = None
    for chunk in chunks:
        update = session.feed_text(chunk)
        if update.flagged:
            break
    if update is None or not update.flagged:
        update = session.close()
    else:
        session.abort()
    assert update.flagged and update.flag_offset is not None, "premise: the answer is flagged"
    return update.flag_offset


@pytest.fixture(scope="module")
def index():
    return build_index(CLEAN_DOCS)


def _engine(index, guard, chunks: list[str], **kw):
    llm = ScriptedLLM(chunks=chunks)
    inner = RetrieverQueryEngine.from_args(
        retriever=counting_retriever(index), llm=llm, streaming=True
    )
    return Qwen3GuardQueryEngine(inner, guard=guard, check_query=False, **kw), llm


def _gen_only(gen_guard: Qwen3Guard) -> Qwen3Guard:
    return Qwen3Guard(gen_guard.gen, stream_fallback_every=16)


def _assert_cut(shown: str, answer: str, flag_offset: int) -> None:
    assert answer.startswith(shown)
    assert len(shown) <= flag_offset, (
        f"{len(shown)} characters shown, the flagged span starts at {flag_offset}: "
        f"{answer[flag_offset:len(shown)]!r} of it was shown"
    )


# -- the streaming query engine -------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_query_stream_shows_no_unsettled_text(index, guard, case):
    chunks = CASES[case]
    answer = "".join(chunks)
    expected = flag_offset_of(guard, QUERY, chunks)
    engine, llm = _engine(index, guard, chunks)
    response = engine.query(QUERY)
    shown = ""
    with pytest.raises(Qwen3GuardViolation) as info:
        for chunk in response.response_gen:
            shown += chunk
    assert info.value.stage == "output"
    _assert_cut(shown, answer, expected)
    meta = response.metadata[METADATA_KEY]["output"]
    assert meta["flag_offset"] == expected and meta["shown"] == len(shown)


@pytest.mark.parametrize("case", list(CASES))
async def test_query_stream_shows_no_unsettled_text_async(index, guard, case):
    chunks = CASES[case]
    answer = "".join(chunks)
    expected = flag_offset_of(guard, QUERY, chunks)
    engine, llm = _engine(index, guard, chunks)
    response = await engine.aquery(QUERY)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        async for chunk in response.async_response_gen():
            shown += chunk
    _assert_cut(shown, answer, expected)


def test_cjk_stream_shows_nothing_of_the_bomb(index, guard):
    engine, _ = _engine(index, guard, CJK_CHUNKS, exit_behavior="replace", violation_message="!")
    text = "".join(engine.query(QUERY).response_gen)
    assert text.endswith("!") and "炸弹" not in text


def test_gen_only_stream_shows_no_unjudged_text(index, gen_guard):
    gen_only = _gen_only(gen_guard)
    chunks = split_tokens(UNSAFE_ANSWER)
    expected = flag_offset_of(gen_only, QUERY, chunks)
    engine, llm = _engine(index, gen_only, chunks)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        for chunk in engine.query(QUERY).response_gen:
            shown += chunk
    _assert_cut(shown, UNSAFE_ANSWER, expected)
    assert " bomb" not in shown
    assert llm.state["closed"] is True


async def test_gen_only_stream_shows_no_unjudged_text_async(index, gen_guard):
    gen_only = _gen_only(gen_guard)
    chunks = split_tokens(UNSAFE_ANSWER)
    expected = flag_offset_of(gen_only, QUERY, chunks)
    engine, _ = _engine(index, gen_only, chunks)
    response = await engine.aquery(QUERY)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        async for chunk in response.async_response_gen():
            shown += chunk
    _assert_cut(shown, UNSAFE_ANSWER, expected)
    assert " bomb" not in shown


# -- the agent stream -----------------------------------------------------------------------------


async def _agent_shown(guard: Qwen3Guard, chunks: list[str]) -> tuple[str, Script]:
    script = Script(chunks=chunks, delay_s=0.001)
    agent = FunctionAgent(tools=[], llm=MockFunctionCallingLLM(response_generator=script))
    handler = agent.run(AGENT_PROMPT)
    shown = ""
    with pytest.raises(Qwen3GuardViolation):
        async for ev in moderate_agent_stream(handler, guard=guard):
            if isinstance(ev, AgentStream):
                shown += ev.delta
    assert handler.is_done()
    return shown, script


@pytest.mark.parametrize("case", list(CASES))
async def test_agent_stream_shows_no_unsettled_text(guard, case):
    chunks = CASES[case]
    expected = flag_offset_of(guard, AGENT_PROMPT, chunks)
    shown, _ = await _agent_shown(guard, chunks)
    _assert_cut(shown, "".join(chunks), expected)


async def test_agent_stream_gen_only_shows_no_unjudged_text(gen_guard):
    gen_only = _gen_only(gen_guard)
    chunks = split_tokens(UNSAFE_ANSWER)
    expected = flag_offset_of(gen_only, AGENT_PROMPT, chunks)
    shown, _ = await _agent_shown(gen_only, chunks)
    _assert_cut(shown, UNSAFE_ANSWER, expected)
    assert " bomb" not in shown
