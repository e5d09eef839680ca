"""Classes 8 and 9 (issue 10) for ``Qwen3GuardDocumentFilter``: one poisoned document fails
alone, and the document metadata that reaches the LLM is judged."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate, format_document
from langchain_qwen3guard import Qwen3GuardDocumentFilter
from lc_agent_fakes import UNSAFE_TEXT

from qwen3guard import Qwen3GuardViolation

SAFE = [
    Document("Paris is the capital of France.", metadata={"source": "atlas"}),
    Document("Bees collect nectar and turn it into honey.", metadata={"source": "bees.txt"}),
]
BROKEN = Document("x\ud800 a lone surrogate", metadata={"source": "bad.txt"})


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_one_poisoned_document_fails_alone(gen_guard, is_async):
    f = Qwen3GuardDocumentFilter(guard=gen_guard)
    docs = [SAFE[0], BROKEN, SAFE[1]]
    kept = await f.ainvoke(docs) if is_async else f.invoke(docs)
    assert kept == SAFE
    ann = Qwen3GuardDocumentFilter(guard=gen_guard, action="annotate")
    out = await ann.ainvoke(docs) if is_async else ann.invoke(docs)
    meta = out[1].metadata["qwen3guard"]
    assert meta["allowed"] is False and "InvalidInputError" in meta["error"]
    assert out[0].metadata["qwen3guard"]["allowed"] is True
    assert out[2].metadata["qwen3guard"]["allowed"] is True
    # batch: the other inputs are judged normally
    many = await f.abatch([docs, SAFE]) if is_async else f.batch([docs, SAFE])
    assert many == [SAFE, SAFE]


def test_poisoned_document_with_raise_names_the_error(gen_guard):
    with pytest.raises(Qwen3GuardViolation) as info:
        Qwen3GuardDocumentFilter(guard=gen_guard, action="raise").invoke([SAFE[0], BROKEN])
    assert info.value.stage == "retrieval"
    assert info.value.decision.error is not None


PROMPT = PromptTemplate.from_template("[{source}] {page_content}")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_metadata_that_reaches_the_llm_is_judged(gen_guard, is_async):
    poisoned = Document("Paris is the capital of France.", metadata={"source": UNSAFE_TEXT})
    # the metadata does reach the LLM in a retriever chain that formats documents with it
    assert UNSAFE_TEXT in format_document(poisoned, PROMPT)
    f = Qwen3GuardDocumentFilter(guard=gen_guard)
    kept = await f.ainvoke([poisoned, *SAFE]) if is_async else f.invoke([poisoned, *SAFE])
    assert kept == SAFE


def test_metadata_keys_choose_what_is_judged(gen_guard):
    doc = Document(
        "Paris is the capital of France.",
        metadata={"source": "atlas", "internal_note": UNSAFE_TEXT, "page": 3},
    )
    # default: every text-valued metadata entry is judged
    assert Qwen3GuardDocumentFilter(guard=gen_guard).invoke([doc]) == []
    # only the keys the prompt uses
    only_source = Qwen3GuardDocumentFilter(guard=gen_guard, metadata_keys=["source", "page"])
    assert only_source.invoke([doc]) == [doc]
    nested = Document("Hello.", metadata={"tags": ["ok", UNSAFE_TEXT]})
    assert Qwen3GuardDocumentFilter(guard=gen_guard).invoke([nested]) == []
    assert Qwen3GuardDocumentFilter(guard=gen_guard, metadata_keys=[]).invoke([nested]) == [nested]
