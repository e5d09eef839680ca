"""Qwen3GuardQueryEngine: guard any LlamaIndex query engine, streamed answers included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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

from qwen3guard import Decision, Qwen3Guard

from ._common import (
    DEFAULT_VIOLATION_MESSAGE,
    METADATA_KEY,
    ExitBehavior,
    check_exit_behavior,
    decision_info,
    resolve_guard,
    response_turns,
    user_turn,
    violation,
)
from ._stream import StreamGate, amoderate_text, moderate_text


class Qwen3GuardQueryEngine(BaseQueryEngine):
    """Wrap a query engine so that its queries and answers are judged by Qwen3Guard.

    - The query is judged (surface ``input``) before the wrapped engine runs, so a blocked
      query never reaches retrieval or the LLM.
    - A complete answer is judged after synthesis with the query as context
      (``check_response``, surface ``output``).
    - A streamed answer (``StreamingResponse`` / ``AsyncStreamingResponse``) is moderated token
      by token through a Stream session (``guard.open_stream``). Text reaches the consumer
      ``hold_back_chunks`` chunks late (default 3: with word-sized chunks the session's flag
      arrives about three chunks after the flagged span began, as it judges a token only once
      the next text shows where it ends and then debounces over two tokens), so the flagged
      span is usually not shown; on a flag the upstream generator is closed at once and the
      consumer gets only the text before the flagged span's start.

    A blocked query or answer raises :class:`~qwen3guard.Qwen3GuardViolation`
    (``exit_behavior="error"``) or is replaced by ``violation_message``
    (``exit_behavior="replace"``; in a stream the message is the last chunk). Source nodes of
    the wrapped engine's response are kept; a replaced response's ``metadata["qwen3guard"]``
    says what was blocked and why. A safe answer is returned unchanged.
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        guard: Qwen3Guard | None = None,
        *,
        check_query: bool = True,
        check_response: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_VIOLATION_MESSAGE,
        hold_back_chunks: int = 3,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if hold_back_chunks < 0:
            raise ValueError("hold_back_chunks must be >= 0")
        self._query_engine = query_engine
        self._guard = guard
        self.check_query = check_query
        self.check_response = check_response
        self.exit_behavior = check_exit_behavior(exit_behavior)
        self.violation_message = violation_message
        self.hold_back_chunks = hold_back_chunks
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

    # -- sync ---------------------------------------------------------------------------------

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        guard = self.guard
        query = query_bundle.query_str
        if self.check_query and query.strip():
            decision = guard.screen(user_turn(query), "input")
            if decision.blocked:
                return self._blocked_query(decision, query)
        response = self._query_engine.query(query_bundle)
        if not self.check_response:
            return response
        if isinstance(response, StreamingResponse):
            return self._stream(response, query)
        if isinstance(response, AsyncStreamingResponse):
            return self._astream(response, query)
        text = _text_of(response)
        if not text:
            return response
        return self._judged(response, guard.screen(response_turns(query, text), "output"), text)

    # -- async --------------------------------------------------------------------------------

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        guard = self.guard
        query = query_bundle.query_str
        if self.check_query and query.strip():
            decision = await guard.ascreen(user_turn(query), "input")
            if decision.blocked:
                return self._blocked_query(decision, query)
        response = await self._query_engine.aquery(query_bundle)
        if not self.check_response:
            return response
        if isinstance(response, AsyncStreamingResponse):
            return self._astream(response, query)
        if isinstance(response, StreamingResponse):
            return self._stream(response, query)
        text = _text_of(response)
        if not text:
            return response
        decision = await guard.ascreen(response_turns(query, text), "output")
        return self._judged(response, decision, text)

    # -- outcomes -----------------------------------------------------------------------------

    def _blocked_query(self, decision: Decision, query: str) -> Response:
        if self.exit_behavior == "error":
            raise violation(decision, query)
        return Response(
            self.violation_message,
            source_nodes=[],
            metadata={METADATA_KEY: {"blocked": "input", "input": decision_info(decision)}},
        )

    def _judged(self, response: Any, decision: Decision, text: str) -> RESPONSE_TYPE:
        if decision.allowed:
            return response
        if self.exit_behavior == "error":
            raise violation(decision, text)
        metadata = dict(response.metadata or {})
        metadata[METADATA_KEY] = {"blocked": "output", "output": decision_info(decision)}
        return Response(
            self.violation_message, source_nodes=list(response.source_nodes), metadata=metadata
        )

    def _on_block(self, gate: StreamGate[str]) -> Iterator[str]:
        if self.exit_behavior == "error":
            raise gate.error(gate.answer)
        yield self.violation_message

    def _stream(self, response: StreamingResponse, query: str) -> StreamingResponse:
        guarded = StreamingResponse(
            response_gen=iter(()),
            source_nodes=response.source_nodes,
            metadata=response.metadata,
            response_txt=response.response_txt,
        )
        if response.response_txt is not None or response.response_gen is None:
            # Already consumed upstream: judge the whole text at once.
            text = response.response_txt or ""
            if text:
                decision = self.guard.screen(response_turns(query, text), "output")
                if decision.blocked:
                    if self.exit_behavior == "error":
                        raise violation(decision, text)
                    guarded.response_txt = self.violation_message
            return guarded
        guarded.response_gen = moderate_text(
            response.response_gen,
            self.guard,
            user_turn(query),
            hold_back=self.hold_back_chunks,
            on_block=self._on_block,
            on_done=lambda gate: _record(guarded, gate),
        )
        return guarded

    def _astream(self, response: AsyncStreamingResponse, query: str) -> AsyncStreamingResponse:
        gen: AsyncIterator[str] = amoderate_text(
            response.response_gen,
            self.guard,
            user_turn(query),
            hold_back=self.hold_back_chunks,
            on_block=self._on_block,
            on_done=lambda gate: _record(guarded, gate),
        )
        guarded = AsyncStreamingResponse(
            response_gen=gen,  # type: ignore[arg-type]
            source_nodes=response.source_nodes,
            metadata=response.metadata,
        )
        return guarded


def _text_of(response: Any) -> str:
    if isinstance(response, Response):
        return response.response or ""
    if isinstance(response, PydanticResponse):
        return response.response.model_dump_json() if response.response is not None else ""
    return str(response or "")


def _record(response: Any, gate: StreamGate[str]) -> None:
    """Write the stream's moderation outcome to the response's metadata."""
    if response.metadata is None:
        response.metadata = {}
    entry = dict(response.metadata.get(METADATA_KEY) or {})
    entry["output"] = gate.info()
    if gate.blocked:
        entry["blocked"] = "output"
    response.metadata[METADATA_KEY] = entry
