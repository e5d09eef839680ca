"""Callback handlers that judge what any LangChain run sees and says.

    handler = Qwen3GuardCallbackHandler(guard)
    for chunk in llm.stream("...", config={"callbacks": [handler]}): ...

- ``on_chat_model_start`` / ``on_llm_start``: the prompt is judged (surface ``input``) and a
  Stream session is opened for the run (a prompt the Stream model cannot take is judged by
  Gen, in windows; a prompt the guard cannot read at all is blocked);
- ``on_llm_new_token``: each token (its text and reasoning) is fed to the run's session; when
  the answer is flagged the handler raises. LangChain calls ``on_llm_new_token`` *before* it
  yields the chunk, so ``llm.stream()`` stops with :class:`qwen3guard.Qwen3GuardViolation`
  before the chunk that made the flag reaches the caller (what came before it has been
  yielded: to hold chunks back until they are settled, use ``Qwen3GuardChatModel`` or
  ``Qwen3GuardRunnable``);
- ``on_llm_end``: the session is closed (its held-back text judged); an answer that was not
  streamed is judged whole here (text and reasoning), so ``invoke()`` raises instead of
  returning it; the tool calls the model made (``bind_tools``, ``with_structured_output``,
  invalid ones, ``additional_kwargs``) are judged on the surface ``tool_call``;
- ``on_tool_start`` / ``on_tool_end``: the tool's input (surface ``tool_call``, before the
  tool runs) and its output (surface ``tool_result``, before the caller gets it);
- ``on_retriever_end``: the retrieved documents (surface ``retrieval``, batched).

Sessions are closed on ``on_llm_error`` and at the end of every run. ``raise_error`` is True:
LangChain would otherwise log the violation and carry on. The guard's own model calls do not
go through LangChain callbacks, so they never appear as LLM runs or tokens.

:class:`Qwen3GuardCallbackHandler` and :class:`AsyncQwen3GuardCallbackHandler` share one
core (generators that ask for guard calls); they differ only in how they wait.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    GenerationChunk,
    LLMResult,
)

from qwen3guard import (
    Decision,
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    StreamSession,
    Surface,
    get_default_guard,
)
from qwen3guard import content as _content
from qwen3guard.guard import could_not_judge, raise_if_blocked

from ._convert import (
    GuardMessage,
    chunk_text,
    message_content,
    messages_to_guard,
    structured_output_of,
    text_of_value,
)
from ._streaming import Core, Op, arun, run, screen_batch_op, screen_op, screen_prompt

_FAILURES = (GuardUnavailableError, GuardOutputError)


def tool_call_conversation(name: str | None, args: Any) -> list[GuardMessage]:
    """How a tool call is judged (:func:`qwen3guard.content.tool_call_conversation`); LangChain
    messages and documents are read as their text."""
    return _content.tool_call_conversation(name, _plain(args))


def tool_result_conversation(output: Any) -> list[GuardMessage]:
    """How a tool result is judged (:func:`qwen3guard.content.tool_result_conversation`)."""
    return _content.tool_result_conversation(_plain(output))


def document_conversation(doc: Document | str) -> list[GuardMessage]:
    text = doc.page_content if isinstance(doc, Document) else str(doc)
    return [{"role": "user", "content": text}] if text.strip() else []


def _plain(value: Any) -> Any:
    if isinstance(value, (BaseMessage, Document)):
        return text_of_value(value)
    return value


class _Base:
    """The shared core of both handlers: each hook is a generator that asks for guard calls
    (:class:`langchain_qwen3guard._streaming.Op`) and raises when the policy blocks."""

    def __init__(
        self,
        guard: Qwen3Guard | None = None,
        *,
        policy: Policy | None = None,
        check_input: bool = True,
        check_output: bool = True,
        check_tool_calls: bool = True,
        check_tool_results: bool = True,
        check_retrieval: bool = True,
    ) -> None:
        self.guard = guard
        self.policy = policy
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_calls = check_tool_calls
        self.check_tool_results = check_tool_results
        self.check_retrieval = check_retrieval
        self._sessions: dict[UUID, StreamSession] = {}
        self._prompts: dict[UUID, list[GuardMessage]] = {}  # a run's prompt, for its answer
        self._lock = threading.Lock()

    @property
    def _guard(self) -> Qwen3Guard:
        return self.guard if self.guard is not None else get_default_guard()

    @property
    def _policy(self) -> Policy:
        return self.policy if self.policy is not None else self._guard.policy

    def _put(self, run_id: UUID, session: StreamSession) -> None:
        with self._lock:
            self._sessions[run_id] = session

    def _get(self, run_id: UUID) -> StreamSession | None:
        with self._lock:
            return self._sessions.get(run_id)

    def _pop(self, run_id: UUID) -> StreamSession | None:
        with self._lock:
            return self._sessions.pop(run_id, None)

    def _remember(self, run_id: UUID, prompt: list[GuardMessage]) -> None:
        if prompt:
            with self._lock:
                self._prompts[run_id] = prompt

    def _forget(self, run_id: UUID) -> list[GuardMessage]:
        with self._lock:
            return self._prompts.pop(run_id, [])

    @property
    def open_sessions(self) -> int:
        """Sessions currently open (one per LLM run in progress)."""
        with self._lock:
            return len(self._sessions)

    # -- the shared core ----------------------------------------------------------------------

    def _open_op(self, prompt: list[GuardMessage] | None) -> Op:
        g = self._guard
        return Op(g.open_stream, g.aopen_stream, prompt, policy=self.policy)

    def _start(self, run_id: UUID, prompt: list[GuardMessage]) -> Core[None]:
        if not (self.check_input or self.check_output):
            return
        text = prompt[-1]["content"] if prompt else ""
        if not self.check_output:
            if prompt:
                decision = yield from screen_prompt(self._guard, prompt, self.policy)
                raise_if_blocked(decision, text)
            return
        session_prompt = _session_prompt(prompt)
        gen_decision: Decision | None = None
        try:
            session: StreamSession = yield self._open_op(session_prompt)
        except _FAILURES as exc:
            raise_if_blocked(could_not_judge(self._policy, exc, Surface.INPUT), text)
            return
        except InvalidInputError:  # too long for Stream even with Gen, or unreadable
            if session_prompt is None:
                raise
            # The prompt is judged by Gen (windows) or blocked; the answer with no prompt.
            # It never takes the verdict of a stand-in prompt.
            if self.check_input:
                gen_decision = yield from screen_prompt(self._guard, prompt, self.policy)
                raise_if_blocked(gen_decision, text)
            try:
                session = yield self._open_op(None)
            except _FAILURES as exc2:
                raise_if_blocked(could_not_judge(self._policy, exc2, Surface.INPUT), text)
                return
        if self.check_input and prompt and gen_decision is None:
            decision = self._policy.decide(session.prompt_verdict, Surface.INPUT)
            if decision.blocked:
                yield Op(session.close, session.aclose)
                raise_if_blocked(decision, text)
        self._remember(run_id, prompt)
        self._put(run_id, session)

    def _token(self, run_id: UUID, token: Any, chunk: Any) -> Core[None]:
        session = self._get(run_id)
        text = _token_text(token, chunk)
        if session is None or not text:
            return
        try:
            update = yield Op(session.feed_text, session.afeed_text, text)
        except _FAILURES as exc:
            yield from self._fail(run_id, exc, session)
            return
        if update.flagged:
            decision = self._flag_decision(update.verdict)
            self._pop(run_id)
            yield Op(session.close, session.aclose)
            raise_if_blocked(decision, session.response_text)

    def _end(self, response: LLMResult, run_id: UUID) -> Core[None]:
        session = self._pop(run_id)
        prompt = self._forget(run_id)
        message = _generated_message(response)
        if session is not None:
            try:
                if session.tokens_seen == 0 and not session.response_text:
                    said = _generated_text(response, message)
                    if said:
                        yield Op(session.feed_text, session.afeed_text, said)
                update = yield Op(session.close, session.aclose)
            except _FAILURES as exc:
                yield Op(session.close, session.aclose)
                decision = could_not_judge(self._policy, exc, Surface.OUTPUT)
                raise_if_blocked(decision, session.response_text)
            else:
                if update.flagged:
                    raise_if_blocked(self._flag_decision(update.verdict), session.response_text)
        if message is None:
            return
        # Data that is not streamed answer text, judged whole by Gen: the tool calls the model
        # made (surface tool_call) and a structured output (as the answer, surface output).
        items: list[tuple[list[GuardMessage], Surface]] = []
        shown: list[str] = []
        if self.check_tool_calls:
            for call in message_content(message, non_text="skip").tool_calls:
                items.append((_content.tool_call_conversation(call.name, call.arguments),
                              Surface.TOOL_CALL))
                shown.append(call.render())
        structured = structured_output_of(message)
        if self.check_output and structured is not None and structured.strip():
            items.append((_content.answer_conversation(prompt,
                                                       structured), Surface.OUTPUT))
            shown.append(structured)
        if items:
            decisions = yield screen_batch_op(self._guard, items, self.policy)
            for text, decision in zip(shown, decisions):
                raise_if_blocked(decision, text)

    def _error(self, run_id: UUID) -> Core[None]:
        self._forget(run_id)
        session = self._pop(run_id)
        if session is not None:
            yield Op(session.close, session.aclose)

    def _fail(self, run_id: UUID, exc: BaseException, session: StreamSession) -> Core[None]:
        self._pop(run_id)
        yield Op(session.close, session.aclose)
        raise_if_blocked(could_not_judge(self._policy, exc, Surface.OUTPUT), "")

    def _flag_decision(self, verdict: Any) -> Decision:
        decision = self._policy.decide(verdict, Surface.OUTPUT)
        if decision.allowed:  # the session flags only what its policy blocks
            decision = Decision(False, verdict, Surface.OUTPUT, "flagged by the stream session")
        return decision

    def _tool_start(self, serialized: dict[str, Any], input_str: str,
                    inputs: dict[str, Any] | None, kwargs: dict[str, Any]) -> Core[None]:
        if not self.check_tool_calls:
            return
        name = (serialized or {}).get("name") or kwargs.get("name")
        conv = tool_call_conversation(name, inputs if inputs is not None else input_str)
        decision = yield screen_op(self._guard, conv, Surface.TOOL_CALL, self.policy)
        raise_if_blocked(decision, conv[-1]["content"] if conv else input_str)

    def _tool_end(self, output: Any) -> Core[None]:
        if not self.check_tool_results:
            return
        conv = tool_result_conversation(output)
        decision = yield screen_op(self._guard, conv, Surface.TOOL_RESULT, self.policy)
        raise_if_blocked(decision, conv[-1]["content"] if conv else "")

    def _retrieved(self, documents: Sequence[Document]) -> Core[None]:
        if not self.check_retrieval or not documents:
            return
        items = [(document_conversation(d), Surface.RETRIEVAL) for d in documents]
        decisions = yield screen_batch_op(self._guard, items, self.policy)
        for doc, decision in zip(documents, decisions):
            raise_if_blocked(decision, doc.page_content)

    @staticmethod
    def _prompt_of_llm(prompts: list[str]) -> list[GuardMessage]:
        return [{"role": "user", "content": prompts[0]}] if prompts and prompts[0].strip() else []

    @staticmethod
    def _prompt_of_chat(messages: list[list[BaseMessage]]) -> list[GuardMessage]:
        return messages_to_guard(messages[0]) if messages else []


class Qwen3GuardCallbackHandler(_Base, BaseCallbackHandler):
    """Judge prompts, stream tokens, tool calls and results, and retrieved documents of every
    run the handler is attached to; raise :class:`qwen3guard.Qwen3GuardViolation` when the
    policy blocks (see the module docstring)."""

    raise_error: bool = True
    run_inline: bool = True

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        run(self._start(run_id, self._prompt_of_chat(messages)))

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        run(self._start(run_id, self._prompt_of_llm(prompts)))

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        run(self._token(run_id, token, chunk))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run(self._end(response, run_id))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run(self._error(run_id))

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run(self._tool_start(serialized, input_str, inputs, kwargs))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run(self._tool_end(output))

    def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        run(self._retrieved(documents))


class AsyncQwen3GuardCallbackHandler(_Base, AsyncCallbackHandler):
    """The async form of :class:`Qwen3GuardCallbackHandler` (guard calls never block the
    event loop)."""

    raise_error: bool = True
    run_inline: bool = True

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        await arun(self._start(run_id, self._prompt_of_chat(messages)))

    async def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        await arun(self._start(run_id, self._prompt_of_llm(prompts)))

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        await arun(self._token(run_id, token, chunk))

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        await arun(self._end(response, run_id))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        await arun(self._error(run_id))

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await arun(self._tool_start(serialized, input_str, inputs, kwargs))

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        await arun(self._tool_end(output))

    async def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        await arun(self._retrieved(documents))


# -- helpers ----------------------------------------------------------------------------------


def _session_prompt(conversation: list[GuardMessage]) -> list[GuardMessage] | None:
    conv = list(conversation)
    if conv and conv[-1]["role"] in ("assistant", "system"):
        conv[-1] = {"role": "user", "content": conv[-1]["content"]}
    return conv or None


def _token_text(token: Any, chunk: Any) -> str:
    """The text a streamed token adds: the chunk's text and reasoning when LangChain passes the
    chunk, else the token string."""
    message = getattr(chunk, "message", None)
    if isinstance(message, BaseMessage):
        return chunk_text(message)
    return token if isinstance(token, str) else ""


def _generated_message(response: LLMResult) -> BaseMessage | None:
    try:
        gen = response.generations[0][0]
    except IndexError:
        return None
    return gen.message if isinstance(gen, ChatGeneration) else None


def _generated_text(response: LLMResult, message: BaseMessage | None) -> str:
    if message is not None:
        return message_content(message).said
    try:
        return response.generations[0][0].text or ""
    except IndexError:
        return ""
