"""One streaming gate (issue 11): the same scripted unsafe stream, with the same question, shows
the reader the same text through the LangChain runnable, the LangChain chat-model wrapper and the
LlamaIndex streaming query engine, exactly what the core ``StreamGate`` releases, and none of
the flagged span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qwen3guard import Qwen3Guard, StreamGate, UnsafeContentError

QUESTION = "Where is the Eiffel Tower?"
CHUNKS = [
    "Sure", ".", " Here", "", " is", " how", " ", " to", " make", " a", " bomb", ":", " mix",
    " the", " explosive", " powder", " with", " sugar", " and", " pack", " it", ".",
]  # fmt: skip


def core_text(guard: Qwen3Guard) -> tuple[str, int]:
    gate: StreamGate[str] = StreamGate.open(guard, [{"role": "user", "content": QUESTION}])
    shown: list[str] = []
    for chunk in CHUNKS:
        step = gate.feed(chunk, chunk)
        shown += step.released
        if step.flagged:
            if step.partial is not None:
                shown.append(step.partial[1])
            assert step.update is not None and step.update.flag_offset is not None
            return "".join(shown), step.update.flag_offset
    raise AssertionError("the scripted answer is not flagged by the built-in Stream model")


def langchain_texts(guard: Qwen3Guard) -> tuple[str, str]:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, AIMessageChunk
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_qwen3guard import Qwen3GuardRunnable, guard_chat_model

    class ChunkLLM(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "scripted-chunks"

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                      **kw: Any) -> ChatResult:
            return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(CHUNKS)))])

        def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                    **kw: Any) -> Iterator[ChatGenerationChunk]:
            for c in CHUNKS:
                yield ChatGenerationChunk(message=AIMessageChunk(content=c))

    def read(stream: Iterator[Any]) -> str:
        got: list[str] = []
        with pytest.raises(UnsafeContentError):
            for chunk in stream:
                got.append(chunk.content)
        return "".join(got)

    runnable = read((ChunkLLM() | Qwen3GuardRunnable(guard=guard)).stream(
        QUESTION, config={"configurable": {"qwen3guard_prompt": QUESTION}}))
    model = read(guard_chat_model(ChunkLLM(), guard).stream(QUESTION))
    return runnable, model


def llamaindex_text(guard: Qwen3Guard) -> str:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import (
        CompletionResponse,
        CompletionResponseGen,
        CustomLLM,
        LLMMetadata,
    )
    from llama_index.core.llms.callbacks import llm_completion_callback
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.postprocessor.qwen3guard import Qwen3GuardQueryEngine

    class ChunkLLM(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            return CompletionResponse(text="".join(CHUNKS))

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False,
                            **kw: Any) -> CompletionResponseGen:
            text = ""
            for c in CHUNKS:
                text += c
                yield CompletionResponse(text=text, delta=c)

    index = VectorStoreIndex.from_documents(
        [Document(text="The Eiffel Tower is in Paris.")], embed_model=MockEmbedding(embed_dim=8))
    inner = RetrieverQueryEngine.from_args(
        retriever=index.as_retriever(similarity_top_k=1), llm=ChunkLLM(), streaming=True)
    response = Qwen3GuardQueryEngine(inner, guard=guard).query(QUESTION)
    got: list[str] = []
    with pytest.raises(UnsafeContentError):
        for text in response.response_gen:
            got.append(text)
    return "".join(got)


def test_the_same_text_reaches_the_reader_in_every_integration(guard: Qwen3Guard) -> None:
    expected, flag_offset = core_text(guard)
    answer = "".join(CHUNKS)
    assert answer.startswith(expected) and len(expected) <= flag_offset
    assert "bomb" not in expected
    runnable, model = langchain_texts(guard)
    query_engine = llamaindex_text(guard)
    assert runnable == model == query_engine == expected
