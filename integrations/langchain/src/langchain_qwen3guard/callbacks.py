"""Callback handlers that judge what any LangChain run sees and says.

    handler = Qwen3GuardCallbackHandler(guard)
    for chunk in llm.stream("...", config={"callbacks": [handler]}): ...

- ``on_chat_model_start`` / ``on_llm_start``: the prompt is judged (surface ``input``) and a
  Stream session is opened for the run;
- ``on_llm_new_token``: each token is fed to the run's session; when the answer is flagged
  the handler raises. LangChain calls ``on_llm_new_token`` *before* it yields the chunk, so
  ``llm.stream()`` stops with :class:`qwen3guard.Qwen3GuardViolation` before the chunk that
  made the flag reaches the caller (what came before it, within the debounce window, has
  been yielded: to hold chunks back as well, use ``Qwen3GuardChatModel`` or
  ``Qwen3GuardRunnable``);
- ``on_llm_end``: the session is closed (its held-back text judged); an answer that was not
  streamed is judged whole here, so ``invoke()`` raises instead of returning it;
- ``on_tool_start`` / ``on_tool_end``: the tool's input (surface ``tool_call``, before the
  tool runs) and its output (surface ``tool_result``, before the caller gets it);
- ``on_retriever_end``: the retrieved documents (surface ``retrieval``, batched).

Sessions are closed on ``on_llm_error`` and at the end of every run. ``raise_error`` is True:
LangChain would otherwise log the violation and carry on. The guard's own model calls do not
go through LangChain callbacks, so they never appear as LLM runs or tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from qwen3guard import (
    Decision,
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    Surface,
)

from ._convert import UNKNOWN_PROMPT, GuardMessage, as_text, message_text, messages_to_guard
from ._screen import (
    ascreen,
    ascreen_many,
    failed,
    policy_of,
    resolve_guard,
    screen,
    screen_many,
    violation,
)
from .chat_model import _session_prompt

_FAILURES = (GuardUnavailableError, GuardOutputError)


def tool_call_conversation(name: str | None, args: Any) -> list[GuardMessage]:
    """How a tool call is judged: its arguments as a request made to the tool."""
    text = as_text(args)
    if not text.strip():
        return []
    return [{"role": "user", "content": f"{name}: {text}" if name else text}]


def tool_result_conversation(output: Any) -> list[GuardMessage]:
    """How a tool result is judged: as input the model will read (a request, so that
    injected instructions are judged as what they are)."""
    text = as_text(output)
    return [{"role": "user", "content": text}] if text.strip() else []


def document_conversation(doc: Document | str) -> list[GuardMessage]:
    text = doc.page_content if isinstance(doc, Document) else str(doc)
    return [{"role": "user", "content": text}] if text.strip() else []


class _Base:
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
        self._sessions: dict[UUID, Any] = {}
        self._lock = threading.Lock()

    @property
    def _guard(self) -> Qwen3Guard:
        return resolve_guard(self.guard)

    @property
    def _policy(self) -> Policy:
        return policy_of(self._guard, self.policy)

    def _session_kwargs(self) -> dict[str, Any]:
        return {"policy": self.policy} if self.policy is not None else {}

    def _put(self, run_id: UUID, session: Any) -> None:
        with self._lock:
            self._sessions[run_id] = session

    def _get(self, run_id: UUID) -> Any:
        with self._lock:
            return self._sessions.get(run_id)

    def _pop(self, run_id: UUID) -> Any:
        with self._lock:
            return self._sessions.pop(run_id, None)

    @property
    def open_sessions(self) -> int:
        """Sessions currently open (one per LLM run in progress)."""
        with self._lock:
            return len(self._sessions)

    def _check_flag(self, run_id: UUID, session: Any, update: Any) -> Decision | None:
        if not getattr(update, "flagged", False):
            return None
        decision = self._policy.decide(update.verdict, Surface.OUTPUT)
        return decision if decision.blocked else None

    @staticmethod
    def _prompt_of_llm(prompts: list[str]) -> list[GuardMessage]:
        return [{"role": "user", "content": prompts[0]}] if prompts and prompts[0].strip() else []

    @staticmethod
    def _prompt_of_chat(messages: list[list[BaseMessage]]) -> list[GuardMessage]:
        return messages_to_guard(messages[0]) if messages else []

    @staticmethod
    def _generated_text(response: LLMResult) -> str:
        try:
            gen = response.generations[0][0]
        except IndexError:
            return ""
        if isinstance(gen, ChatGeneration):
            return message_text(gen.message)
        return gen.text or ""

    @staticmethod
    def _token_text(token: Any, chunk: Any) -> str:
        if isinstance(token, str) and token:
            return token
        message = getattr(chunk, "message", None)
        if isinstance(message, BaseMessage):
            return message_text(message)
        return token if isinstance(token, str) else ""


class Qwen3GuardCallbackHandler(_Base, BaseCallbackHandler):
    """Judge prompts, stream tokens, tool calls and results, and retrieved documents of every
    run the handler is attached to; raise :class:`qwen3guard.Qwen3GuardViolation` when the
    policy blocks (see the module docstring)."""

    raise_error: bool = True
    run_inline: bool = True

    # -- LLM runs ----------------------------------------------------------------------------

    def _start(self, run_id: UUID, prompt: list[GuardMessage]) -> None:
        if not (self.check_input or self.check_output):
            return
        if not self.check_output:
            decision = screen(self.guard, self.policy, prompt, Surface.INPUT)
            if decision.blocked:
                raise violation(decision, prompt[-1]["content"] if prompt else "")
            return
        try:
            session = self._open(prompt)
        except _FAILURES as exc:
            decision = failed(self._policy, exc, Surface.INPUT)
            if decision.blocked:
                raise violation(decision, "") from exc
            return
        if self.check_input and prompt:
            decision = self._policy.decide(session.prompt_verdict, Surface.INPUT)
            if decision.blocked:
                session.close()
                raise violation(decision, prompt[-1]["content"])
        self._put(run_id, session)

    def _open(self, prompt: list[GuardMessage]) -> Any:
        guard, kw = self._guard, self._session_kwargs()
        try:
            return guard.open_stream(_session_prompt(prompt), **kw)
        except InvalidInputError:
            return guard.open_stream([{"role": "user", "content": UNKNOWN_PROMPT}], **kw)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, self._prompt_of_chat(messages))

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id, self._prompt_of_llm(prompts))

    def on_llm_new_token(
        self, token: str, *, chunk: Any = None, run_id: UUID, **kwargs: Any
    ) -> None:
        session = self._get(run_id)
        text = self._token_text(token, chunk)
        if session is None or not text:
            return
        try:
            update = session.feed_text(text)
        except _FAILURES as exc:
            self._fail(run_id, exc)
            return
        if (decision := self._check_flag(run_id, session, update)) is not None:
            self._pop(run_id)
            session.close()
            raise violation(decision, session.response_text)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        session = self._pop(run_id)
        if session is None:
            return
        try:
            if session.tokens_seen == 0 and not session.response_text:
                text = self._generated_text(response)
                if text:
                    session.feed_text(text)
            update = session.close()
        except _FAILURES as exc:
            session.close()
            decision = failed(self._policy, exc, Surface.OUTPUT)
            if decision.blocked:
                raise violation(decision, session.response_text) from exc
            return
        if (decision := self._check_flag(run_id, session, update)) is not None:
            raise violation(decision, session.response_text)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        session = self._pop(run_id)
        if session is not None:
            session.close()

    def _fail(self, run_id: UUID, exc: BaseException) -> None:
        session = self._pop(run_id)
        if session is not None:
            session.close()
        decision = failed(self._policy, exc, Surface.OUTPUT)
        if decision.blocked:
            raise violation(decision, "") from exc

    # -- tools and retrievers ------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.check_tool_calls:
            return
        name = (serialized or {}).get("name") or kwargs.get("name")
        conv = tool_call_conversation(name, inputs if inputs is not None else input_str)
        decision = screen(self.guard, self.policy, conv, Surface.TOOL_CALL)
        if decision.blocked:
            raise violation(decision, conv[-1]["content"] if conv else input_str)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if not self.check_tool_results:
            return
        conv = tool_result_conversation(output)
        decision = screen(self.guard, self.policy, conv, Surface.TOOL_RESULT)
        if decision.blocked:
            raise violation(decision, conv[-1]["content"] if conv else "")

    def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        if not self.check_retrieval or not documents:
            return
        decisions = screen_many(
            self.guard,
            self.policy,
            [(document_conversation(d), Surface.RETRIEVAL) for d in documents],
        )
        for doc, decision in zip(documents, decisions):
            if decision.blocked:
                raise violation(decision, doc.page_content)


class AsyncQwen3GuardCallbackHandler(_Base, AsyncCallbackHandler):
    """The async form of :class:`Qwen3GuardCallbackHandler` (guard calls never block the
    event loop)."""

    raise_error: bool = True
    run_inline: bool = True

    async def _start(self, run_id: UUID, prompt: list[GuardMessage]) -> None:
        if not (self.check_input or self.check_output):
            return
        if not self.check_output:
            decision = await ascreen(self.guard, self.policy, prompt, Surface.INPUT)
            if decision.blocked:
                raise violation(decision, prompt[-1]["content"] if prompt else "")
            return
        try:
            session = await self._aopen(prompt)
        except _FAILURES as exc:
            decision = failed(self._policy, exc, Surface.INPUT)
            if decision.blocked:
                raise violation(decision, "") from exc
            return
        if self.check_input and prompt:
            decision = self._policy.decide(session.prompt_verdict, Surface.INPUT)
            if decision.blocked:
                await session.aclose()
                raise violation(decision, prompt[-1]["content"])
        self._put(run_id, session)

    async def _aopen(self, prompt: list[GuardMessage]) -> Any:
        guard, kw = self._guard, self._session_kwargs()
        try:
            return await guard.aopen_stream(_session_prompt(prompt), **kw)
        except InvalidInputError:
            return await guard.aopen_stream([{"role": "user", "content": UNKNOWN_PROMPT}], **kw)

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        await self._start(run_id, self._prompt_of_chat(messages))

    async def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        await self._start(run_id, self._prompt_of_llm(prompts))

    async def on_llm_new_token(
        self, token: str, *, chunk: Any = None, run_id: UUID, **kwargs: Any
    ) -> None:
        session = self._get(run_id)
        text = self._token_text(token, chunk)
        if session is None or not text:
            return
        try:
            update = await session.afeed_text(text)
        except _FAILURES as exc:
            await self._afail(run_id, exc)
            return
        if (decision := self._check_flag(run_id, session, update)) is not None:
            self._pop(run_id)
            await session.aclose()
            raise violation(decision, session.response_text)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        session = self._pop(run_id)
        if session is None:
            return
        try:
            if session.tokens_seen == 0 and not session.response_text:
                text = self._generated_text(response)
                if text:
                    await session.afeed_text(text)
            update = await session.aclose()
        except _FAILURES as exc:
            await session.aclose()
            decision = failed(self._policy, exc, Surface.OUTPUT)
            if decision.blocked:
                raise violation(decision, session.response_text) from exc
            return
        if (decision := self._check_flag(run_id, session, update)) is not None:
            raise violation(decision, session.response_text)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        session = self._pop(run_id)
        if session is not None:
            await session.aclose()

    async def _afail(self, run_id: UUID, exc: BaseException) -> None:
        session = self._pop(run_id)
        if session is not None:
            await session.aclose()
        decision = failed(self._policy, exc, Surface.OUTPUT)
        if decision.blocked:
            raise violation(decision, "") from exc

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.check_tool_calls:
            return
        name = (serialized or {}).get("name") or kwargs.get("name")
        conv = tool_call_conversation(name, inputs if inputs is not None else input_str)
        decision = await ascreen(self.guard, self.policy, conv, Surface.TOOL_CALL)
        if decision.blocked:
            raise violation(decision, conv[-1]["content"] if conv else input_str)

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if not self.check_tool_results:
            return
        conv = tool_result_conversation(output)
        decision = await ascreen(self.guard, self.policy, conv, Surface.TOOL_RESULT)
        if decision.blocked:
            raise violation(decision, conv[-1]["content"] if conv else "")

    async def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        if not self.check_retrieval or not documents:
            return
        decisions = await ascreen_many(
            self.guard,
            self.policy,
            [(document_conversation(d), Surface.RETRIEVAL) for d in documents],
        )
        for doc, decision in zip(documents, decisions):
            if decision.blocked:
                raise violation(decision, doc.page_content)
