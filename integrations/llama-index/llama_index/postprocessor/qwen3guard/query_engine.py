"""Qwen3GuardQueryEngine: guard any LlamaIndex query engine, streamed answers included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, Literal

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
from qwen3guard.stream.intervene import (
    DEFAULT_BUFFER_TOKENS,
    DEFAULT_INSTRUCTION,
    DEFAULT_MAX_RETRIES,
    Intervention,
    aintervene,
    intervene,
)

from ._common import (
    Messages,
    check_exit_behavior,
    check_hold_back,
    resolve_guard,
    response_turns,
    user_turn,
)
from ._events import atraced_stream, check_span, traced_stream
from ._regenerate import (
    Continuation,
    LLMCall,
    Request,
    acaptured,
    astream_continuation,
    capture_llm_call,
    captured,
    check_continuation,
    continuation_request,
    last_flag,
    resolve_continuation,
    stream_continuation,
    summary,
)
from ._stream import Moderation, amoderate_text, empty_text, moderate_text

OnUnsafe = Literal["error", "replace", "regenerate"]


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

    ``exit_behavior="regenerate"`` (``on_unsafe`` is another name for ``exit_behavior``, as in
    the LangChain integration) rolls a flagged answer back and has the LLM continue it instead
    (the core :func:`qwen3guard.stream.intervene.intervene`): the answer, streamed or not, is
    moderated by the Stream model; text reaches the reader once settled and ``buffer_tokens``
    judged tokens behind the moderation head; on a flag the unreleased text is dropped from
    the start of the flagged sentence, the LLM's stream is closed, and the LLM the wrapped
    engine used (``llm`` overrides it) is asked to continue the kept prefix with the request
    the wrapped engine made (``continuation``: ``"prefill"``, ``"instruction"`` or ``"auto"``;
    ``instruction`` is the corrective template with ``{categories}`` and ``{kept}``), at most
    ``max_retries`` times; then the answer ends with ``violation_message``. The reader gets
    one answer (the kept prefix and the continuation) and no character of a flagged span;
    ``metadata["qwen3guard"]["intervention"]`` has the retries and the flag decisions. A
    blocked query is answered as with ``"replace"``.

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
        exit_behavior: OnUnsafe | None = None,
        violation_message: str = DEFAULT_REFUSAL_MESSAGE,
        hold_back_tokens: int | None = None,
        hold_back_chunks: int | None = None,
        callback_manager: CallbackManager | None = None,
        on_unsafe: OnUnsafe | None = None,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        instruction: str = DEFAULT_INSTRUCTION,
        continuation: Continuation = "auto",
        llm: Any | None = None,
    ) -> None:
        self._query_engine = query_engine
        self._guard = guard
        self.policy: Policy | None = policy
        self.check_query = check_query
        self.check_response = check_response
        self.exit_behavior: OnUnsafe = _on_unsafe(exit_behavior, on_unsafe)
        for name, value in (("buffer_tokens", buffer_tokens), ("max_retries", max_retries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        self.buffer_tokens = buffer_tokens
        self.max_retries = max_retries
        self.instruction = instruction
        self.continuation: Continuation = check_continuation(continuation)
        self.llm = llm
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
            decision = self._screen(msgs, Surface.INPUT)
            if decision.blocked:
                return self._blocked_query(decision, query)
        with capture_llm_call() as call:
            response = self._query_engine.query(query_bundle)
        if self._regenerates(response):
            return self._regenerate(response, query, call)
        if (answer := self._answer_messages(response, query)) is None:
            return self._guard_stream(response, query)
        decision = self._screen(answer, Surface.OUTPUT)
        return self._judged(response, decision, answer[-1]["content"])

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        query = query_bundle.query_str
        if (msgs := self._query_messages(query)) is not None:
            decision = await self._ascreen(msgs, Surface.INPUT)
            if decision.blocked:
                return self._blocked_query(decision, query)
        with capture_llm_call() as call:
            response = await self._query_engine.aquery(query_bundle)
        if self._regenerates(response):
            return await self._aregenerate(response, query, call)
        if (answer := self._answer_messages(response, query)) is None:
            return self._guard_stream(response, query)
        decision = await self._ascreen(answer, Surface.OUTPUT)
        return self._judged(response, decision, answer[-1]["content"])

    def _screen(self, messages: Messages, surface: Surface) -> Decision:
        with check_span(self):
            return self.guard.screen(messages, surface, policy=self.policy)

    async def _ascreen(self, messages: Messages, surface: Surface) -> Decision:
        with check_span(self):
            return await self.guard.ascreen(messages, surface, policy=self.policy)

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
            sync.response_gen = traced_stream(self, moderate_text(
                response.response_gen,
                self.guard,
                prompt,
                policy=self.policy,
                on_block=self._on_block,
                on_done=lambda run: _record(sync, run),
            ))
            return sync
        if isinstance(response, AsyncStreamingResponse):
            gen = atraced_stream(self, amoderate_text(
                response.response_gen,
                self.guard,
                prompt,
                policy=self.policy,
                on_block=self._on_block,
                on_done=lambda run: _record(guarded, run),
            ))
            guarded = AsyncStreamingResponse(
                response_gen=gen,
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
            return guarded
        return response

    # -- roll back and regenerate -------------------------------------------------------------

    def _regenerates(self, response: Any) -> bool:
        """Whether ``response`` is moderated by the regenerate loop (a structured answer is
        judged whole, and replaced when blocked)."""
        if self.exit_behavior != "regenerate" or not self.check_response:
            return False
        if isinstance(response, PydanticResponse):
            return False
        policy = self.policy if self.policy is not None else self.guard.policy
        return policy.is_enabled(Surface.OUTPUT)

    def _loop_options(self, record: Intervention) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "buffer_tokens": self.buffer_tokens,
            "max_retries": self.max_retries,
            "instruction": self.instruction,
            "refusal": self.violation_message,
            "record": record,
            "check_prompt": False,  # the query was judged (or not, by choice) before
        }

    def _continuer(self, call: LLMCall, query: str) -> tuple[Any, Any]:
        """The LLM to continue with, and ``(kept, instruction) -> Request``."""
        llm = self.llm if self.llm is not None else call.llm
        if llm is None:
            llm = _engine_llm(self._query_engine)
        if llm is None:
            raise ValueError(
                "on_unsafe='regenerate': the wrapped query engine's LLM is not known; pass "
                "llm= to Qwen3GuardQueryEngine"
            )

        def request(kept: str, instruction: str) -> Request:
            # resolved at the first retry: a streaming synthesizer calls its LLM lazily
            chat = call.prompt is None or call.messages is not None
            mode = resolve_continuation(llm, self.continuation, chat=chat)
            return continuation_request(call, query, kept, instruction, mode)

        return llm, request

    def _regenerate(self, response: Any, query: str, call: LLMCall) -> RESPONSE_TYPE:
        prompt = user_turn(query) if query.strip() else None
        llm, request = self._continuer(call, query)
        record = Intervention()

        def again(kept: str, instruction: str) -> Iterator[str]:
            return stream_continuation(llm, request(kept, instruction))

        if (
            isinstance(response, StreamingResponse)
            and response.response_gen is not None
            and response.response_txt is None
        ):
            upstream = captured(response.response_gen, call)
            sync = StreamingResponse(
                response_gen=empty_text(),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
                response_txt=None,
            )

            def released() -> Generator[str, None, None]:
                try:
                    yield from intervene(
                        self.guard, prompt, upstream, again, **self._loop_options(record)
                    )
                finally:
                    _record_intervention(sync, record)

            sync.response_gen = traced_stream(self, released())
            return sync
        text = (
            response.response_txt or ""
            if isinstance(response, StreamingResponse)
            else _text_of(response)
        )
        if not text.strip():
            return response
        answer = "".join(traced_stream(
            self, intervene(self.guard, prompt, [text], again, **self._loop_options(record))
        ))
        return self._regenerated(response, answer, record)

    async def _aregenerate(self, response: Any, query: str, call: LLMCall) -> RESPONSE_TYPE:
        prompt = user_turn(query) if query.strip() else None
        llm, request = self._continuer(call, query)
        record = Intervention()

        def again(kept: str, instruction: str) -> AsyncIterator[str]:
            return astream_continuation(llm, request(kept, instruction))

        if isinstance(response, AsyncStreamingResponse):
            upstream = acaptured(response.response_gen, call)

            async def released() -> AsyncIterator[str]:
                try:
                    async for text in aintervene(
                        self.guard, prompt, upstream, again, **self._loop_options(record)
                    ):
                        yield text
                finally:
                    _record_intervention(guarded, record)

            guarded = AsyncStreamingResponse(
                response_gen=atraced_stream(self, released()),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
            return guarded
        if isinstance(response, StreamingResponse) and response.response_txt is None:
            # a sync stream from an async query: consumed here, then judged whole
            response.get_response()
        text = (
            response.response_txt or ""
            if isinstance(response, StreamingResponse)
            else _text_of(response)
        )
        if not text.strip():
            return response
        answer = "".join(
            [
                t
                async for t in atraced_stream(self, aintervene(
                    self.guard, prompt, _one(text), again, **self._loop_options(record)
                ))
            ]
        )
        return self._regenerated(response, answer, record)

    def _regenerated(self, response: Any, answer: str, record: Intervention) -> RESPONSE_TYPE:
        """A complete answer after the loop: unchanged when nothing was flagged."""
        if not any(a.flagged for a in record.attempts):
            return response
        out: Any
        if isinstance(response, StreamingResponse):
            out = StreamingResponse(
                response_gen=empty_text(),
                source_nodes=list(response.source_nodes),
                metadata=dict(response.metadata or {}),
                response_txt=answer,
            )
        else:
            out = Response(
                answer,
                source_nodes=list(response.source_nodes),
                metadata=dict(response.metadata or {}),
            )
        _record_intervention(out, record)
        return out


def _on_unsafe(exit_behavior: str | None, on_unsafe: str | None) -> OnUnsafe:
    if exit_behavior is not None and on_unsafe is not None and exit_behavior != on_unsafe:
        raise ValueError(
            f"on_unsafe={on_unsafe!r} and exit_behavior={exit_behavior!r} "
            "disagree: give one of them"
        )
    value = on_unsafe if on_unsafe is not None else exit_behavior or "error"
    if value == "regenerate":
        return "regenerate"
    try:
        return check_exit_behavior(value)
    except ValueError:
        raise ValueError(
            f"exit_behavior must be 'error', 'replace' or 'regenerate', not {value!r}"
        ) from None


def _engine_llm(engine: Any) -> Any:
    """The LLM of a wrapped engine's response synthesizer, where it has one."""
    synth = getattr(engine, "_response_synthesizer", None)
    return getattr(synth, "_llm", None)


async def _one(text: str) -> AsyncIterator[str]:
    yield text


def _record_intervention(response: Any, record: Intervention) -> None:
    """Write what the regenerate loop did to the response's metadata (when a try was flagged;
    never the flagged text)."""
    if not any(a.flagged for a in record.attempts):
        return
    if response.metadata is None:
        response.metadata = {}
    entry = dict(response.metadata.get(METADATA_KEY) or {})
    entry["intervention"] = summary(record)
    if record.refused:
        entry["blocked"] = "output"
        decision = last_flag(record)
        if decision is not None:
            entry["output"] = decision.to_dict()
    response.metadata[METADATA_KEY] = entry


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
