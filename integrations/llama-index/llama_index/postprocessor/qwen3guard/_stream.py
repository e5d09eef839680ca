"""Token-by-token moderation of streamed text through a qwen3guard Stream session.

The same gate serves sync and async streams and LlamaIndex's streamed query responses as well
as agent-stream events: upstream items (text chunks or events carrying a text delta) are fed to
the session and released to the consumer ``hold_back`` items late, so that by the time the
session's debounce flags an answer the text of the flagged span has usually not been shown. On a
flag the upstream is closed at once, the consumer receives only the text before the flagged
span's start, and the caller raises or substitutes a refusal.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from qwen3guard import (
    Decision,
    GuardOutputError,
    GuardUnavailableError,
    Qwen3Guard,
    Qwen3GuardViolation,
)

from ._common import decide_result, decision_info, surface_enabled, violation

T = TypeVar("T")

_OUTPUT = "output"


class StreamGate(Generic[T]):
    """The moderation state of one streamed answer, without I/O.

    ``text_of(item)`` gives the text an item adds to the answer; ``truncate(item, n)`` an item
    that shows only its first ``n`` characters (used once, for the safe prefix when flagged).
    """

    def __init__(
        self,
        guard: Qwen3Guard,
        *,
        hold_back: int,
        text_of: Callable[[T], str],
        truncate: Callable[[T, int], T | None],
    ) -> None:
        if hold_back < 0:
            raise ValueError("hold_back must be >= 0")
        self.guard = guard
        self.hold_back = hold_back
        self.text_of = text_of
        self.truncate = truncate
        self.pending: deque[T] = deque()
        self.emitted = 0  # characters of the answer released to the consumer
        self.fed = 0  # characters of the answer handed to the session
        self.decision: Decision | None = None  # set when the answer is blocked
        self.flag_offset: int | None = None
        self.tokens_seen = 0
        self.checking = surface_enabled(guard, _OUTPUT)
        self.failed_open = False
        self._texts: list[str] = []

    @property
    def answer(self) -> str:
        """All the answer's text received from upstream so far (shown or not)."""
        return "".join(self._texts)

    @property
    def blocked(self) -> bool:
        return self.decision is not None and self.decision.blocked

    def moderating(self) -> bool:
        return self.checking and not self.failed_open and not self.blocked

    # -- events ---------------------------------------------------------------------------------

    def fed_item(self, item: T, update: Any) -> list[T]:
        """Record an item whose text was fed and the session's answer; what may be released."""
        self._add(item)
        if update is not None and self._judge(update):
            return self._safe_prefix()
        return self._release(self.hold_back)

    def passed_item(self, item: T) -> list[T]:
        """An item that needs no judging (no text, or moderation is off)."""
        self._add(item)
        return self._release(self.hold_back if self.moderating() else 0)

    def ended(self, update: Any) -> list[T]:
        """The upstream ended and the session was closed with ``update``: release the rest."""
        if update is not None and self._judge(update):
            return self._safe_prefix()
        return self._release(0)

    def failed_item(self, item: T, exc: BaseException) -> list[T]:
        """An item whose feeding failed: as :meth:`failed`, the item held with the rest."""
        self._add(item)
        return self.failed(exc)

    def failed(self, exc: BaseException) -> list[T]:
        """The session could not judge: fail-closed blocks here, fail-open stops moderating."""
        decision = decide_result(self.guard, exc, _OUTPUT)
        if decision.blocked:
            self.decision = decision
            self.flag_offset = self.emitted
            return self._safe_prefix()
        self.failed_open = True
        return self._release(0)

    def error(self, content: str) -> Qwen3GuardViolation:
        assert self.decision is not None
        return violation(self.decision, content)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            decision_info(self.decision) if self.decision is not None else {"allowed": True}
        )
        out.update(flag_offset=self.flag_offset, tokens_seen=self.tokens_seen, shown=self.emitted)
        return out

    # -- internals ------------------------------------------------------------------------------

    def _add(self, item: T) -> None:
        text = self.text_of(item)
        self.fed += len(text)
        self._texts.append(text)
        self.pending.append(item)

    def _judge(self, update: Any) -> bool:
        self.tokens_seen = getattr(update, "tokens_seen", self.tokens_seen) or self.tokens_seen
        if not getattr(update, "flagged", False):
            return False
        decision = self.guard.decide(update.verdict, _OUTPUT)
        if decision.allowed:
            # The session's debounce fired but the policy allows it (a loose mode or an ignored
            # category): the session stays flagged, so nothing later can be judged any more.
            self.failed_open = True
            return False
        self.decision = decision
        offset = getattr(update, "flag_offset", None)
        self.flag_offset = self.emitted if offset is None else max(int(offset), 0)
        return True

    def _release(self, keep: int) -> list[T]:
        out: list[T] = []
        while len(self.pending) > keep:
            item = self.pending.popleft()
            self.emitted += len(self.text_of(item))
            out.append(item)
        return out

    def _safe_prefix(self) -> list[T]:
        """The held-back items (or part of one) that lie before the flagged span's start."""
        assert self.flag_offset is not None
        out: list[T] = []
        while self.pending and self.emitted < self.flag_offset:
            item = self.pending.popleft()
            n = len(self.text_of(item))
            room = self.flag_offset - self.emitted
            if n <= room:
                out.append(item)
                self.emitted += n
                continue
            part = self.truncate(item, room)
            if part is not None:
                out.append(part)
                self.emitted += room
            break
        self.pending.clear()
        return out


