"""Qwen3GuardQueryEngine: guard any LlamaIndex query engine, streamed answers included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    PydanticResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import QueryBundle

from qwen3guard import DEFAULT_REFUSAL_MESSAGE, METADATA_KEY, Decision, Policy, Qwen3Guard, Surface
from qwen3guard.guard import raise_if_blocked

from ._common import (
    ExitBehavior,
    Messages,
    check_exit_behavior,
    check_hold_back,
    resolve_guard,
    response_turns,
    user_turn,
)
from ._stream import Moderation, amoderate_text, empty_text, moderate_text


class Qwen3GuardQueryEngine(BaseQueryEngine):
    """Wrap a query engine so that its queries and answers are judged by Qwen3Guard.

    - The query is judged (surface ``input``) before the wrapped engine runs, so a blocked
      query never reaches retrieval or the LLM.
    - A complete answer is judged after synthesis with the query as context (surface
      ``output``).
    - A streamed answer (``StreamingResponse`` / ``AsyncStreamingResponse``) is moderated token
      by token through the core :class:`qwen3guard.StreamGate`: a chunk reaches the consumer
      once the guard has judged all of its text and no later flag can start before its end, so
      the flagged span is never shown. On a flag the upstream generator is closed at once and
      the consumer gets only the text before the flagged span's start.

    A blocked query or answer raises :class:`~qwen3guard.Qwen3GuardViolation`
    (``exit_behavior="error"``) or is replaced by ``violation_message``
    (``exit_behavior="replace"``; in a stream the message is the last chunk). Source nodes of
    the wrapped engine's response are kept; ``metadata["qwen3guard"]`` says what was blocked
    and why (:meth:`qwen3guard.Decision.to_dict`). A safe complete answer is returned unchanged.
    ``policy`` overrides the guard's policy for this engine.

    ``hold_back_tokens`` (the LangChain integration's name) and ``hold_back_chunks`` (its
    former name here) are deprecated and have no effect: the gate holds back exactly the text
    that is not settled.
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        guard: Qwen3Guard | None = None,
        *,
        policy: Policy | None = None,
        check_query: bool = True,
        check_response: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_REFUSAL_MESSAGE,
        hold_back_tokens: int | None = None,
        hold_back_chunks: int | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        self._query_engine = query_engine
        self._guard = guard
        self.policy: Policy | None = policy
        self.check_query = check_query
        self.check_response = check_response
        self.exit_behavior: ExitBehavior = check_exit_behavior(exit_behavior)
        self.violation_message = violation_message
        check_hold_back(hold_back_tokens=hold_back_tokens, hold_back_chunks=hold_back_chunks)
        super().__init__(callback_manager=callback_manager or query_engine.callback_manager)

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3GuardQueryEngine"

    @property
    def guard(self) -> Qwen3Guard:
        """The guard in use (the process-wide default when none was passed)."""
        return resolve_guard(self._guard)

    @property
    def query_engine(self) -> BaseQueryEngine:
        """The wrapped engine."""
        return self._query_engine

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self._query_engine}

    # -- sync and async: the same steps, only the waiting differs ----------------------------

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        query = query_bundle.query_str
        if (msgs := self._query_messages(query)) is not None:
            decision = self.guard.screen(msgs, Surface.INPUT, policy=self.policy)
            if decision.blocked:
                return self._blocked_query(decision, query)
        response = self._query_engine.query(query_bundle)
        if (answer := self._answer_messages(response, query)) is None:
            return self._guard_stream(response, query)
        decision = self.guard.screen(answer, Surface.OUTPUT, policy=self.policy)
        return self._judged(response, decision, answer[-1]["content"])

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        query = query_bundle.query_str
        if (msgs := self._query_messages(query)) is not None:
            decision = await self.guard.ascreen(msgs, Surface.INPUT, policy=self.policy)
            if decision.blocked:
                return self._blocked_query(decision, query)
        response = await self._query_engine.aquery(query_bundle)
        if (answer := self._answer_messages(response, query)) is None:
            return self._guard_stream(response, query)
        decision = await self.guard.ascreen(answer, Surface.OUTPUT, policy=self.policy)
        return self._judged(response, decision, answer[-1]["content"])

    # -- what is judged -----------------------------------------------------------------------

    def _query_messages(self, query: str) -> Messages | None:
        return user_turn(query) if self.check_query and query.strip() else None

    def _answer_messages(self, response: Any, query: str) -> Messages | None:
        """The complete answer to judge now, or None when there is none (a live stream, which
        :meth:`_guard_stream` moderates as it flows, or nothing to check)."""
        if not self.check_response:
            return None
        if isinstance(response, AsyncStreamingResponse):
            return None
        if isinstance(response, StreamingResponse):
            if response.response_txt is None and response.response_gen is not None:
                return None
            text = response.response_txt or ""  # already consumed upstream: judged whole
        else:
            text = _text_of(response)
        return response_turns(query, text) if text.strip() else None

    # -- outcomes -----------------------------------------------------------------------------

    def _blocked_query(self, decision: Decision, query: str) -> Response:
        if self.exit_behavior == "error":
            raise_if_blocked(decision, query)
        return Response(
            self.violation_message,
            source_nodes=[],
            metadata={METADATA_KEY: {"blocked": "input", "input": decision.to_dict()}},
        )

    def _judged(self, response: Any, decision: Decision, text: str) -> RESPONSE_TYPE:
        if decision.allowed:
            return response
        if self.exit_behavior == "error":
            raise_if_blocked(decision, text)
        metadata = dict(response.metadata or {})
        metadata[METADATA_KEY] = {"blocked": "output", "output": decision.to_dict()}
        if isinstance(response, StreamingResponse):
            return StreamingResponse(
                response_gen=empty_text(),
                source_nodes=list(response.source_nodes),
                metadata=metadata,
                response_txt=self.violation_message,
            )
        return Response(
            self.violation_message, source_nodes=list(response.source_nodes), metadata=metadata
        )

    def _on_block(self, run: Moderation[str]) -> Iterator[str]:
        if self.exit_behavior == "error":
            raise run.error()
        yield self.violation_message

    def _guard_stream(self, response: Any, query: str) -> RESPONSE_TYPE:
        """A live stream, moderated as the consumer reads it (any other response as is)."""
        if not self.check_response:
            return response
        prompt = user_turn(query) if query.strip() else None  # None: judged without a question
        if isinstance(response, StreamingResponse) and response.response_gen is not None:
            sync = StreamingResponse(
                response_gen=empty_text(),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
                response_txt=None,
            )
            sync.response_gen = moderate_text(
                response.response_gen,
                self.guard,
                prompt,
                policy=self.policy,
                on_block=self._on_block,
                on_done=lambda run: _record(sync, run),
            )
            return sync
        if isinstance(response, AsyncStreamingResponse):
            gen = amoderate_text(
                response.response_gen,
                self.guard,
                prompt,
                policy=self.policy,
                on_block=self._on_block,
                on_done=lambda run: _record(guarded, run),
            )
            guarded = AsyncStreamingResponse(
                response_gen=gen,
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
            return guarded
        return response


def _text_of(response: Any) -> str:
    if isinstance(response, Response):
        return response.response or ""
    if isinstance(response, PydanticResponse):
        return response.response.model_dump_json() if response.response is not None else ""
    return str(response or "")


def _record(response: Any, run: Moderation[str]) -> None:
    """Write the stream's moderation outcome to the response's metadata."""
    if response.metadata is None:
        response.metadata = {}
    entry = dict(response.metadata.get(METADATA_KEY) or {})
    entry["output"] = run.info()
    if run.blocked:
        entry["blocked"] = "output"
    response.metadata[METADATA_KEY] = entry
