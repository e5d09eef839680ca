"""Qwen3GuardNodePostprocessor: judge retrieved nodes before the LLM reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from qwen3guard import (
    METADATA_KEY,
    Decision,
    GuardOutputError,
    GuardUnavailableError,
    Policy,
    Qwen3Guard,
    Surface,
)
from qwen3guard.guard import could_not_judge, raise_if_blocked

from ._common import Messages, log, resolve_guard, user_turn
from ._events import check_span

Action = Literal["drop", "raise", "annotate"]

_GUARD_FAILURES = (GuardUnavailableError, GuardOutputError)
Item = tuple[Messages, Surface]


class Qwen3GuardNodePostprocessor(BaseNodePostprocessor):
    """Judge retrieved nodes with Qwen3Guard as inputs to the LLM (surface ``retrieval``).

    Retrieved text is read by the LLM as if the user had written it, so a poisoned document can
    carry a jailbreak or an indirect prompt injection. Each node's text (as the LLM sees it,
    metadata included: ``metadata_mode``) is judged as a prompt, and the guard's policy for the
    ``retrieval`` surface decides:

    - ``action="drop"`` (default): blocked nodes are removed;
    - ``action="raise"``: the first blocked node raises :class:`~qwen3guard.Qwen3GuardViolation`;
    - ``action="annotate"``: every node is kept, and its verdict is written to
      ``node.metadata[metadata_key]`` (hidden from the LLM and the embedder).

    With ``check_query=True`` the query is judged too (surface ``input``) in the same batch; a
    blocked query raises :class:`~qwen3guard.Qwen3GuardViolation` whatever the action. Nodes are
    judged in batches of ``batch_size``; the async path runs up to ``max_concurrency`` batches
    at once. A guard that cannot judge blocks (fail-closed) unless the policy is fail-open.
    Returned nodes that were annotated are copies; the retrieved nodes are never mutated.

    One node that cannot be judged (e.g. text with a lone surrogate) fails alone: it is blocked
    (dropped, raised or annotated, per ``action``) with the reason in its decision's ``error``;
    the others are judged. ``policy`` overrides the guard's policy for this postprocessor.

    Without ``guard`` the process-wide default (:func:`qwen3guard.get_default_guard`) is used,
    built lazily on first use.
    """

    action: Action = Field(
        default="drop", description="What to do with a blocked node: drop, raise or annotate."
    )
    check_query: bool = Field(
        default=False, description="Also judge the query (surface 'input'); blocked raises."
    )
    batch_size: int = Field(default=16, ge=1, description="Nodes judged per guard call.")
    max_concurrency: int = Field(
        default=4, ge=1, description="Batches judged at once on the async path."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.LLM, description="Which node text is judged: what the LLM sees."
    )
    metadata_key: str = Field(
        default=METADATA_KEY, description="Node metadata key the verdict is written under."
    )

    _guard: Qwen3Guard | None = PrivateAttr(default=None)
    _policy: Policy | None = PrivateAttr(default=None)

    def __init__(
        self, guard: Qwen3Guard | None = None, policy: Policy | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._policy = policy

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3GuardNodePostprocessor"

    @property
    def guard(self) -> Qwen3Guard:
        """The guard in use (the process-wide default when none was passed)."""
        return resolve_guard(self._guard)

    @property
    def policy(self) -> Policy:
        """The policy in use: the one passed in, else the guard's."""
        return self._policy if self._policy is not None else self.guard.policy

    # -- sync and async: the same plan, only the waiting differs -----------------------------

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        guard, policy = self.guard, self.policy
        plan = _Plan(self, policy, nodes, query_bundle)
        decisions: list[Decision] = []
        for chunk in plan.chunks(self.batch_size):
            try:
                with check_span(self):
                    decisions.extend(guard.screen_batch(chunk, policy=policy))
            except _GUARD_FAILURES as exc:  # the whole batch could not be judged
                decisions.extend(could_not_judge(policy, exc, s) for _, s in chunk)
        return plan.finish(decisions)

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        guard, policy = self.guard, self.policy
        plan = _Plan(self, policy, nodes, query_bundle)
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def run(chunk: list[Item]) -> list[Decision]:
            async with semaphore:
                try:
                    with check_span(self):
                        return await guard.ascreen_batch(chunk, policy=policy)
                except _GUARD_FAILURES as exc:  # the whole batch could not be judged
                    return [could_not_judge(policy, exc, s) for _, s in chunk]

        parts = await asyncio.gather(*(run(c) for c in plan.chunks(self.batch_size)))
        return plan.finish([d for part in parts for d in part])

    # -- the node's verdict ---------------------------------------------------------------------

    def _annotated(self, nws: NodeWithScore, decision: Decision | None) -> NodeWithScore:
        """A copy of the node whose metadata carries the decision, hidden from LLM and embedder."""
        node = nws.node.model_copy()
        if decision is None:
            decision = Decision(True, None, Surface.RETRIEVAL, "nothing to judge")
        info = decision.to_dict()
        node.metadata = {**nws.node.metadata, self.metadata_key: info}
        for attr in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
            keys = list(getattr(nws.node, attr))
            if self.metadata_key not in keys:
                keys.append(self.metadata_key)
            setattr(node, attr, keys)
        return NodeWithScore(node=node, score=nws.score)


class _Plan:
    """What to judge (the query first, when asked, then each node with text), and how to put
    the guard's decisions back onto the nodes."""

    def __init__(
        self,
        pp: Qwen3GuardNodePostprocessor,
        policy: Policy,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None,
    ) -> None:
        self.pp = pp
        self.nodes = list(nodes)
        self.items: list[Item] = []
        self.query: str | None = None
        if pp.check_query and query_bundle is not None and policy.is_enabled(Surface.INPUT):
            text = query_bundle.query_str
            if text and text.strip():
                self.query = text
                self.items.append((user_turn(text), Surface.INPUT))
        self.node_slots: list[int | None] = []  # index into items, None = nothing to judge
        check_nodes = policy.is_enabled(Surface.RETRIEVAL)
        for nws in self.nodes:
            # What the LLM reads: the node's text with its LLM-visible metadata (the keys in
            # excluded_llm_metadata_keys left out), rendered by the node's own templates.
            text = nws.node.get_content(metadata_mode=pp.metadata_mode) if check_nodes else ""
            if text and text.strip():
                self.node_slots.append(len(self.items))
                self.items.append((user_turn(text), Surface.RETRIEVAL))
            else:
                self.node_slots.append(None)

    def chunks(self, size: int) -> list[list[Item]]:
        return [self.items[i : i + size] for i in range(0, len(self.items), size)]

    def finish(self, decisions: Sequence[Decision]) -> list[NodeWithScore]:
        if self.query is not None:
            raise_if_blocked(decisions[0], self.query)
        out: list[NodeWithScore] = []
        for nws, slot in zip(self.nodes, self.node_slots):
            decision = None if slot is None else decisions[slot]
            if self.pp.action == "annotate":
                out.append(self.pp._annotated(nws, decision))
                continue
            if decision is not None and decision.blocked:
                if self.pp.action == "raise":
                    raise_if_blocked(
                        decision, nws.node.get_content(metadata_mode=self.pp.metadata_mode)
                    )
                log.info("qwen3guard dropped node %s (%s)", nws.node.node_id, decision.reason)
                continue
            out.append(nws)
        return out