def _truncate_text(text: str, n: int) -> str | None:
    return text[:n] or None


def moderate_text(
    upstream: Iterator[str],
    guard: Qwen3Guard,
    prompt_messages: list[dict[str, str]],
    *,
    hold_back: int,
    on_block: Callable[[StreamGate[str]], Iterator[str]],
    on_done: Callable[[StreamGate[str]], None] | None = None,
) -> Iterator[str]:
    """Moderate a sync stream of text chunks. ``on_block`` yields what follows the safe prefix
    (or raises); the upstream generator is closed as soon as the answer is flagged."""
    gate: StreamGate[str] = StreamGate(
        guard, hold_back=hold_back, text_of=lambda s: s, truncate=_truncate_text
    )
    session: Any = None
    try:
        if gate.checking:
            try:
                session = guard.open_stream(prompt_messages)
            except (GuardUnavailableError, GuardOutputError) as exc:
                yield from gate.failed(exc)
        for chunk in upstream if not gate.blocked else ():
            if not isinstance(chunk, str):
                chunk = str(chunk)
            if session is not None and gate.moderating() and chunk:
                try:
                    update = session.feed_text(chunk)
                except (GuardUnavailableError, GuardOutputError) as exc:
                    released = gate.failed_item(chunk, exc)
                else:
                    released = gate.fed_item(chunk, update)
            else:
                released = gate.passed_item(chunk)
            yield from released
            if gate.blocked:
                break
        if not gate.blocked:
            final = None
            if session is not None and gate.moderating():
                try:
                    final = session.close()
                except (GuardUnavailableError, GuardOutputError) as exc:
                    yield from gate.failed(exc)
            if not gate.blocked:
                yield from gate.ended(final)
        if gate.blocked:
            _close_sync(upstream)
            if on_done is not None:
                on_done(gate)
            yield from on_block(gate)
        elif on_done is not None:
            on_done(gate)
    finally:
        _close_sync(upstream)
        if session is not None:
            _quiet(getattr(session, "abort", session.close))


async def amoderate_text(
    upstream: AsyncIterator[str],
    guard: Qwen3Guard,
    prompt_messages: list[dict[str, str]],
    *,
    hold_back: int,
    on_block: Callable[[StreamGate[str]], Iterator[str]],
    on_done: Callable[[StreamGate[str]], None] | None = None,
) -> AsyncIterator[str]:
    """The async form of :func:`moderate_text`."""
    gate: StreamGate[str] = StreamGate(
        guard, hold_back=hold_back, text_of=lambda s: s, truncate=_truncate_text
    )
    session: Any = None
    try:
        if gate.checking:
            try:
                session = await guard.aopen_stream(prompt_messages)
            except (GuardUnavailableError, GuardOutputError) as exc:
                for c in gate.failed(exc):
                    yield c
        if not gate.blocked:
            async for chunk in upstream:
                if not isinstance(chunk, str):
                    chunk = str(chunk)
                if session is not None and gate.moderating() and chunk:
                    try:
                        update = await session.afeed_text(chunk)
                    except (GuardUnavailableError, GuardOutputError) as exc:
                        released = gate.failed_item(chunk, exc)
                    else:
                        released = gate.fed_item(chunk, update)
                else:
                    released = gate.passed_item(chunk)
                for c in released:
                    yield c
                if gate.blocked:
                    break
        if not gate.blocked:
            final = None
            if session is not None and gate.moderating():
                try:
                    final = await session.aclose()
                except (GuardUnavailableError, GuardOutputError) as exc:
                    for c in gate.failed(exc):
                        yield c
            if not gate.blocked:
                for c in gate.ended(final):
                    yield c
        if gate.blocked:
            await _close_async(upstream)
            if on_done is not None:
                on_done(gate)
            for c in on_block(gate):
                yield c
        elif on_done is not None:
            on_done(gate)
    finally:
        await _close_async(upstream)
        if session is not None:
            await discard_session(session)


async def discard_session(session: Any) -> None:
    """Free a session without judging what it still holds (its answer is over or was cut);
    a no-op on a session already closed."""
    with contextlib.suppress(Exception):  # freeing is best effort
        aabort = getattr(session, "aabort", None)
        await (aabort() if aabort is not None else session.aclose())


def _close_sync(it: Any) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        _quiet(close)


async def _close_async(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if callable(aclose):
        with contextlib.suppress(Exception):  # closing is best effort
            await aclose()


def _quiet(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):  # closing is best effort
        fn()
