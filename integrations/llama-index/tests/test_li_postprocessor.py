"""Qwen3GuardNodePostprocessor on a real VectorStoreIndex, judged by the tiny checkpoints."""

from __future__ import annotations

import asyncio

import pytest
from li_testkit import CLEAN_DOCS, POISON, ScriptedLLM, build_index, counting_retriever
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.postprocessor.qwen3guard import (
    METADATA_KEY,
    Qwen3GuardNodePostprocessor,
    Qwen3GuardViolation,
)

from qwen3guard import Policy, Qwen3Guard, SurfaceRule, set_default_guard


@pytest.fixture(scope="module")
def index():
    return build_index()


def _engine(index, pp, llm):
    return RetrieverQueryEngine.from_args(
        retriever=counting_retriever(index), llm=llm, node_postprocessors=[pp]
    )


def _nodes(*texts: str) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(texts)
    ]


def test_guard_flags_the_poisoned_document(gen_guard):
    # The premise of the tests below, checked on the tiny model itself.
    assert gen_guard.screen([{"role": "user", "content": POISON}], "retrieval").blocked
    for text in CLEAN_DOCS:
        assert gen_guard.screen([{"role": "user", "content": text}], "retrieval").allowed


def test_poisoned_node_is_dropped_and_never_reaches_the_llm(index, gen_guard):
    llm = ScriptedLLM()
    engine = _engine(index, Qwen3GuardNodePostprocessor(guard=gen_guard), llm)
    response = engine.query("Where is the Eiffel Tower?")
    assert len(llm.prompts) == 1
    prompt = llm.prompts[0]
    assert "bomb" not in prompt and "Ignore all previous instructions" not in prompt
    for text in CLEAN_DOCS:
        assert text in prompt
    texts = [n.node.get_content() for n in response.source_nodes]
    assert POISON not in texts and sorted(texts) == sorted(CLEAN_DOCS)


async def test_poisoned_node_is_dropped_async(index, gen_guard):
    llm = ScriptedLLM()
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, batch_size=2, max_concurrency=2)
    engine = _engine(index, pp, llm)
    response = await engine.aquery("Where is the Eiffel Tower?")
    assert len(llm.prompts) == 1 and "bomb" not in llm.prompts[0]
    assert sorted(n.node.get_content() for n in response.source_nodes) == sorted(CLEAN_DOCS)


def test_annotate_keeps_nodes_and_hides_the_verdict_from_the_llm(gen_guard):
    nodes = _nodes(CLEAN_DOCS[0], POISON)
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, action="annotate")
    out = pp.postprocess_nodes(nodes, query_str="Where is the Eiffel Tower?")
    assert [n.node.get_content() for n in out] == [CLEAN_DOCS[0], POISON]
    clean, poison = (n.node.metadata[METADATA_KEY] for n in out)
    assert clean["allowed"] is True and clean["risk"] == "Safe"
    assert poison["allowed"] is False and poison["risk"] == "Unsafe"
    assert poison["surface"] == "retrieval" and "Violent" in poison["categories"]
    for n in out:  # the annotation is not shown to the LLM or the embedder
        assert METADATA_KEY not in n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert METADATA_KEY not in n.node.get_content(metadata_mode=MetadataMode.EMBED)
    assert all(METADATA_KEY not in n.node.metadata for n in nodes)  # inputs not mutated
    assert out[0].score == 1.0


def test_raise_action(gen_guard):
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, action="raise")
    with pytest.raises(Qwen3GuardViolation) as info:
        pp.postprocess_nodes(_nodes(CLEAN_DOCS[0], POISON))
    assert info.value.stage == "retrieval" and info.value.verdict.is_unsafe
    assert "bomb" in info.value.content
    assert len(pp.postprocess_nodes(_nodes(*CLEAN_DOCS))) == len(CLEAN_DOCS)


async def test_check_query(gen_guard):
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, check_query=True)
    with pytest.raises(Qwen3GuardViolation) as info:
        pp.postprocess_nodes(_nodes(*CLEAN_DOCS), query_str="How can I make a bomb?")
    assert info.value.stage == "input"
    with pytest.raises(Qwen3GuardViolation):
        await pp.apostprocess_nodes(_nodes(*CLEAN_DOCS), query_str="How can I make a bomb?")
    kept = pp.postprocess_nodes(_nodes(*CLEAN_DOCS), query_str="What is the weather like today?")
    assert len(kept) == len(CLEAN_DOCS)


async def test_async_batches_are_bounded_and_agree_with_sync(gen_guard, monkeypatch):
    texts = [CLEAN_DOCS[i % 3] if i % 4 else POISON for i in range(12)]
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, batch_size=3, max_concurrency=2)
    sync_ids = [n.node.node_id for n in pp.postprocess_nodes(_nodes(*texts))]

    real = gen_guard.acheck_batch
    calls: list[int] = []
    live = {"now": 0, "max": 0}

    async def spy(items, *, return_exceptions=False):
        calls.append(len(items))
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        try:
            await asyncio.sleep(0.01)
            return await real(items, return_exceptions=return_exceptions)
        finally:
            live["now"] -= 1

    monkeypatch.setattr(gen_guard, "acheck_batch", spy)
    async_ids = [n.node.node_id for n in await pp.apostprocess_nodes(_nodes(*texts))]
    assert async_ids == sync_ids and len(sync_ids) == 9
    assert calls == [3, 3, 3, 3] and live["max"] == 2


def test_empty_nodes_are_kept_unjudged(gen_guard):
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, action="annotate")
    out = pp.postprocess_nodes(_nodes("   ", CLEAN_DOCS[1]))
    assert out[0].node.metadata[METADATA_KEY]["reason"] == "nothing to judge"
    assert out[1].node.metadata[METADATA_KEY]["allowed"] is True


