"""``Qwen3GuardDocumentFilter``: keep unsafe and injected documents out of the prompt.

    chain = {"context": retriever | Qwen3GuardDocumentFilter(guard), "question": ...} | prompt | llm

Each document is judged as *retrieval* content, as input the model will read (prompt mode,
the mode that names ``Jailbreak``: instructions planted in a document for the model to follow,
i.e. indirect prompt injection). All documents of a call (of all inputs, for ``batch``) are
judged in one batched guard call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field

from qwen3guard import Decision, Surface

from ._convert import METADATA_KEY, decision_metadata
from ._screen import ascreen_many, screen_many, violation
from .callbacks import document_conversation


class Qwen3GuardDocumentFilter(RunnableSerializable[Sequence[Document], list[Document]]):
    """Judge documents (surface ``retrieval``) and drop, annotate or refuse the blocked ones.

    Args:
        guard: the :class:`qwen3guard.Qwen3Guard`; ``None`` uses the process-wide default.
        policy: a :class:`qwen3guard.Policy` for this filter; ``None`` uses the guard's.
        action: ``"drop"`` (default) leaves blocked documents out; ``"annotate"`` keeps every
            document and records the decision in ``doc.metadata["qwen3guard"]``
            (``allowed``, ``surface``, ``reason``, ``verdict``); ``"raise"`` raises
            :class:`qwen3guard.Qwen3GuardViolation` for the first blocked document.

    Documents are never modified in place: annotated documents are copies.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str | None = "Qwen3GuardDocumentFilter"
    guard: Any = Field(default=None, exclude=True)
    policy: Any = Field(default=None, exclude=True)
    action: Literal["drop", "annotate", "raise"] = "drop"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    def invoke(
        self, input: Sequence[Document], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        return self._call_with_config(
            lambda docs: self._filter_many([docs])[0], input, config, **kwargs
        )

    async def ainvoke(
        self, input: Sequence[Document], config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Document]:
        async def run(docs: Sequence[Document]) -> list[Document]:
            return (await self._afilter_many([docs]))[0]

        return await self._acall_with_config(run, input, config, **kwargs)

    def batch(
        self,
        inputs: list[Sequence[Document]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[list[Document]]:
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def abatch(
        self,
        inputs: list[Sequence[Document]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[list[Document]]:
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _batch(
        self, inputs: list[Sequence[Document]], run_manager: list[CallbackManagerForChainRun]
    ) -> list[Any]:
        return self._filter_many(inputs, per_item_errors=True)

    async def _abatch(
        self, inputs: list[Sequence[Document]], run_manager: list[AsyncCallbackManagerForChainRun]
    ) -> list[Any]:
        return await self._afilter_many(inputs, per_item_errors=True)

    # -- internals ------------------------------------------------------------------------------

    def _items(self, inputs: list[Sequence[Document]]) -> list[list[Document]]:
        groups = []
        for docs in inputs:
            if isinstance(docs, Document):
                docs = [docs]
            docs = list(docs)
            for d in docs:
                if not isinstance(d, Document):
                    raise TypeError(
                        "Qwen3GuardDocumentFilter takes a list of Documents, "
                        f"got an item of type {type(d).__name__}"
                    )
            groups.append(docs)
        return groups

    def _filter_many(
        self, inputs: list[Sequence[Document]], per_item_errors: bool = False
    ) -> list[Any]:
        groups = self._items(inputs)
        flat = [d for g in groups for d in g]
        decisions = screen_many(
            self.guard, self.policy, [(document_conversation(d), Surface.RETRIEVAL) for d in flat]
        )
        return self._apply(groups, decisions, per_item_errors)

    async def _afilter_many(
        self, inputs: list[Sequence[Document]], per_item_errors: bool = False
    ) -> list[Any]:
        groups = self._items(inputs)
        flat = [d for g in groups for d in g]
        decisions = await ascreen_many(
            self.guard, self.policy, [(document_conversation(d), Surface.RETRIEVAL) for d in flat]
        )
        return self._apply(groups, decisions, per_item_errors)

    def _apply(
        self, groups: list[list[Document]], decisions: list[Decision], per_item_errors: bool
    ) -> list[Any]:
        out: list[Any] = []
        k = 0
        for docs in groups:
            kept: list[Document] = []
            error: Exception | None = None
            for doc in docs:
                decision = decisions[k]
                k += 1
                if self.action == "annotate":
                    meta = {**doc.metadata, METADATA_KEY: decision_metadata(decision)}
                    kept.append(doc.model_copy(update={"metadata": meta}))
                elif decision.allowed:
                    kept.append(doc)
                elif self.action == "raise" and error is None:
                    error = violation(decision, doc.page_content)
            if error is not None:
                if not per_item_errors:
                    raise error
                out.append(error)
            else:
                out.append(kept)
        return out
