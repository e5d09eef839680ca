"""``Qwen3GuardDocumentFilter``: keep unsafe and injected documents out of the prompt.

    chain = {"context": retriever | Qwen3GuardDocumentFilter(guard), "question": ...} | prompt | llm

Each document is judged as *retrieval* content, as input the model will read (prompt mode,
the mode that names ``Jailbreak``: instructions planted in a document for the model to follow,
i.e. indirect prompt injection). All documents of a call (of all inputs, for ``batch``) are
judged in one batched guard call (``Qwen3Guard.screen_batch``): a document that cannot be judged
(a lone surrogate in its text) fails alone, blocked with the reason in ``decision.error``, and
the others are judged.

**What of a document is judged: the text that reaches the LLM.** LangChain has no notion of
"LLM-visible" metadata (LlamaIndex's ``excluded_llm_metadata_keys``): a retriever chain decides
by how it formats documents, and ``format_document`` / ``create_stuff_documents_chain`` with a
``document_prompt`` such as ``"[{source}] {page_content}"`` put metadata into the prompt. So the
judged text is the metadata, one ``key: value`` line each, then a blank line and
``page_content`` (the shape LlamaIndex's ``MetadataMode.LLM`` renders). ``metadata_keys``
chooses the entries: ``None`` (default) every entry whose value holds text (a string, or a
list / mapping with strings in it, written as JSON), ``[...]`` only those keys (the ones your
document prompt uses), ``[]`` none (page content only). The decision this filter records
(``"qwen3guard"``) is never judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field

from qwen3guard import (
    METADATA_KEY,
    Decision,
    Policy,
    Qwen3Guard,
    Surface,
    UnsafeContentError,
    get_default_guard,
)
from qwen3guard.content import as_text

Item = tuple[list[dict[str, str]], Surface]


class Qwen3GuardDocumentFilter(RunnableSerializable[Sequence[Document], list[Document]]):
    """Judge documents (surface ``retrieval``) and drop, annotate or refuse the blocked ones.

    Args:
        guard: the :class:`qwen3guard.Qwen3Guard`; ``None`` uses the process-wide default.
        policy: a :class:`qwen3guard.Policy` for this filter; ``None`` uses the guard's.
        action: ``"drop"`` (default) leaves blocked documents out; ``"annotate"`` keeps every
            document and records the decision in ``doc.metadata["qwen3guard"]``
            (:meth:`qwen3guard.Decision.to_dict`: ``allowed``, ``surface``, ``reason``,
            ``verdict``, ``error``, ...); ``"raise"`` raises
            :class:`qwen3guard.Qwen3GuardViolation` for the first blocked document.
        metadata_keys: which metadata is judged with the page content (see the module
            docstring): ``None`` every text-valued entry, a list only those keys.

    Documents are never modified in place: annotated documents are copies.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str | None = "Qwen3GuardDocumentFilter"
    guard: Qwen3Guard | None = Field(default=None, exclude=True)
    policy: Policy | None = Field(default=None, exclude=True)
    action: Literal["drop", "annotate", "raise"] = "drop"
    metadata_keys: list[str] | None = None

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

    def _judged(self, doc: Document) -> str:
        """The text of ``doc`` that reaches the LLM: metadata lines, then the page content."""
        lines = []
        keys = self.metadata_keys if self.metadata_keys is not None else list(doc.metadata)
        for key in keys:
            if key == METADATA_KEY or key not in doc.metadata:
                continue
            value = doc.metadata[key]
            if self.metadata_keys is None and not _holds_text(value):
                continue
            lines.append(f"{key}: {as_text(value)}")
        text = doc.page_content
        return "\n".join(lines) + "\n\n" + text if lines else text

    def _plan(self, inputs: list[Sequence[Document]]) -> tuple[list[list[Document]], list[Item]]:
        groups = self._items(inputs)
        items: list[Item] = [
            ([{"role": "user", "content": self._judged(d)}], Surface.RETRIEVAL)
            for g in groups
            for d in g
        ]
        return groups, items

    def _guard(self) -> Qwen3Guard:
        return self.guard if self.guard is not None else get_default_guard()

    def _filter_many(
        self, inputs: list[Sequence[Document]], per_item_errors: bool = False
    ) -> list[Any]:
        groups, items = self._plan(inputs)
        decisions = self._guard().screen_batch(items, policy=self.policy) if items else []
        return self._apply(groups, decisions, per_item_errors)

    async def _afilter_many(
        self, inputs: list[Sequence[Document]], per_item_errors: bool = False
    ) -> list[Any]:
        groups, items = self._plan(inputs)
        decisions = await self._guard().ascreen_batch(items, policy=self.policy) if items else []
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
                    meta = {**doc.metadata, METADATA_KEY: decision.to_dict()}
                    kept.append(doc.model_copy(update={"metadata": meta}))
                elif decision.allowed:
                    kept.append(doc)
                elif self.action == "raise" and error is None:
                    error = UnsafeContentError(
                        stage=decision.surface,
                        verdict=decision.verdict,
                        content=doc.page_content,
                        decision=decision,
                    )
            if error is not None:
                if not per_item_errors:
                    raise error
                out.append(error)
            else:
                out.append(kept)
        return out


def _holds_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, Mapping):
        return any(_holds_text(v) or _holds_text(k) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_text(v) for v in value)
    return False
