"""Qwen3Guard: the facade every integration uses.

    guard = Qwen3Guard.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B",
                                       stream_model="Qwen/Qwen3Guard-Stream-0.6B")
    guard.check_prompt("How can I make a bomb?").risk      # RiskLevel.UNSAFE
    guard.enforce(messages, surface="input")               # raises UnsafeContentError

Sync and async forms share their logic: the async ones differ only in how they wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from .defaults import (
    DEFAULT_GEN_MODEL,
    DEFAULT_STREAM_MODEL,
    get_default_guard,
    set_default_guard,
)
from .errors import GuardOutputError, GuardUnavailableError, InvalidInputError
from .gen.base import GenBackend
from .plans import (
    BatchPlan,
    Conversation,
    ScreenPlan,
    could_not_judge,
    prompt_messages,
    raise_if_blocked,
    response_messages,
)
from .policy import Decision, Policy, Surface
from .tracing import ScreenTrace, aemit, emit
from .verdict import Verdict

if TYPE_CHECKING:
    from .stream.session import StreamBackend, StreamSession

__all__ = ["DEFAULT_GEN_MODEL", "DEFAULT_STREAM_MODEL", "Conversation", "Qwen3Guard",
           "could_not_judge", "get_default_guard",
           "raise_if_blocked", "set_default_guard"]


class Qwen3Guard:
    """The guard: Qwen3Guard-Gen for whole texts, Qwen3Guard-Stream for streamed answers.

    Build it with :meth:`from_pretrained` (in process), :meth:`from_endpoint` (a served model)
    or :meth:`from_env`; or pass backends directly (``gen``, ``stream``: either may be None,
    not both). ``policy`` turns verdicts into decisions (default ``Policy()``: strict, fail
    closed). Without a Stream backend a streamed answer is re-checked by Gen every
    ``stream_fallback_every`` tokens.

    Three levels: ``check*`` return :class:`~qwen3guard.Verdict` (what the model said);
    ``screen*`` return :class:`~qwen3guard.Decision` (what the policy makes of it, never
    raising for unsafe content); ``enforce`` raises :class:`~qwen3guard.UnsafeContentError`
    when blocked. Each has an async twin (``a`` prefix) sharing one plan; the guard is a
    context manager that closes its backends.
    """

    def __init__(
        self,
        gen: GenBackend | None = None,
        *,
        stream: StreamBackend | None = None,
        policy: Policy | None = None,
        stream_fallback_every: int = 32,
    ) -> None:
        if gen is None and stream is None:
            raise ValueError("Qwen3Guard needs a Gen backend, a Stream backend, or both")
        self.gen = gen
        """The Gen backend (in process, or a served model); None for a Stream-only guard."""
        self.stream = stream
        """The Stream backend (local, ``qwen3guard serve``, or vLLM); None: Gen re-checks."""
        self.policy = policy or Policy()
        """The policy ``screen`` / ``enforce`` and the integrations use unless given another."""
        self.stream_fallback_every = stream_fallback_every
        """Without a Stream backend, a streamed answer is re-checked by Gen every this many
        tokens."""

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        stream_model: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        policy: Policy | None = None,
        max_new_tokens: int = 64,
        max_batch_size: int = 32,
        max_context_tokens: int | None = None,
        max_batch_tokens: int | None = None,
        max_window_tokens: int | None = None,
        stream_fallback_every: int = 32,
    ) -> Qwen3Guard:
        """Load Qwen3Guard-Gen (and optionally Qwen3Guard-Stream) in process.

        ``model`` / ``stream_model`` are local checkpoint directories or hub ids.
        """
        gen = None
        if model is not None:
            from .gen.local import TransformersGenBackend

            gen = TransformersGenBackend(
                model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                max_batch_size=max_batch_size, max_context_tokens=max_context_tokens,
                max_batch_tokens=max_batch_tokens, max_window_tokens=max_window_tokens,
            )
        stream = None
        if stream_model is not None:
            from .stream.local import LocalStreamBackend

            stream = LocalStreamBackend(stream_model, device=device, dtype=dtype)
        return cls(gen, stream=stream, policy=policy, stream_fallback_every=stream_fallback_every)

    @classmethod
    def from_endpoint(
        cls,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_concurrency: int = 16,
        stream: bool | Literal["serve", "vllm"] = False,
        stream_url: str | None = None,
        stream_model: str | None = None,
        cache_salt: str | None = None,
        policy: Policy | None = None,
        stream_fallback_every: int = 32,
        **kwargs: Any,
    ) -> Qwen3Guard:
        """Use a Gen model served behind an OpenAI-compatible API (vLLM, SGLang, or
        ``qwen3guard serve``). ``stream=True`` (or ``"serve"``) also uses the Stream model of a
        ``qwen3guard serve`` server; ``stream="vllm"`` a Stream model served by vLLM with this
        package's plugins at ``stream_url`` (default ``base_url``), ``stream_model`` naming it
        and ``cache_salt`` keeping a tenant's prefix cache apart (docs/stream_on_vllm.md)."""
        from .gen.remote import OpenAIGenBackend

        gen = OpenAIGenBackend(
            base_url, model, api_key=api_key, timeout=timeout, max_retries=max_retries,
            max_concurrency=max_concurrency, **kwargs,
        )
        stream_backend: StreamBackend | None = None
        if stream == "vllm":
            from .stream.vllm import VLLMStreamBackend

            stream_backend = VLLMStreamBackend(
                stream_url or base_url, stream_model, api_key=api_key, timeout=timeout,
                max_retries=max_retries, cache_salt=cache_salt,
            )
        elif stream in (True, "serve"):
            from .stream.remote import RemoteStreamBackend

            stream_backend = RemoteStreamBackend(stream_url or base_url, api_key=api_key,
                                                 timeout=timeout)
        elif stream is not False:
            raise InvalidInputError(f"stream must be False, True, 'serve' or 'vllm', not {stream!r}")
        return cls(gen, stream=stream_backend, policy=policy,
                   stream_fallback_every=stream_fallback_every)

    @classmethod
    def from_env(cls, *, policy: Policy | None = None) -> Qwen3Guard:
        """Build the guard the environment describes, so deployments choose local or remote by
        configuration, not code:

        - ``QWEN3GUARD_ENDPOINT`` (+ ``QWEN3GUARD_ENDPOINT_MODEL``, ``QWEN3GUARD_API_KEY``,
          ``QWEN3GUARD_ENDPOINT_STREAM=1`` for the server's Stream model, or ``=vllm`` with
          ``QWEN3GUARD_STREAM_ENDPOINT`` / ``QWEN3GUARD_STREAM_ENDPOINT_MODEL`` for Stream on
          vLLM): a served model, via :meth:`from_endpoint`;
        - else ``QWEN3GUARD_MODEL`` and ``QWEN3GUARD_STREAM_MODEL`` (paths or hub ids; default
          the 0.6B hub models; ``QWEN3GUARD_STREAM_MODEL=none`` for Gen only), with
          ``QWEN3GUARD_DEVICE`` and ``QWEN3GUARD_DTYPE``; via :meth:`from_pretrained`.
        ``QWEN3GUARD_POLICY`` = ``strict`` | ``loose`` sets the mode when no policy is given.
        """
        from .defaults import guard_from_env

        return guard_from_env(cls, policy)

    # -- judging ---------------------------------------------------------------------------

    def check(self, messages: Conversation) -> Verdict:
        """Judge a conversation; the last message's role picks prompt or response mode."""
        return self.check_batch([messages])[0]

    async def acheck(self, messages: Conversation) -> Verdict:
        """The async form of :meth:`check`."""
        return (await self.acheck_batch([messages]))[0]

    def check_prompt(self, text: Any, *, context: Sequence[Any] | None = None) -> Verdict:
        """Judge ``text`` as a user prompt, after the earlier turns in ``context`` if given."""
        return self.check(prompt_messages(text, context))

    async def acheck_prompt(self, text: Any, *, context: Sequence[Any] | None = None) -> Verdict:
        """The async form of :meth:`check_prompt`."""
        return await self.acheck(prompt_messages(text, context))

    def check_response(self, prompt: Any, response: Any) -> Verdict:
        """Judge an answer in the light of its prompt; the verdict includes refusal."""
        return self.check(response_messages(prompt, response))

    async def acheck_response(self, prompt: Any, response: Any) -> Verdict:
        """The async form of :meth:`check_response`."""
        return await self.acheck(response_messages(prompt, response))

    @overload
    def check_batch(
        self, items: Sequence[Conversation], *, return_exceptions: Literal[False] = False
    ) -> list[Verdict]: ...

    @overload
    def check_batch(
        self, items: Sequence[Conversation], *, return_exceptions: bool
    ) -> list[Verdict | Exception]: ...

    def check_batch(
        self, items: Sequence[Conversation], *, return_exceptions: bool = False
    ) -> list[Verdict] | list[Verdict | Exception]:
        """Judge many conversations in batched forward passes. With ``return_exceptions``
        a failed item yields its exception in place instead of raising."""
        plan = self._plan(items)
        raws = self._require_gen().generate(plan.flat) if plan.flat else []
        return plan.finish(raws, return_exceptions)

    @overload
    async def acheck_batch(
        self, items: Sequence[Conversation], *, return_exceptions: Literal[False] = False
    ) -> list[Verdict]: ...

    @overload
    async def acheck_batch(
        self, items: Sequence[Conversation], *, return_exceptions: bool
    ) -> list[Verdict | Exception]: ...

    async def acheck_batch(
        self, items: Sequence[Conversation], *, return_exceptions: bool = False
    ) -> list[Verdict] | list[Verdict | Exception]:
        """The async form of :meth:`check_batch`."""
        plan = await asyncio.to_thread(self._plan, items)  # windows of a long input take time
        raws = await self._require_gen().agenerate(plan.flat) if plan.flat else []
        return plan.finish(raws, return_exceptions)

    # -- policy -------------------------------------------------------------------------------

    def decide(self, verdict: Verdict | None, surface: Surface | str = Surface.INPUT) -> Decision:
        """The guard's policy applied to ``verdict`` on ``surface`` (no model call)."""
        return self.policy.decide(verdict, surface)

    def screen(
        self,
        messages: Conversation | None,
        surface: Surface | str = Surface.INPUT,
        *,
        policy: Policy | None = None,
    ) -> Decision:
        """Judge and decide with ``policy`` (default: the guard's). Never raises for unsafe
        content; a guard failure becomes a block (fail-closed) or an allow with a warning
        (fail-open). Bad input raises :class:`InvalidInputError`; empty content is allowed as
        "nothing to judge"."""
        return self._screen([(messages, surface)], policy, strict_input=True, batch=False)[0]

    async def ascreen(
        self,
        messages: Conversation | None,
        surface: Surface | str = Surface.INPUT,
        *,
        policy: Policy | None = None,
    ) -> Decision:
        """The async form of :meth:`screen`."""
        items = [(messages, surface)]
        return (await self._ascreen(items, policy, strict_input=True, batch=False))[0]

    def screen_batch(
        self,
        items: Sequence[tuple[Conversation | None, Surface | str]],
        *,
        policy: Policy | None = None,
    ) -> list[Decision]:
        """One decision per ``(conversation, surface)``, judged in one batched call.

        One bad item fails alone: content that cannot be judged as given (a lone surrogate, a
        non-text part) is blocked, with the :class:`InvalidInputError` in ``decision.error``,
        whatever ``fail_open`` says (it is not the guard that failed); the others are judged.
        """
        return self._screen(items, policy, strict_input=False, batch=True)

    async def ascreen_batch(
        self,
        items: Sequence[tuple[Conversation | None, Surface | str]],
        *,
        policy: Policy | None = None,
    ) -> list[Decision]:
        """The async form of :meth:`screen_batch`."""
        return await self._ascreen(items, policy, strict_input=False, batch=True)

    def enforce(
        self,
        messages: Conversation,
        surface: Surface | str = Surface.INPUT,
        *,
        policy: Policy | None = None,
    ) -> Decision:
        """Like :meth:`screen`, but raise :class:`UnsafeContentError` when blocked."""
        return raise_if_blocked(self.screen(messages, surface, policy=policy), messages)

    async def aenforce(
        self,
        messages: Conversation,
        surface: Surface | str = Surface.INPUT,
        *,
        policy: Policy | None = None,
    ) -> Decision:
        """The async form of :meth:`enforce`."""
        return raise_if_blocked(await self.ascreen(messages, surface, policy=policy), messages)

    # -- streaming ------------------------------------------------------------------------------

    def open_stream(self, prompt_messages: Conversation | None, **kwargs: Any) -> StreamSession:
        """Open a moderation session for a streamed answer to ``prompt_messages``.

        The prompt is judged on open (``session.prompt_verdict``; None when ``prompt_messages``
        is None: no prompt is known, and the answer is judged in a neutral context). Feed the
        answer with ``session.feed_text(chunk)`` or ``session.feed_ids(ids)``. Without a Stream
        model the session re-checks the accumulated answer with Gen every
        ``stream_fallback_every`` tokens. A prompt too long for the Stream model is judged by
        Gen (see :func:`qwen3guard.stream.session.open_session`).
        """
        from .stream.session import open_session

        return open_session(self, prompt_messages, **kwargs)

    async def aopen_stream(
        self, prompt_messages: Conversation | None, **kwargs: Any
    ) -> StreamSession:
        """The async form of :meth:`open_stream` (the prompt is judged without blocking the
        event loop)."""
        from .stream.session import aopen_session

        return await aopen_session(self, prompt_messages, **kwargs)

    def moderate_stream(
        self,
        prompt_messages: Conversation | None,
        chunks: Iterable[str],
        *,
        policy: Policy | None = None,
        **session_options: Any,
    ) -> Iterator[str]:
        """Moderate a streamed answer: yield its text as soon as it is settled (judged, and
        before any span a later token could still flag); at a flag, raise
        :class:`UnsafeContentError` after the text before the flagged span. A blocked prompt
        raises before the first chunk is read. See :mod:`qwen3guard.stream.gate`."""
        from .stream.gate import moderate_text

        return moderate_text(self, prompt_messages, chunks, policy=policy, **session_options)

    def amoderate_stream(
        self,
        prompt_messages: Conversation | None,
        chunks: AsyncIterable[str],
        *,
        policy: Policy | None = None,
        **session_options: Any,
    ) -> AsyncIterator[str]:
        """The async form of :meth:`moderate_stream`."""
        from .stream.gate import amoderate_text

        return amoderate_text(self, prompt_messages, chunks, policy=policy, **session_options)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close both backends (HTTP clients, server sessions); the guard is unusable after."""
        for backend in (self.gen, self.stream):
            if backend is not None:
                backend.close()

    def __enter__(self) -> Qwen3Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _screen(
        self,
        items: Sequence[tuple[Conversation | None, Surface | str]],
        policy: Policy | None,
        *,
        strict_input: bool,
        batch: bool,
    ) -> list[Decision]:
        """Screen ``items``; each decision is reported as one check (qwen3guard.tracing), and so
        is a single screen that raises InvalidInputError (as a blocked check)."""
        trace = ScreenTrace(self.gen, items, batch=batch)
        try:
            with trace:
                plan = ScreenPlan(self.policy, items, policy, strict_input=strict_input)
                trace.judging(plan.surfaces)
                if plan.convs:
                    plan.results = self._judge_all(plan.convs)
                decisions = plan.finish()
        except InvalidInputError:
            for event in trace.raised:
                emit(event)
            raise
        for event in trace.done(decisions):
            emit(event)
        return decisions

    async def _ascreen(
        self,
        items: Sequence[tuple[Conversation | None, Surface | str]],
        policy: Policy | None,
        *,
        strict_input: bool,
        batch: bool,
    ) -> list[Decision]:
        trace = ScreenTrace(self.gen, items, batch=batch)
        try:
            with trace:
                plan = ScreenPlan(self.policy, items, policy, strict_input=strict_input)
                trace.judging(plan.surfaces)
                if plan.convs:
                    plan.results = await self._ajudge_all(plan.convs)
                decisions = plan.finish()
        except InvalidInputError:
            for event in trace.raised:
                await aemit(event)
            raise
        for event in trace.done(decisions):
            await aemit(event)
        return decisions

    def _judge_all(self, convs: list[Any]) -> list[Verdict | Exception]:
        try:  # a guard that cannot judge at all fails each item (decided per item, fail-closed)
            return self.check_batch(convs, return_exceptions=True)
        except (GuardUnavailableError, GuardOutputError) as exc:
            return [exc] * len(convs)

    async def _ajudge_all(self, convs: list[Any]) -> list[Verdict | Exception]:
        try:
            return await self.acheck_batch(convs, return_exceptions=True)
        except (GuardUnavailableError, GuardOutputError) as exc:
            return [exc] * len(convs)

    def _require_gen(self) -> GenBackend:
        if self.gen is None:
            raise GuardUnavailableError(
                "no Gen model is configured: pass model=... to from_pretrained() "
                "or use from_endpoint()"
            )
        return self.gen

    def _plan(self, items: Sequence[Conversation]) -> BatchPlan:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise InvalidInputError("check_batch() takes a list of conversations or prompts")
        gen = self._require_gen()
        return BatchPlan(gen, items)

