"""LlamaIndex streams through the core :class:`qwen3guard.StreamGate`.

The gate decides what the reader sees and when: a chunk is released once all of its text is
settled (judged, and before any offset where a future flag could start); at a flag only the
text before the flagged span's start leaves; a guard that cannot judge decides by the core's
fail-closed rule. This module only adapts it: it walks a text generator (a query engine's
``StreamingResponse`` / ``AsyncStreamingResponse``) or agent events through the gate, closes
the upstream generator as soon as the answer is blocked, and keeps what the metadata reports.
Sync and async walks share :class:`Moderation`; they differ only in how they wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

from qwen3guard import (
    Decision,
    GateStep,
    Policy,
    Qwen3Guard,
    StreamGate,
    Surface,
    UnsafeContentError,
)

from ._common import Messages, decision_meta

T = TypeVar("T")


class Moderation(Generic[T]):
    """One streamed answer's moderation: the gate's steps turned into what the reader gets.

    ``text_of(chunk)`` is the text a chunk adds to the answer; ``cut(chunk, text)`` the chunk
    showing only ``text`` (its part before the flagged span), or None to show nothing of it.
    """

    def __init__(
        self,
        text_of: Callable[[T], str],
        cut: Callable[[T, str], T | None],
    ) -> None:
        self.text_of = text_of
        self.cut = cut
        self.gate: StreamGate[T] | None = None  # None: the output surface is not checked
        self.decision: Decision | None = None  # the block, or the final allow
        self.flag_offset: int | None = None
        self.shown = 0  # characters of the answer released to the reader
        self._texts: list[str] = []

    @property
    def answer(self) -> str:
        """All the answer's text received from upstream so far (shown or not)."""
        return "".join(self._texts)

    @property
    def blocked(self) -> bool:
        return self.decision is not None and self.decision.blocked

    def opened(self, gate: StreamGate[T] | None) -> list[T]:
        self.gate = gate
        if gate is not None and gate.flagged:  # no session and fail-closed: nothing is shown
            self.decision = gate.decision
            self.flag_offset = 0
        return []

    def text(self, chunk: T) -> str:
        text = self.text_of(chunk)
        self._texts.append(text)
        return text

    def passed(self, chunk: T) -> list[T]:
        """A chunk of a stream nobody moderates (the surface is off)."""
        self.shown += len(self.text(chunk))
        return [chunk]

    def step(self, step: GateStep[T]) -> list[T]:
        """What the reader receives for one of the gate's steps."""
        out = list(step.released)
        self.shown += sum(len(self.text_of(c)) for c in out)
        if step.flagged:
            self.decision = step.decision
            update = step.update
            offset = update.flag_offset if update is not None else None
            if step.partial is not None:
                chunk, text = step.partial
                part = self.cut(chunk, text) if text else None
                if part is not None:
                    out.append(part)
                    self.shown += len(text)
            self.flag_offset = self.shown if offset is None else max(offset, self.shown)
        elif step.decision is not None:
            self.decision = step.decision
        return out

    def error(self) -> UnsafeContentError:
        assert self.decision is not None
        return UnsafeContentError(
            stage=Surface.OUTPUT, content=self.answer, decision=self.decision
        )

    def info(self) -> dict[str, Any]:
        update = self.gate.last_update if self.gate is not None else None
        return decision_meta(
            self.decision,
            flag_offset=self.flag_offset,
            tokens_seen=update.tokens_seen if update is not None else 0,
            shown=self.shown,
        )


def empty_text() -> Generator[str, None, None]:
    """A text generator with nothing in it."""
    yield from ()


def _cut_text(chunk: str, text: str) -> str | None:
    return text or None


def _as_text(chunk: Any) -> str:
    return chunk if isinstance(chunk, str) else str(chunk)


def moderate_text(
    upstream: Iterator[Any],
    guard: Qwen3Guard,
    prompt: Messages | None,
    *,
    policy: Policy | None,
    on_block: Callable[[Moderation[str]], Iterator[str]],
    on_done: Callable[[Moderation[str]], None] | None = None,
) -> Generator[str, None, None]:
    """Moderate a sync stream of text chunks. ``on_block`` yields what follows the safe prefix
    (or raises); the upstream generator is closed as soon as the answer is blocked."""
    run: Moderation[str] = Moderation(lambda s: s, _cut_text)
    pol = policy if policy is not None else guard.policy
    gate: StreamGate[str] | None = None
    try:
        if pol.is_enabled(Surface.OUTPUT):
            gate = StreamGate.open(guard, prompt, policy=pol)
        run.opened(gate)
        if not run.blocked:
            for item in upstream:
                chunk = _as_text(item)
                if gate is None:
                    yield from run.passed(chunk)
                    continue
                yield from run.step(gate.feed(chunk, run.text(chunk)))
                if run.blocked:
                    break
            else:
                if gate is not None:
                    yield from run.step(gate.finish())
        if run.blocked:
            _close_sync(upstream)
        if on_done is not None:
            on_done(run)
        if run.blocked:
            yield from on_block(run)
    finally:
        _close_sync(upstream)
        if gate is not None and not gate.finished:
            gate.abort()


async def amoderate_text(
    upstream: AsyncIterator[Any],
    guard: Qwen3Guard,
    prompt: Messages | None,
    *,
    policy: Policy | None,
    on_block: Callable[[Moderation[str]], Iterator[str]],
    on_done: Callable[[Moderation[str]], None] | None = None,
) -> AsyncGenerator[str, None]:
    """The async form of :func:`moderate_text`."""
    run: Moderation[str] = Moderation(lambda s: s, _cut_text)
    pol = policy if policy is not None else guard.policy
    gate: StreamGate[str] | None = None
    try:
        if pol.is_enabled(Surface.OUTPUT):
            gate = await StreamGate.aopen(guard, prompt, policy=pol)
        run.opened(gate)
        if not run.blocked:
            async for item in upstream:
                chunk = _as_text(item)
                released = (
                    run.passed(chunk)
                    if gate is None
                    else run.step(await gate.afeed(chunk, run.text(chunk)))
                )
                for c in released:
                    yield c
                if run.blocked:
                    break
            else:
                if gate is not None:
                    for c in run.step(await gate.afinish()):
                        yield c
        if run.blocked:
            await _close_async(upstream)
        if on_done is not None:
            on_done(run)
        if run.blocked:
            for c in on_block(run):
                yield c
    finally:
        await _close_async(upstream)
        if gate is not None and not gate.finished:
            with contextlib.suppress(Exception):  # freeing is best effort
                await gate.aabort()


def _close_sync(it: Any) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):  # closing is best effort
            close()


async def _close_async(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if callable(aclose):
        with contextlib.suppress(Exception):  # closing is best effort
            await aclose()
