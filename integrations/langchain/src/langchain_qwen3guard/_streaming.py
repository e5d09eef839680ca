"""Moderating a stream of chunks through a Qwen3Guard Stream session.

Every chunk's text is fed to the session as it arrives; a chunk is passed on once the session
has scored all of its text and ``holdback_tokens`` more tokens after it, so that when the
debounce flags (two unsafe tokens in a row, the span starting at the first of them) the
flagged span has not been passed on. What is held back is therefore the session's unstable
tail (the last words the re-tokenizer has not committed) plus ``holdback_tokens`` tokens:
never the whole answer. Chunks keep their identity and order; chunks without text (tool-call
chunks, the empty last chunk) wait their turn.

The upstream iterator is pulled in the background (a thread, or a task in async code), so
the moderation of chunk *k* overlaps the LLM's wait for chunk *k+1* and the prompt check on
open overlaps the wait for the first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from qwen3guard import Decision, GuardOutputError, GuardUnavailableError, Policy, Surface

from ._screen import failed

T = TypeVar("T")

_FAILURES = (GuardUnavailableError, GuardOutputError)
_DONE = object()


# -- background pulling -----------------------------------------------------------------------


class Prefetch(Generic[T]):
    """Pull ``source`` in a daemon thread into a queue; iterate to get its items (and its
    exception, re-raised here). ``stop()`` makes the thread quit after the item it is
    waiting for and close the source there."""

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run,), daemon=True, name="qwen3guard-prefetch"
        )
        self._thread.start()

    def _run(self) -> None:
        it = self._source
        try:
            while not self._stop.is_set():
                try:
                    item = next(it)
                except StopIteration:
                    break
                self._queue.put((True, item))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put((False, exc))
            return
        finally:
            if self._stop.is_set():
                close = getattr(it, "close", None)
                if callable(close):
                    with contextlib.suppress(Exception):
                        close()
        self._queue.put((True, _DONE))

    def batches(self) -> Iterator[list[T]]:
        """Lists of the items that have arrived: waits for one, then takes all that are
        ready, so that a consumer that fell behind catches up in one step."""
        while True:
            batch: list[T] = []
            ok, item = self._queue.get()
            while True:
                if not ok or item is _DONE:
                    if batch:
                        yield batch
                    if not ok:
                        raise item
                    return
                batch.append(item)
                try:
                    ok, item = self._queue.get_nowait()
                except queue.Empty:
                    break
            yield batch

    def stop(self) -> None:
        # Wait for the thread to let go of ``source``: LangChain reads its tee'd copy of the
        # same input on the caller's thread right after us, and a tee cannot be read from two
        # threads at once. This costs at most the upstream chunk in flight.
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)


class APrefetch(Generic[T]):
    """The async form of :class:`Prefetch`: a task pulls ``source``; ``aclose()`` cancels it."""

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for item in self._source:
                await self._queue.put((True, item))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await self._queue.put((False, exc))
            return
        await self._queue.put((True, _DONE))

    async def batches(self) -> AsyncIterator[list[T]]:
        """See :meth:`Prefetch.batches`."""
        while True:
            batch: list[T] = []
            ok, item = await self._queue.get()
            while True:
                if not ok or item is _DONE:
                    if batch:
                        yield batch
                    if not ok:
                        raise item
                    return
                batch.append(item)
                try:
                    ok, item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            yield batch

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# -- the release rule ---------------------------------------------------------------------------


class Gate(Generic[T]):
    """Which chunks may be passed on, given what the session has scored so far."""

    def __init__(self, holdback_tokens: int = 1) -> None:
        self.holdback = max(0, int(holdback_tokens))
        self._pending: deque[tuple[T, int]] = deque()
        self.fed = 0  # characters of response text handed to the session
        self.scored = 0  # characters of response text the session has scored
        self._starts: deque[int] = deque(maxlen=max(1, self.holdback))
        self.open = False  # True: release everything (moderation off after a fail-open)
        self.whole = False  # True: the session judges the whole text so far (Gen fallback)

    def add(self, item: T, text: str) -> None:
        self.fed += len(text)
        self._pending.append((item, self.fed))

    def observe(self, update: Any) -> None:
        meta = getattr(update, "metadata", None) or {}
        if meta.get("fallback"):
            # Gen re-checks (no Stream model): a passing check judged everything fed so far.
            self.whole = True
            if meta.get("checked") and not getattr(update, "flagged", False):
                self.scored = self.fed
            return
        for tv in getattr(update, "token_verdicts", ()) or ():
            self._starts.append(self.scored)
            self.scored += len(getattr(tv, "text", "") or "")
        self.scored = min(self.scored, self.fed)

    def _limit(self) -> int:
        if self.open:
            return self.fed
        if self.holdback == 0 or self.whole:
            return self.scored
        if len(self._starts) < self.holdback:
            return 0
        return self._starts[0]

    def ready(self) -> list[T]:
        limit = self._limit()
        out: list[T] = []
        while self._pending and self._pending[0][1] <= limit:
            out.append(self._pending.popleft()[0])
        return out

    def drain(self) -> list[T]:
        out = [item for item, _ in self._pending]
        self._pending.clear()
        return out


# -- the moderation loop ------------------------------------------------------------------------


@dataclass
class StreamRules:
    """How a stream is judged and what happens when it is blocked.

    ``on_block(decision, response_text)`` either raises or returns the items to emit in place
    of the rest of the stream. ``prompt_surface`` is the surface the session's prompt verdict
    is decided on (``None``: the prompt verdict is not acted on).
    """

    policy: Policy
    on_block: Callable[[Decision, str], list[Any]]
    holdback_tokens: int = 1
    prompt_surface: Surface | None = None
    output_surface: Surface = Surface.OUTPUT
    prompt_text: str = ""  # the content a blocked prompt is reported with


class _Blocked(Exception):
    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _prompt_check(rules: StreamRules, session: Any) -> None:
    if rules.prompt_surface is None:
        return
    decision = rules.policy.decide(getattr(session, "prompt_verdict", None), rules.prompt_surface)
    if decision.blocked:
        raise _Blocked(rules.on_block(decision, rules.prompt_text))


def _flag_check(rules: StreamRules, session: Any, update: Any) -> None:
    if not getattr(update, "flagged", False):
        return
    decision = rules.policy.decide(getattr(update, "verdict", None), rules.output_surface)
    if decision.blocked:
        raise _Blocked(rules.on_block(decision, _response_text(session)))


def _failure(
    rules: StreamRules, gate: Gate[Any], exc: BaseException, surface: Surface, session: Any
) -> None:
    decision = failed(rules.policy, exc, surface)
    if decision.blocked:
        raise _Blocked(rules.on_block(decision, _response_text(session)))
    gate.open = True  # fail-open: the rest passes unmoderated (a warning was issued)


def _add_all(gate: Gate[T], batch: list[T], text_of: Callable[[T], str]) -> str:
    """Queue the items of a batch; their text, to be fed in one step."""
    texts = []
    for item in batch:
        text = text_of(item)
        gate.add(item, text)
        texts.append(text)
    return "".join(texts)


def _response_text(session: Any) -> str:
    try:
        return str(getattr(session, "response_text", "") or "")
    except Exception:  # noqa: BLE001
        return ""


def _close_quietly(session: Any) -> None:
    if session is not None:
        with contextlib.suppress(Exception):
            session.close()


async def _aclose_quietly(session: Any) -> None:
    if session is not None:
        with contextlib.suppress(Exception):
            await session.aclose()


def moderate(
    source: Iterator[T],
    *,
    open_session: Callable[[], Any],
    text_of: Callable[[T], str],
    rules: StreamRules,
) -> Iterator[Any]:
    """Pass ``source`` on, moderated. ``open_session`` is called after ``source`` has started
    (so that the prompt check overlaps the wait for the first chunk)."""
    pre = Prefetch(source)
    session = None
    gate: Gate[T] = Gate(rules.holdback_tokens)
    try:
        try:
            session = open_session()
        except _FAILURES as exc:
            _failure(rules, gate, exc, rules.prompt_surface or rules.output_surface, None)
        if session is not None:
            _prompt_check(rules, session)
        for batch in pre.batches():
            text = _add_all(gate, batch, text_of)
            if text and session is not None and not gate.open:
                try:
                    update = session.feed_text(text)
                except _FAILURES as exc:
                    _failure(rules, gate, exc, rules.output_surface, session)
                else:
                    gate.observe(update)
                    _flag_check(rules, session, update)
            yield from gate.ready()
        if session is not None and not gate.open:
            try:
                update = session.close()
            except _FAILURES as exc:
                _failure(rules, gate, exc, rules.output_surface, session)
            else:
                _flag_check(rules, session, update)
        yield from gate.drain()
    except _Blocked as blocked:
        yield from blocked.items
    finally:
        pre.stop()
        _close_quietly(session)


async def amoderate(
    source: AsyncIterator[T],
    *,
    open_session: Callable[[], Any],
    text_of: Callable[[T], str],
    rules: StreamRules,
) -> AsyncIterator[Any]:
    """The async form of :func:`moderate`; ``open_session`` returns an awaitable."""
    pre = APrefetch(source)
    session = None
    gate: Gate[T] = Gate(rules.holdback_tokens)
    try:
        try:
            session = await open_session()
        except _FAILURES as exc:
            _failure(rules, gate, exc, rules.prompt_surface or rules.output_surface, None)
        if session is not None:
            _prompt_check(rules, session)
        async for batch in pre.batches():
            text = _add_all(gate, batch, text_of)
            if text and session is not None and not gate.open:
                try:
                    update = await session.afeed_text(text)
                except _FAILURES as exc:
                    _failure(rules, gate, exc, rules.output_surface, session)
                else:
                    gate.observe(update)
                    _flag_check(rules, session, update)
            for ready in gate.ready():
                yield ready
        if session is not None and not gate.open:
            try:
                update = await session.aclose()
            except _FAILURES as exc:
                _failure(rules, gate, exc, rules.output_surface, session)
            else:
                _flag_check(rules, session, update)
        for ready in gate.drain():
            yield ready
    except _Blocked as blocked:
        for item in blocked.items:
            yield item
    finally:
        await pre.aclose()
        await _aclose_quietly(session)