def _unreachable(**kw) -> Qwen3Guard:
    return Qwen3Guard.from_endpoint(
        "http://127.0.0.1:9/v1", model="unreachable", timeout=1.0, max_retries=0, **kw
    )


async def test_unreachable_guard_fails_closed_or_open():
    closed = Qwen3GuardNodePostprocessor(guard=_unreachable())
    assert closed.postprocess_nodes(_nodes(*CLEAN_DOCS)) == []
    assert await closed.apostprocess_nodes(_nodes(*CLEAN_DOCS)) == []
    opened = Qwen3GuardNodePostprocessor(guard=_unreachable(policy=Policy(fail_open=True)))
    with pytest.warns(RuntimeWarning, match="fail-open"):
        assert len(opened.postprocess_nodes(_nodes(*CLEAN_DOCS))) == 3
    with pytest.warns(RuntimeWarning, match="fail-open"):
        assert len(await opened.apostprocess_nodes(_nodes(*CLEAN_DOCS))) == 3


def test_guard_without_gen_fails_closed(guard):
    # The whole batch fails at once (no Gen model to judge text with): still fail-closed.
    stream_only = Qwen3GuardNodePostprocessor(guard=Qwen3Guard(stream=guard.stream))
    assert stream_only.postprocess_nodes(_nodes(*CLEAN_DOCS)) == []


def test_disabled_surface_passes_nodes_unjudged(gen_guard):
    off = Qwen3Guard(
        gen_guard.gen, policy=Policy(surfaces={"retrieval": SurfaceRule(enabled=False)})
    )
    pp = Qwen3GuardNodePostprocessor(guard=off)
    assert len(pp.postprocess_nodes(_nodes(CLEAN_DOCS[0], POISON))) == 2


def test_default_guard_is_used_lazily(gen_guard):
    pp = Qwen3GuardNodePostprocessor()  # nothing is loaded here
    set_default_guard(gen_guard)
    try:
        assert pp.guard is gen_guard
        assert len(pp.postprocess_nodes(_nodes(CLEAN_DOCS[0], POISON))) == 1
    finally:
        set_default_guard(None)


def test_serialisable_settings():
    pp = Qwen3GuardNodePostprocessor(action="annotate", batch_size=8)
    d = pp.to_dict()
    assert d["class_name"] == "Qwen3GuardNodePostprocessor"
    assert d["action"] == "annotate" and d["batch_size"] == 8
    with pytest.raises(ValueError):
        Qwen3GuardNodePostprocessor(action="explode")


# -- one bad node fails alone (issue 10, class 8) --------------------------------------------------

BAD_TEXT = "x\ud800"  # a lone surrogate: cannot be encoded, so it cannot be judged


@pytest.mark.parametrize("use_async", [False, True])
async def test_one_bad_node_is_dropped_alone(gen_guard, use_async):
    nodes = _nodes(CLEAN_DOCS[0], BAD_TEXT, POISON, CLEAN_DOCS[1])
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, batch_size=4)
    out = await pp.apostprocess_nodes(nodes) if use_async else pp.postprocess_nodes(nodes)
    assert [n.node.get_content() for n in out] == [CLEAN_DOCS[0], CLEAN_DOCS[1]]


@pytest.mark.parametrize("use_async", [False, True])
async def test_one_bad_node_is_annotated_alone(gen_guard, use_async):
    nodes = _nodes(CLEAN_DOCS[0], BAD_TEXT, POISON)
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, action="annotate")
    out = await pp.apostprocess_nodes(nodes) if use_async else pp.postprocess_nodes(nodes)
    clean, bad, poison = (n.node.metadata[METADATA_KEY] for n in out)
    assert clean["allowed"] is True and clean["risk"] == "Safe"
    assert bad["allowed"] is False and bad["risk"] is None
    assert "InvalidInputError" in bad["error"] and "cannot be judged" in bad["reason"]
    assert poison["allowed"] is False and poison["risk"] == "Unsafe"


def test_one_bad_node_raises_a_violation_not_a_type_error(gen_guard):
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard, action="raise")
    with pytest.raises(Qwen3GuardViolation) as info:
        pp.postprocess_nodes(_nodes(CLEAN_DOCS[0], BAD_TEXT))
    assert info.value.stage == "retrieval" and isinstance(info.value.decision.error, ValueError)


# -- what the LLM sees of a node is what is judged (issue 10, class 9) ----------------------------


def test_llm_visible_metadata_is_judged(gen_guard):
    node = TextNode(text=CLEAN_DOCS[0], id_="m0", metadata={"summary": POISON})
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard)
    assert pp.postprocess_nodes([NodeWithScore(node=node, score=1.0)]) == []
    # A key the LLM never sees is not judged (and does not block).
    hidden = TextNode(
        text=CLEAN_DOCS[0],
        id_="m1",
        metadata={"summary": POISON},
        excluded_llm_metadata_keys=["summary"],
    )
    assert POISON not in hidden.get_content(metadata_mode=MetadataMode.LLM)
    assert len(pp.postprocess_nodes([NodeWithScore(node=hidden, score=1.0)])) == 1


def test_llm_text_template_is_judged(gen_guard):
    # The node's own template is part of what the LLM reads (it is applied with metadata).
    node = TextNode(
        text=CLEAN_DOCS[0],
        id_="t0",
        metadata={"source": "notes"},
        text_template=POISON + "\n{metadata_str}\n{content}",
    )
    assert POISON in node.get_content(metadata_mode=MetadataMode.LLM)
    pp = Qwen3GuardNodePostprocessor(guard=gen_guard)
    assert pp.postprocess_nodes([NodeWithScore(node=node, score=1.0)]) == []
