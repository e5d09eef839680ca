"""Qwen3GuardChatEngine: guard any LlamaIndex chat engine, streamed answers included."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine.types import (
    AGENT_CHAT_RESPONSE_TYPE,
    AgentChatResponse,
    BaseChatEngine,
    StreamingAgentChatResponse,
)

from qwen3guard import (
    DEFAULT_REFUSAL_MESSAGE,
    METADATA_KEY,
    Decision,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    Surface,
)
from qwen3guard.content import items_to_judge
from qwen3guard.guard import raise_if_blocked

from ._common import (
    ExitBehavior,
    Messages,
    chat_messages_to_dicts,
    check_exit_behavior,
    read_chat_message,
    resolve_guard,
    response_turns,
    user_turn,
)
from ._events import atraced_stream, check_span, traced_stream
from ._stream import Moderation, amoderate_text, moderate_text

Item = tuple[Messages, Surface]


REGENERATE_RECIPE = (
    "Qwen3GuardChatEngine does not regenerate: a wrapped chat engine that streams runs its "
    "LLM to the end in its own writer thread (the abandoned try cannot be closed) and writes "
    "the whole answer to its memory. Regenerate in the query engine instead: "
    "CondenseQuestionChatEngine.from_defaults(query_engine=Qwen3GuardQueryEngine(engine, "
    "on_unsafe='regenerate')), wrapped in Qwen3GuardChatEngine(..., check_response=False) for "
    "the input checks; its memory then holds the regenerated answer"
)


class Qwen3GuardChatEngine(BaseChatEngine):
    """Wrap a chat engine so that what its LLM reads and writes is judged by Qwen3Guard.

    - Input (surface ``input``), before the wrapped engine runs (so a blocked message never
      reaches condensing, retrieval or the LLM): the new message in the context of the
      ``chat_history`` passed in, and every message of that history on its own (a history is
      client-supplied: an unsafe earlier turn followed by "thanks" is caught). The engine's own
      memory holds only turns that were judged when they were made.
    - Output (surface ``output``): a complete answer with the message as context; a streamed
      answer through the core :class:`qwen3guard.StreamGate` (only settled text reaches the
      reader, none of a flagged span).

    A blocked message or answer raises :class:`~qwen3guard.Qwen3GuardViolation`
    (``exit_behavior="error"``) or is replaced by ``violation_message`` (``"replace"``). A
    blocked answer is replaced by ``violation_message`` in the engine's memory too (best effort:
    engines that keep a ``_memory`` / ``memory`` with ``get_all`` / ``set``), so the next turn's
    LLM does not read it. A wrapped engine that streams writes its memory from its own thread
    and runs its LLM to the end: the cut applies to the reader, and the memory is fixed once
    the stream ends. Retrieved context is judged by :class:`Qwen3GuardNodePostprocessor`.

    Roll back and regenerate (``on_unsafe="regenerate"``) is not an option here, for the
    reason above: the wrapped engine's writer thread drains the LLM and writes the unsafe try
    to memory. The recipe is a ``CondenseQuestionChatEngine`` over
    ``Qwen3GuardQueryEngine(engine, on_unsafe="regenerate")`` (its writer thread reads the
    regenerated stream, so the memory holds the one clean answer), wrapped here with
    ``check_response=False`` for the input checks (:data:`REGENERATE_RECIPE`).
    """

    def __init__(
        self,
        chat_engine: BaseChatEngine,
        guard: Qwen3Guard | None = None,
        *,
        policy: Policy | None = None,
        check_input: bool = True,
        check_response: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_REFUSAL_MESSAGE,
    ) -> None:
        self._engine = chat_engine
        self._guard = guard
        self.policy: Policy | None = policy
        self.check_input = check_input
        self.check_response = check_response
        if exit_behavior == "regenerate":
            raise ValueError(REGENERATE_RECIPE)
        self.exit_behavior: ExitBehavior = check_exit_behavior(exit_behavior)
        self.violation_message = violation_message

    @property
    def guard(self) -> Qwen3Guard:
        """The guard in use (the process-wide default when none was passed)."""
        return resolve_guard(self._guard)

    @property
    def chat_engine(self) -> BaseChatEngine:
        """The wrapped engine."""
        return self._engine

    @property
    def chat_history(self) -> list[ChatMessage]:
        return self._engine.chat_history

    def reset(self) -> None:
        self._engine.reset()

    # -- sync and async: the same steps, only the waiting differs ----------------------------

    def chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> AGENT_CHAT_RESPONSE_TYPE:
        items, blocked = self._input_items(message, chat_history)
        if blocked is None and items:
            blocked = self._blocked_input(self._screen_batch(items))
        if blocked is not None:
            return self._refused(blocked, message, AgentChatResponse)
        response = self._engine.chat(message, chat_history)
        if isinstance(response, StreamingAgentChatResponse):
            return self._stream(response, message)
        if (answer := self._answer_messages(message, response.response)) is None:
            return response
        decision = self._screen(answer)
        return self._judged(response, decision)

    async def achat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> AGENT_CHAT_RESPONSE_TYPE:
        items, blocked = self._input_items(message, chat_history)
        if blocked is None and items:
            decisions = await self._ascreen_batch(items)
            blocked = self._blocked_input(decisions)
        if blocked is not None:
            return self._refused(blocked, message, AgentChatResponse)
        response = await self._engine.achat(message, chat_history)
        if isinstance(response, StreamingAgentChatResponse):
            return self._stream(response, message)
        if (answer := self._answer_messages(message, response.response)) is None:
            return response
        decision = await self._ascreen(answer)
        return self._judged(response, decision)

    def stream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        items, blocked = self._input_items(message, chat_history)
        if blocked is None and items:
            blocked = self._blocked_input(self._screen_batch(items))
        if blocked is not None:
            return self._refused(blocked, message, _RefusedStream)
        return self._stream(self._engine.stream_chat(message, chat_history), message)

    async def astream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        items, blocked = self._input_items(message, chat_history)
        if blocked is None and items:
            decisions = await self._ascreen_batch(items)
            blocked = self._blocked_input(decisions)
        if blocked is not None:
            return self._refused(blocked, message, _RefusedStream)
        return self._stream(await self._engine.astream_chat(message, chat_history), message)

    def _screen_batch(self, items: list[Item]) -> list[Decision]:
        with check_span(self):
            return self.guard.screen_batch(items, policy=self.policy)

    async def _ascreen_batch(self, items: list[Item]) -> list[Decision]:
        with check_span(self):
            return await self.guard.ascreen_batch(items, policy=self.policy)

    def _screen(self, answer: Messages) -> Decision:
        with check_span(self):
            return self.guard.screen(answer, Surface.OUTPUT, policy=self.policy)

    async def _ascreen(self, answer: Messages) -> Decision:
        with check_span(self):
            return await self.guard.ascreen(answer, Surface.OUTPUT, policy=self.policy)

    # -- what is judged -----------------------------------------------------------------------

    def _input_items(
        self, message: str, chat_history: Sequence[Any] | None
    ) -> tuple[list[Item], Decision | None]:
        """What to judge before the engine runs: each text of each given history message on
        its own (the core's :func:`~qwen3guard.content.items_to_judge`), then the new message
        after the history; or, for a history message that cannot be judged (a block no text
        guard can read, text that cannot be encoded), the block that refuses it."""
        if not self.check_input:
            return [], None
        items: list[Item] = []
        for m in chat_history or []:
            try:
                items += items_to_judge(read_chat_message(m))
            except InvalidInputError as exc:
                return [], Decision(False, None, Surface.INPUT, f"cannot be judged: {exc}",
                                    error=exc)
        if message and message.strip():
            context = chat_messages_to_dicts(chat_history or [])
            items.append(([*context, *user_turn(message)], Surface.INPUT))
        return items, None

    def _answer_messages(self, message: str, text: str | None) -> Messages | None:
        if not self.check_response or not text or not text.strip():
            return None
        return response_turns(message or None, text)

    def _stream(
        self, inner: StreamingAgentChatResponse, message: str
    ) -> StreamingAgentChatResponse:
        return _GuardedStream(self, inner, message) if self.check_response else inner

    @staticmethod
    def _blocked_input(decisions: Sequence[Decision]) -> Decision | None:
        return next((d for d in decisions if d.blocked), None)

    # -- outcomes -----------------------------------------------------------------------------

    def _refused(self, decision: Decision, message: str, kind: Any) -> Any:
        if self.exit_behavior == "error":
            raise_if_blocked(decision, message)
        return kind(response=self.violation_message)

    def _judged(self, response: AgentChatResponse, decision: Decision) -> AgentChatResponse:
        if decision.allowed:
            return response
        self._scrub_memory()
        if self.exit_behavior == "error":
            raise_if_blocked(decision, response.response)
        out = AgentChatResponse(
            response=self.violation_message,
            sources=list(response.sources),
            source_nodes=list(response.source_nodes),
            metadata={**(response.metadata or {}),
                      METADATA_KEY: {"blocked": "output", "output": decision.to_dict()}},
        )
        return out

    def _scrub_memory(self) -> None:
        """Replace a blocked answer in the engine's memory by the violation message."""
        memory = getattr(self._engine, "_memory", None) or getattr(self._engine, "memory", None)
        get_all, set_ = getattr(memory, "get_all", None), getattr(memory, "set", None)
        if not (callable(get_all) and callable(set_)):
            return
        with contextlib.suppress(Exception):  # best effort: the engine's memory is its own
            messages = list(get_all())
            for i in range(len(messages) - 1, -1, -1):  # the last assistant turn is the answer
                if messages[i].role == MessageRole.ASSISTANT:
                    messages[i] = ChatMessage(
                        role=MessageRole.ASSISTANT, content=self.violation_message
                    )
                    set_(messages)
                    return

    def _on_block(self, run: Moderation[str]) -> Iterator[str]:
        if self.exit_behavior == "error":
            raise run.error()
        yield self.violation_message


class _RefusedStream(StreamingAgentChatResponse):
    """A streamed reply that is only the violation message (the message was blocked)."""

    def __init__(self, response: str) -> None:
        super().__init__(response=response, is_writing_to_memory=False)
        self.is_done = True

    @property
    def response_gen(self) -> Generator[str, None, None]:
        yield self.response

    async def async_response_gen(self) -> AsyncGenerator[str, None]:
        yield self.response


class _GuardedStream(StreamingAgentChatResponse):
    """The wrapped engine's streamed reply, moderated through the core gate as it is read."""

    metadata: dict[str, Any]

    def __init__(
        self, owner: Qwen3GuardChatEngine, inner: StreamingAgentChatResponse, message: str
    ) -> None:
        super().__init__(
            response="",
            sources=inner.sources,
            source_nodes=inner.source_nodes,
            is_writing_to_memory=False,
        )
        self._owner = owner
        self._inner = inner
        self._prompt = user_turn(message) if message and message.strip() else None
        self.moderation: Moderation[str] | None = None

    def _done(self, run: Moderation[str]) -> None:
        self.moderation = run
        self.is_done = True
        self.metadata = {METADATA_KEY: {"output": run.info(),
                                        **({"blocked": "output"} if run.blocked else {})}}

    def _finish(self) -> None:
        run = self.moderation
        if run is not None and run.blocked:
            self._owner._scrub_memory()
        self.response = self.unformatted_response.strip()

    @property
    def response_gen(self) -> Generator[str, None, None]:
        gen = traced_stream(self._owner, moderate_text(
            self._inner.response_gen,
            self._owner.guard,
            self._prompt,
            policy=self._owner.policy,
            on_block=self._owner._on_block,
            on_done=self._done,
        ))
        try:
            for text in gen:
                self.unformatted_response += text
                yield text
        finally:
            gen.close()
            self._finish()

    async def async_response_gen(self) -> AsyncGenerator[str, None]:
        gen = atraced_stream(self._owner, amoderate_text(
            self._inner.async_response_gen(),
            self._owner.guard,
            self._prompt,
            policy=self._owner.policy,
            on_block=self._owner._on_block,
            on_done=self._done,
        ))
        try:
            async for text in gen:
                self.unformatted_response += text
                yield text
        finally:
            await gen.aclose()
            self._finish()
