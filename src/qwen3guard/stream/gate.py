"""The streaming gate: what of a moderated answer reaches the reader, and when.

Every integration streams through this one gate; it is framework-free. Chunks go in (any
object, with the text it adds to the answer); chunks come out, in order, once all of their text
is *settled*: judged, and before any offset where a future flag could start
(:attr:`StreamUpdate.settled_offset`). So nothing the guard has not judged, and nothing of a span
it may yet flag, is ever released:

    gate = StreamGate.open(guard, prompt_messages)
    if gate.prompt_decision.blocked: ...            # the prompt, judged on open
    for chunk in llm_stream:
        step = gate.feed(chunk, chunk.text)
        emit(step.released)                         # settled chunks, in order
        if step.flagged:                            # stop; step.decision says why
            emit_cut(step.partial)                  # (chunk, its text before flag_offset)
            break
    else:
        step = gate.finish()                        # judges the rest, then releases or flags

How much is held back follows from the session, not from a count of chunks: with the local
Stream model, the re-tokenizer's unstable tail plus the last token when it is itself a hit (a
flag needs two); with the Gen fallback, everything after the last passing check. Chunks without
text (a tool-call chunk, an empty last chunk) wait their turn behind the text before them.

The rules, once for every integration:

- A flag stops the gate. What was settled before ``flag_offset`` is released; the chunk that
  holds ``flag_offset`` is offered cut (``partial``), so a caller may show the text before the
  flagged span; nothing after it ever leaves.
- A guard that could not judge (server down, unparseable answer) decides by
  :func:`~qwen3guard.guard.could_not_judge`: a block (fail-closed) stops the gate like a flag;
  an allow (fail-open) opens it, and everything is released unjudged from then on.
- Content that cannot be judged as given (``InvalidInputError``) blocks, whatever fail-open says.
- A flag the policy allows does not exist: the session only flags what the policy blocks.

Sync and async forms share one core; they differ only in how they wait for the session.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import (
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    UnsafeContentError,
)
from ..policy import Decision, Policy, Surface
from ..tracing import CheckEvent, GateTrace, aemit, emit, invalid_input, judged_text
from .session import StreamSession
from .types import StreamUpdate

if TYPE_CHECKING:
    from ..guard import Conversation, Qwen3Guard

T = TypeVar("T")

_COULD_NOT_JUDGE = (GuardUnavailableError, GuardOutputError)


@dataclass(frozen=True)
class GateStep(Generic[T]):
    """What one feed (or the finish) lets through.

    ``released``: chunks to pass on now, in order. ``flagged``: the answer is blocked; pass
    nothing more (sticky). ``decision``: why it is blocked (flagged), or the final allow
    (after :meth:`StreamGate.finish`). ``partial``: when flagged, the chunk holding
    ``flag_offset`` with its text before that offset (``""`` when the span starts at the chunk's
    first character); None when the flag falls between chunks or nothing was held. (A gate
    opened with ``keep_on_flag=True`` releases nothing at a flag: it waits for
    :meth:`StreamGate.rollback`.)
    """

    released: tuple[T, ...] = ()
    flagged: bool = False
    decision: Decision | None = None
    partial: tuple[T, str] | None = None
    update: StreamUpdate | None = None


class StreamGate(Generic[T]):
    """Releases chunks of an answer once the stream session has settled their text."""

    def __init__(
        self,
        session: StreamSession | None,
        *,
        policy: Policy,
        prompt_decision: Decision | None = None,
        buffer_tokens: int = 0,
        keep_on_flag: bool = False,
    ) -> None:
        if isinstance(buffer_tokens, bool) or not isinstance(buffer_tokens, int) or buffer_tokens < 0:
            raise InvalidInputError(f"buffer_tokens must be an int >= 0, not {buffer_tokens!r}")
        self.session = session
        self.policy = policy
        self.buffer_tokens = buffer_tokens
        self.keep_on_flag = keep_on_flag
        # Start offsets of the judged tokens (since the last rollback): text before the
        # ``buffer_tokens``-th most recent one is at least that many tokens behind the head.
        self._starts: list[int] = []
        self._scored = 0
        self.prompt_decision = prompt_decision or Decision(True, None, Surface.INPUT, "no prompt")
        self._held: deque[tuple[T, int, str]] = deque()  # (chunk, end offset, its text)
        self._fed = 0  # characters of answer text handed to the session
        self._released_to = 0  # end offset of the last released chunk
        self._open = False  # fail-open after a guard failure: release everything
        self._done: GateStep[T] | None = None  # the sticky final step (flagged or finished)
        self._kept_text = ""
        self.last_update: StreamUpdate | None = None
        # Tracing (qwen3guard.tracing): one event for the answer when the gate ends.
        self._trace_backend: Any = None
        self._trace: GateTrace | None = None

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        guard: Qwen3Guard,
        prompt_messages: Conversation | None,
        *,
        policy: Policy | None = None,
        buffer_tokens: int = 0,
        keep_on_flag: bool = False,
        **session_options: Any,
    ) -> StreamGate[T]:
        """Open a session for an answer to ``prompt_messages`` (None: no prompt is known) and
        decide the prompt. A guard that cannot open a session decides by
        :func:`~qwen3guard.guard.could_not_judge` (the gate then has no session)."""
        pol = policy if policy is not None else guard.policy
        backend = _judging_backend(guard)
        prompt_trace = GateTrace(backend) if prompt_messages is not None else None
        try:
            session = guard.open_stream(prompt_messages, policy=pol, **session_options)
        except _COULD_NOT_JUDGE as exc:
            gate = cls._unopened(pol, exc)
        except BaseException as exc:
            for event in _open_failed(prompt_trace, exc):
                emit(event)
            raise
        else:
            gate = cls(session, policy=pol, prompt_decision=_prompt_decision(pol, session),
                       buffer_tokens=buffer_tokens, keep_on_flag=keep_on_flag)
        for event in gate._opened(backend, prompt_trace, prompt_messages):
            emit(event)
        return gate

    @classmethod
    async def aopen(
        cls,
        guard: Qwen3Guard,
        prompt_messages: Conversation | None,
        *,
        policy: Policy | None = None,
        buffer_tokens: int = 0,
        keep_on_flag: bool = False,
        **session_options: Any,
    ) -> StreamGate[T]:
        pol = policy if policy is not None else guard.policy
        backend = _judging_backend(guard)
        prompt_trace = GateTrace(backend) if prompt_messages is not None else None
        try:
            session = await guard.aopen_stream(prompt_messages, policy=pol, **session_options)
        except _COULD_NOT_JUDGE as exc:
            gate = cls._unopened(pol, exc)
        except BaseException as exc:
            for event in _open_failed(prompt_trace, exc):
                await aemit(event)
            raise
        else:
            gate = cls(session, policy=pol, prompt_decision=_prompt_decision(pol, session),
                       buffer_tokens=buffer_tokens, keep_on_flag=keep_on_flag)
        for event in gate._opened(backend, prompt_trace, prompt_messages):
            await aemit(event)
        return gate

    def _opened(
        self, backend: Any, prompt_trace: GateTrace | None, prompt_messages: Any
    ) -> list[CheckEvent]:
        """The events of opening: the prompt's check (when a prompt was given); for a gate
        that could not open and has no prompt, the answer's failure, its only decision."""
        self._trace_backend = backend
        events: list[CheckEvent] = []
        if prompt_trace is not None:
            if prompt_trace.content is not None:
                prompt_trace.content.append(judged_text(prompt_messages) or "")
            event = prompt_trace.done(self.prompt_decision)
            if event is not None:
                events.append(event)
        if self.session is None and self._done is not None:  # could not open, fail-closed
            if prompt_trace is not None:  # the prompt's failure is the one check that ran
                self._trace = GateTrace(backend, reported=True)
            else:
                self._tracing()
                events.extend(self._report())
        return events

    @classmethod
    def _unopened(cls, policy: Policy, exc: BaseException) -> StreamGate[T]:
        from ..guard import could_not_judge

        prompt = could_not_judge(policy, exc, Surface.INPUT)
        gate: StreamGate[T] = cls(None, policy=policy, prompt_decision=prompt)
        if prompt.allowed:  # fail-open: nothing will judge the answer either
            gate._open = True
        else:
            gate._done = GateStep(flagged=True, decision=could_not_judge(policy, exc, Surface.OUTPUT))
        return gate

    # -- state ---------------------------------------------------------------------------------

    @property
    def flagged(self) -> bool:
        return self._done is not None and self._done.flagged

    @property
    def finished(self) -> bool:
        return self._done is not None

    @property
    def decision(self) -> Decision | None:
        """Why the gate stopped (flagged), or the final allow; None while the answer streams."""
        return self._done.decision if self._done is not None else None

    @property
    def held(self) -> int:
        """How many chunks are waiting to be released."""
        return len(self._held)

    @property
    def tokens_held(self) -> int:
        """Judged tokens not yet released (the release lag, in tokens)."""
        return len(self._starts) - bisect.bisect_left(self._starts, self._released_to)

    @property
    def released_offset(self) -> int:
        """The length of the answer released so far."""
        return self._released_to

    # -- sync ----------------------------------------------------------------------------------

    def feed(self, chunk: T, text: str = "") -> GateStep[T]:
        """Add the next chunk (``text``: what it adds to the answer; ``""`` for none)."""
        if self._done is not None:
            return self._done
        self._hold(chunk, text)
        if not text or self._open:
            return self._release(None)
        assert self.session is not None
        try:
            step = self._release(self.session.feed_text(text))
        except (*_COULD_NOT_JUDGE, InvalidInputError) as exc:
            step = self._failed(exc)
        except BaseException as exc:
            self._trace_failed(exc)
            raise
        if self._open or (self._done is not None and not self.keep_on_flag):
            self.session.abort()  # no longer judging: free the session now
        for event in self._report():
            emit(event)
        return step

    def finish(self) -> GateStep[T]:
        """The answer has ended: judge what is left (the session's close), then release it all
        or flag. Idempotent. (A gate kept at a flag, ``keep_on_flag=True``, is given up here:
        its flag is reported.)"""
        if self._done is not None:
            for event in self._report(final=True):
                emit(event)
            return self._done
        self._tracing()
        try:
            step = self._finish()
        except BaseException as exc:
            self._trace_failed(exc)
            raise
        for event in self._report():
            emit(event)
        return step

    def _finish(self) -> GateStep[T]:
        update = None
        session = self.session
        if session is not None and not self._open:
            try:  # with keep_on_flag, end() keeps the session for a rollback after a flag
                update = session.end() if self.keep_on_flag else session.close()
            except (*_COULD_NOT_JUDGE, InvalidInputError) as exc:
                session.abort()
                return self._end_failed(exc)
        step = self._end(update)
        if session is not None and not step.flagged:
            session.close()  # judged already: this only frees
        return step

    def rollback(self, offset: int, rechunk: Callable[[str], T] | None = None) -> GateStep[T]:
        """Drop the answer after ``offset`` (never before what was released) and roll the
        session back to it, unflagging the gate: the next chunk continues the kept prefix. The
        kept text not yet released is held again, as one chunk made by ``rechunk`` (default:
        the text itself). Needs ``keep_on_flag=True``."""
        session = self._rollback_prepare(offset)
        return self._rolled_back(session.rollback(self._fed), rechunk)

    async def arollback(
        self, offset: int, rechunk: Callable[[str], T] | None = None
    ) -> GateStep[T]:
        session = self._rollback_prepare(offset)
        return self._rolled_back(await session.arollback(self._fed), rechunk)

    def _rollback_prepare(self, offset: int) -> StreamSession:
        if self.session is None or self.session.closed:
            raise InvalidInputError("rollback() needs an open session (open the gate with "
                                    "keep_on_flag=True and do not finish it first)")
        if offset < self._released_to or offset > self._fed:
            raise InvalidInputError(
                f"rollback({offset}): the answer has {self._fed} characters and "
                f"{self._released_to} are already released"
            )
        self._kept_text = "".join(text for _, _, text in self._held)[
            : offset - self._released_to
        ]
        self._held.clear()
        self._fed = offset
        self._done = None
        if self._trace is not None:
            self._trace.rolled_back(offset)
        self._starts.clear()
        self._scored = 0
        self.last_update = None
        return self.session

    def _rolled_back(
        self, update: StreamUpdate, rechunk: Callable[[str], T] | None
    ) -> GateStep[T]:
        kept = self._kept_text
        if kept:
            chunk = rechunk(kept) if rechunk is not None else kept
            self._held.append((chunk, self._fed, kept))  # type: ignore[arg-type]
        # The session replayed the whole kept answer: its tokens give the buffer's offsets.
        self.last_update = update
        self._observe(update)
        limit = min(self._settled(), self._behind_head())
        return GateStep(released=self._take(limit), update=update)

    def abort(self) -> None:
        """Stop without judging what is held (the caller gave up); frees the session."""
        if self.session is not None:
            self.session.abort()
        for event in self._aborted():
            emit(event)

    def _aborted(self) -> list[CheckEvent]:
        if self._done is None:
            self._done = GateStep(decision=Decision(False, None, Surface.OUTPUT, "aborted"))
            self._held.clear()
        return self._report(final=True)

    # -- async ---------------------------------------------------------------------------------

    async def afeed(self, chunk: T, text: str = "") -> GateStep[T]:
        if self._done is not None:
            return self._done
        self._hold(chunk, text)
        if not text or self._open:
            return self._release(None)
        assert self.session is not None
        try:
            step = self._release(await self.session.afeed_text(text))
        except (*_COULD_NOT_JUDGE, InvalidInputError) as exc:
            step = self._failed(exc)
        except BaseException as exc:
            self._trace_failed(exc)
            raise
        if self._open or (self._done is not None and not self.keep_on_flag):
            await self.session.aabort()
        for event in self._report():
            await aemit(event)
        return step

    async def afinish(self) -> GateStep[T]:
        if self._done is not None:
            for event in self._report(final=True):
                await aemit(event)
            return self._done
        self._tracing()
        try:
            step = await self._afinish()
        except BaseException as exc:
            self._trace_failed(exc)
            raise
        for event in self._report():
            await aemit(event)
        return step

    async def _afinish(self) -> GateStep[T]:
        update = None
        session = self.session
        if session is not None and not self._open:
            try:
                update = await (session.aend() if self.keep_on_flag else session.aclose())
            except (*_COULD_NOT_JUDGE, InvalidInputError) as exc:
                await session.aabort()
                return self._end_failed(exc)
        step = self._end(update)
        if session is not None and not step.flagged:
            await session.aclose()
        return step

    async def aabort(self) -> None:
        if self.session is not None:
            await self.session.aabort()
        for event in self._aborted():
            await aemit(event)

    # -- tracing -------------------------------------------------------------------------------

    def _tracing(self) -> GateTrace:
        """The answer's trace, started when the answer starts to be judged."""
        if self._trace is None:
            self._trace = GateTrace(self._trace_backend)
        return self._trace

    def _trace_failed(self, exc: BaseException) -> None:
        """Judging the answer raised ``exc`` (not a could-not-judge): its span ends, no event."""
        if self._trace is not None:
            self._trace.failed(exc)

    def _report(self, *, final: bool = False) -> list[CheckEvent]:
        """The answer's one event, once the gate has its final decision: a flag (with
        ``keep_on_flag`` only when the gate is given up, as a rollback may still undo the
        flag), the finish's allow, or an abort. Nothing when nothing of the answer was seen."""
        done, trace = self._done, self._trace
        if done is None or done.decision is None or trace is None or trace.reported:
            return []
        if done.flagged and self.keep_on_flag and not final:
            return []
        event = trace.done(done.decision)
        return [event] if event is not None else []

    # -- the release rule (shared) ---------------------------------------------------------

    def _hold(self, chunk: T, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidInputError(f"a chunk's text must be a str, not {type(text).__name__}")
        self._fed += len(text)
        self._held.append((chunk, self._fed, text))
        self._tracing().fed(text)

    def _release(self, update: StreamUpdate | None) -> GateStep[T]:
        if update is not None:
            self.last_update = update
            self._observe(update)
            if update.flagged:
                return self._flag(update)
        limit = self._fed if self._open else min(self._settled(), self._behind_head())
        return GateStep(released=self._take(limit), update=update)

    def _observe(self, update: StreamUpdate) -> None:
        for tv in update.token_verdicts:
            self._starts.append(self._scored)
            self._scored += len(tv.text)

    def _behind_head(self) -> int:
        """The offset ``buffer_tokens`` judged tokens behind the moderation head (sessions that
        report no tokens, the Gen fallback, already hold back to their last check)."""
        if not self.buffer_tokens or self.last_update is None:
            return self._fed
        if not self._starts:
            return self._fed
        return self._starts[-self.buffer_tokens] if len(self._starts) >= self.buffer_tokens else 0

    def _settled(self) -> int:
        if self.session is None:
            return 0
        return self.session.settled_offset

    def _take(self, limit: int) -> tuple[T, ...]:
        out: list[T] = []
        while self._held and self._held[0][1] <= limit:
            chunk, end, _ = self._held.popleft()
            out.append(chunk)
            self._released_to = end
        return tuple(out)

    def _flag(self, update: StreamUpdate) -> GateStep[T]:
        offset = update.flag_offset if update.flag_offset is not None else self._released_to
        offset = max(offset, self._released_to)
        released: tuple[T, ...] = ()
        partial: tuple[T, str] | None = None
        if not self.keep_on_flag:  # stop here: what precedes the flagged span goes out
            released = self._take(offset)
            if self._held:
                chunk, end, text = self._held[0]
                start = end - len(text)
                if start < offset:
                    partial = (chunk, text[: offset - start])
            self._held.clear()
        # (kept for a rollback: nothing more is released, the held chunks stay)
        verdict = update.verdict
        decision = (
            self.policy.decide(verdict, Surface.OUTPUT)
            if verdict is not None
            else Decision(False, None, Surface.OUTPUT, _reason(update))
        )
        if decision.allowed:  # a verdict the session flagged under its own (remote) policy
            decision = Decision(False, verdict, Surface.OUTPUT, f"flagged by the stream session: "
                                f"{_reason(update)}")
        self._done = GateStep(flagged=True, decision=decision, update=update)
        return GateStep(released=released, flagged=True, decision=decision, partial=partial,
                        update=update)

    def _failed(self, exc: BaseException) -> GateStep[T]:
        from ..guard import could_not_judge

        if isinstance(exc, InvalidInputError):
            decision = Decision(False, None, Surface.OUTPUT, f"cannot be judged: {exc}", error=exc)
        else:
            decision = could_not_judge(self.policy, exc, Surface.OUTPUT)
        if decision.allowed:  # fail-open: release everything from here on, unjudged
            self._open = True
            return GateStep(released=self._take(self._fed), decision=decision)
        released = self._take(self._settled_before_failure())
        self._held.clear()
        self._done = GateStep(flagged=True, decision=decision)
        return GateStep(released=released, flagged=True, decision=decision)

    def _settled_before_failure(self) -> int:
        try:
            return self._settled()
        except Exception:  # noqa: BLE001 - a broken session has settled nothing more
            return self._released_to

    def _end_failed(self, exc: BaseException) -> GateStep[T]:
        step = self._failed(exc)
        if self._done is not None:  # fail-closed: flagged
            return step
        end = self._end(None)  # fail-open: the rest goes out unjudged, and the gate is done
        return GateStep(released=step.released + end.released, decision=end.decision)

    def _end(self, update: StreamUpdate | None) -> GateStep[T]:
        if update is not None:
            self.last_update = update
            if update.flagged:
                return self._flag(update)
        released = self._take(self._fed)
        verdict = update.verdict if update is not None else None
        if self._open:
            decision = Decision(True, None, Surface.OUTPUT, "guard unavailable; fail-open")
        elif verdict is None:
            decision = Decision(True, None, Surface.OUTPUT, "nothing to judge")
        else:
            decision = self.policy.decide(verdict, Surface.OUTPUT)
        self._done = GateStep(decision=decision, update=update)
        return GateStep(released=released, decision=decision, update=update)


def _judging_backend(guard: Qwen3Guard) -> Any:
    """What judges a gated stream: the Stream model, else Gen (the fallback session)."""
    return guard.stream if guard.stream is not None else guard.gen


def _open_failed(prompt_trace: GateTrace | None, exc: BaseException) -> list[CheckEvent]:
    """Opening raised ``exc``: a prompt that cannot be judged as given is one blocked check
    (its event); anything else ends the prompt's span with no event."""
    if prompt_trace is None:
        return []
    if isinstance(exc, InvalidInputError):
        event = prompt_trace.done(invalid_input(exc, Surface.INPUT))
        return [event] if event is not None else []
    prompt_trace.failed(exc)
    return []


def _prompt_decision(policy: Policy, session: StreamSession) -> Decision:
    verdict = session.prompt_verdict
    if verdict is None:
        return Decision(True, None, Surface.INPUT, "no prompt")
    return policy.decide(verdict, Surface.INPUT)


def _reason(update: StreamUpdate) -> str:
    error = (update.metadata or {}).get("error")
    return f"guard could not judge: {error}" if error else "flagged"


# -- text in, text out -------------------------------------------------------------------------


def moderate_text(
    guard: Qwen3Guard,
    prompt_messages: Conversation | None,
    chunks: Iterable[str],
    *,
    policy: Policy | None = None,
    **session_options: Any,
) -> Iterator[str]:
    """Yield the settled text of a streamed answer; raise :class:`UnsafeContentError` (with the
    decision) at a flag, after yielding the text before the flagged span. The prompt is judged
    first: a blocked prompt raises before any chunk is read. The source is closed on a flag."""
    gate: StreamGate[str] = StreamGate.open(guard, prompt_messages, policy=policy,
                                            **session_options)
    _raise_if_prompt_blocked(gate, prompt_messages)
    source = iter(chunks)
    try:
        for chunk in source:
            step = gate.feed(chunk, chunk)
            yield from _texts(step)
            if step.flagged:
                raise _violation(step, chunk)
        step = gate.finish()
        yield from _texts(step)
        if step.flagged:
            raise _violation(step, None)
    finally:
        if not gate.finished:
            gate.abort()
        close = getattr(source, "close", None)
        if callable(close):
            close()


async def amoderate_text(
    guard: Qwen3Guard,
    prompt_messages: Conversation | None,
    chunks: AsyncIterable[str],
    *,
    policy: Policy | None = None,
    **session_options: Any,
) -> AsyncIterator[str]:
    """The async form of :func:`moderate_text`."""
    gate: StreamGate[str] = await StreamGate.aopen(guard, prompt_messages, policy=policy,
                                                   **session_options)
    _raise_if_prompt_blocked(gate, prompt_messages)
    source = aiter(chunks)
    try:
        async for chunk in source:
            step = await gate.afeed(chunk, chunk)
            for text in _texts(step):
                yield text
            if step.flagged:
                raise _violation(step, chunk)
        step = await gate.afinish()
        for text in _texts(step):
            yield text
        if step.flagged:
            raise _violation(step, None)
    finally:
        if not gate.finished:
            await gate.aabort()
        aclose = getattr(source, "aclose", None)
        if callable(aclose):
            await aclose()


def _texts(step: GateStep[str]) -> list[str]:
    out = list(step.released)
    if step.partial is not None and step.partial[1]:
        out.append(step.partial[1])
    return out


def _raise_if_prompt_blocked(gate: StreamGate[Any], prompt: Any) -> None:
    if gate.prompt_decision.blocked:
        if gate.session is not None:
            gate.session.abort()
        raise UnsafeContentError(stage=Surface.INPUT, content=prompt,
                                 decision=gate.prompt_decision)


def _violation(step: GateStep[Any], content: Any) -> UnsafeContentError:
    decision = step.decision or Decision(False, None, Surface.OUTPUT, "flagged")
    return UnsafeContentError(stage=Surface.OUTPUT, content=content, decision=decision)
