"""Moderating a stream of LangChain chunks: the LangChain side of the core
:class:`qwen3guard.StreamGate`.

What reaches the reader is decided by the core gate (chunks are released once their text is
settled; a flag stops the stream, and the text before the flagged span is offered cut). This
module only adapts it to LangChain:

- the upstream iterator is pulled in the background (a thread, or a task in async code), so
  the moderation of chunk *k* overlaps the LLM's wait for chunk *k+1*, and the chunks that
  arrived while the guard was busy are fed together as one step (:class:`Prefetch`);
- tool-call chunks: their text is not part of the answer the Stream model reads; a chunk that
  carries tool-call data, and everything after it, is held until the stream has ended and the
  aggregated tool calls have been judged (Gen, surface ``tool_call``), then released or
  blocked;
- a prompt the Stream session cannot take (``InvalidInputError`` / ``ContextLengthError`` from
  opening) is judged by ``guard.screen(prompt, "input")`` (Gen, in windows), or blocked when
  even that cannot judge it; the answer is then judged with no prompt. A prompt never inherits
  another prompt's verdict.

Sync and async share one core (:func:`_moderation`), a generator that asks for guard calls
(:class:`Op`); :func:`drive` and :func:`adrive` run it and differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from langchain_core.messages import BaseMessage

from qwen3guard import (
    Decision,
    GateStep,
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    StreamGate,
    Surface,
)
from qwen3guard.content import answer_conversation, tool_call_conversation
from qwen3guard.guard import could_not_judge

from ._convert import has_tool_call_data, structured_output_of, tool_calls_of

log = logging.getLogger("langchain_qwen3guard")

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()
_END = object()


# -- one core, two ways of waiting ------------------------------------------------------------


class Op:
    """A call the shared core asks for: ``sync(*args, **kwargs)`` in sync code,
    ``await asyn(*args, **kwargs)`` in async code."""

    __slots__ = ("args", "asyn", "kwargs", "sync")

    def __init__(
        self, sync: Callable[..., Any], asyn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.sync = sync
        self.asyn = asyn
        self.args = args
        self.kwargs = kwargs


Core = Generator[Any, Any, R]


class _Done(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _advance(core: Core[Any], value: Any, error: BaseException | None) -> Any:
    """The core's next request, given the answer to its last one; raises :class:`_Done`
    with its return value when it has finished."""
    try:
        return core.throw(error) if error is not None else core.send(value)
    except StopIteration as stop:
        raise _Done(stop.value) from None


def run(core: Core[R]) -> R:
    """Run a core that only asks for calls; return what it returns."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            op = _advance(core, value, error)
            value, error = None, None
            try:
                value = op.sync(*op.args, **op.kwargs)
            except Exception as exc:  # noqa: BLE001 - handed to the core
                error = exc
    except _Done as done:
        return done.value


async def arun(core: Core[R]) -> R:
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            op = _advance(core, value, error)
            value, error = None, None
            try:
                value = await op.asyn(*op.args, **op.kwargs)
            except Exception as exc:  # noqa: BLE001
                error = exc
    except _Done as done:
        return done.value


def drive(core: Core[None]) -> Iterator[Any]:
    """Run a core that also yields output (lists of items to pass on)."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            req = _advance(core, value, error)
            value, error = None, None
            if not isinstance(req, Op):
                yield from req
                continue
            try:
                value = req.sync(*req.args, **req.kwargs)
            except Exception as exc:  # noqa: BLE001
                error = exc
    except _Done:
        return
    finally:
        core.close()


async def adrive(core: Core[None]) -> AsyncIterator[Any]:
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            req = _advance(core, value, error)
            value, error = None, None
            if not isinstance(req, Op):
                for item in req:
                    yield item
                continue
            try:
                value = await req.asyn(*req.args, **req.kwargs)
            except Exception as exc:  # noqa: BLE001
                error = exc
    except _Done:
        return
    finally:
        core.close()


# -- guard calls used by every component ---------------------------------------------------------


def screen_op(
    guard: Qwen3Guard, conversation: Any, surface: Surface, policy: Policy | None
) -> Op:
    return Op(guard.screen, guard.ascreen, conversation, surface, policy=policy)


def screen_batch_op(
    guard: Qwen3Guard, items: Sequence[tuple[Any, Surface]], policy: Policy | None
) -> Op:
    return Op(guard.screen_batch, guard.ascreen_batch, list(items), policy=policy)


def screen_prompt(
    guard: Qwen3Guard, prompt: Any, policy: Policy | None
) -> Core[Decision]:
    """A prompt judged by Gen (in windows); one that cannot be judged as given is blocked, and
    a guard that cannot judge it (no Gen model, server down) decides by ``could_not_judge``."""
    try:
        decision: Decision = yield screen_op(guard, prompt, Surface.INPUT, policy)
    except InvalidInputError as exc:
        decision = Decision(False, None, Surface.INPUT, f"cannot be judged: {exc}", error=exc)
    except (GuardUnavailableError, GuardOutputError) as exc:
        decision = could_not_judge(policy if policy is not None else guard.policy, exc,
                                   Surface.INPUT)
    return decision


def open_gate(
    guard: Qwen3Guard, prompt: Any, policy: Policy | None, *, judge_prompt: bool
) -> Core[StreamGate[Any]]:
    """A gate for an answer to ``prompt`` (None: not known). When the Stream session cannot
    take the prompt, the prompt is judged by Gen (``judge_prompt``) and the answer with no
    prompt; never with a stand-in's verdict."""
    try:
        gate: StreamGate[Any] = yield Op(
            StreamGate.open, StreamGate.aopen, guard, prompt, policy=policy
        )
        return gate
    except InvalidInputError as exc:  # ContextLengthError included
        if prompt is None:
            raise
        failure = exc
    decision = None
    if judge_prompt:
        decision = yield from screen_prompt(guard, prompt, policy)
    log.info("the Stream session cannot take the prompt (%s): judged by Gen", failure)
    gate = yield Op(StreamGate.open, StreamGate.aopen, guard, None, policy=policy)
    if decision is not None:
        gate.prompt_decision = decision
    return gate


# -- background pulling -----------------------------------------------------------------------


class Prefetch(Generic[T]):
    """Pull ``source`` in a daemon thread into a queue; :meth:`next_batch` returns the items
    that have arrived (waiting for one), or ``_END``. ``stop()`` makes the thread quit after
    the item it is waiting for and close the source there."""

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ended = False
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

    def next_batch(self) -> Any:
        if self._ended:
            return _END
        return _collect(self._queue.get(), self._queue.get_nowait, queue.Empty, self)

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
        self._ended = False
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

    async def anext_batch(self) -> Any:
        if self._ended:
            return _END
        return _collect(await self._queue.get(), self._queue.get_nowait, asyncio.QueueEmpty,
                        self)

    def next_batch(self) -> Any:  # pragma: no cover - the async driver never calls it
        raise RuntimeError("APrefetch is read with anext_batch()")

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _collect(
    first: tuple[bool, Any],
    get_nowait: Callable[[], tuple[bool, Any]],
    empty: type[Exception],
    owner: Prefetch[Any] | APrefetch[Any],
) -> Any:
    """The items that have arrived: ``first``, then all that are ready; ``_END`` after the
    last; the source's exception re-raised."""
    batch: list[Any] = []
    ok, item = first
    while True:
        if not ok:
            if batch:  # what came before the error first; the error next time
                owner._queue.put_nowait((False, item))
                return batch
            owner._ended = True
            raise item
        if item is _DONE:
            owner._ended = True
            return batch if batch else _END
        batch.append(item)
        try:
            ok, item = get_nowait()
        except empty:
            return batch


# -- the moderation of one stream -------------------------------------------------------------


@dataclass
class StreamRules:
    """How a stream is judged and what happens when it is blocked.

    ``on_block(decision, content)`` either raises or returns the items to pass on in place of
    the rest of the stream. ``cut(item, text)`` returns a copy of ``item`` holding only
    ``text`` (the part of it before a flagged span), or None. ``message_of(item)`` is the
    LangChain message an item carries (for its tool calls), or None.
    """

    guard: Qwen3Guard
    policy: Policy
    on_block: Callable[[Decision, str], list[Any]]
    text_of: Callable[[Any], str]
    cut: Callable[[Any, str], Any]
    message_of: Callable[[Any], BaseMessage | None]
    prompt: Any = None  # the conversation the answer is judged after (None: not known)
    check_prompt: bool = False  # act on the prompt's decision (surface input)
    prompt_text: str = ""  # the content a blocked prompt is reported with


class _Stream:
    """State of one moderated stream (for clean-up by the drivers)."""

    def __init__(self) -> None:
        self.gate: StreamGate[Any] | None = None


class _ToolHold:
    """Released chunks pass on until the first that carries tool-call data; from then on they
    are held for the tool-call check at the end."""

    def __init__(self, rules: StreamRules) -> None:
        self.rules = rules
        self.holding = False
        self.held: list[Any] = []
        self.messages: list[BaseMessage] = []

    def pass_on(self, released: Sequence[list[Any]]) -> list[Any]:
        out: list[Any] = []
        for batch in released:
            for item in batch:
                message = self.rules.message_of(item)
                if message is not None and has_tool_call_data(message):
                    self.holding = True
                    self.messages.append(message)
                (self.held if self.holding else out).append(item)
        return out

    def items(self) -> list[tuple[list[dict[str, str]], Surface]]:
        """What the held chunks carry, to judge with Gen: each aggregated tool call (surface
        ``tool_call``) and a structured output (as the answer, surface ``output``)."""
        return held_items(self.messages, self.rules.prompt)


def held_items(
    messages: list[BaseMessage], prompt: Any
) -> list[tuple[list[dict[str, str]], Surface]]:
    """What the chunks carrying tool-call data hold, to judge with Gen once the stream has
    ended: each aggregated tool call (surface ``tool_call``) and a structured output (as the
    answer to ``prompt``, surface ``output``)."""
    if not messages:
        return []
    merged = _merge(messages)
    calls = [c for m in merged for c in tool_calls_of(m)]
    out = [(tool_call_conversation(c.name, c.arguments), Surface.TOOL_CALL) for c in calls]
    for m in merged:
        structured = structured_output_of(m)
        if structured is not None and structured.strip():
            out.append((answer_conversation(prompt or [], structured), Surface.OUTPUT))
    return out


def _merge(messages: list[BaseMessage]) -> list[BaseMessage]:
    total: Any = messages[0]
    try:
        for m in messages[1:]:
            total = total + m
    except TypeError:
        return messages
    return [total]


def _cut_batch(rules: StreamRules, partial: tuple[list[Any], str] | None) -> list[Any]:
    """The items of a batch before the flagged span (the last one cut)."""
    if partial is None:
        return []
    batch, prefix = partial
    out: list[Any] = []
    used = 0
    for item in batch:
        text = rules.text_of(item)
        if used + len(text) <= len(prefix):
            if text:
                out.append(item)
            used += len(text)
            continue
        piece = prefix[used:]
        if piece:
            cut = rules.cut(item, piece)
            if cut is not None:
                out.append(cut)
        break
    return out


def _moderation(
    rules: StreamRules, state: _Stream, pull: Op
) -> Core[None]:
    """The shared core: yields Ops (guard calls, source reads) and lists of items to pass on."""
    gate = yield from open_gate(rules.guard, rules.prompt, rules.policy,
                                judge_prompt=rules.check_prompt)
    state.gate = gate
    if rules.check_prompt and gate.prompt_decision.blocked:
        yield rules.on_block(gate.prompt_decision, rules.prompt_text)
        return
    tools = _ToolHold(rules)
    step: GateStep[list[Any]]
    while True:
        batch = yield pull
        if batch is _END:
            break
        texts = [rules.text_of(item) for item in batch]
        step = yield Op(gate.feed, gate.afeed, batch, "".join(texts))
        out = tools.pass_on(step.released)
        if step.flagged:
            yield from _blocked(rules, gate, step, out)
            return
        if out:
            yield out
    step = yield Op(gate.finish, gate.afinish)
    out = tools.pass_on(step.released)
    if step.flagged:
        yield from _blocked(rules, gate, step, out)
        return
    if out:
        yield out
    items = tools.items()
    if items:
        decisions: list[Decision] = yield screen_batch_op(rules.guard, items, rules.policy)
        for (conv, _), decision in zip(items, decisions):
            if decision.blocked:
                yield rules.on_block(decision, conv[-1]["content"] if conv else "")
                return
    if tools.held:
        yield tools.held


def _blocked(
    rules: StreamRules, gate: StreamGate[Any], step: GateStep[list[Any]], out: list[Any]
) -> Iterator[list[Any]]:
    out = out + _cut_batch(rules, step.partial)
    if out:
        yield out
    decision = step.decision or Decision(False, None, Surface.OUTPUT, "flagged")
    content = gate.session.response_text if gate.session is not None else ""
    yield rules.on_block(decision, content)


def _prompt_only(rules: StreamRules, state: _Stream, pull: Op) -> Core[None]:
    """The answer is not moderated: the prompt is judged (Gen) while the answer starts, and
    nothing is passed on before it is allowed."""
    if rules.check_prompt and rules.prompt is not None:
        decision = yield from screen_prompt(rules.guard, rules.prompt, rules.policy)
        if decision.blocked:
            yield rules.on_block(decision, rules.prompt_text)
            return
    while True:
        batch = yield pull
        if batch is _END:
            return
        yield batch


def moderate(
    source: Iterator[Any], rules: StreamRules, *, answer: bool = True
) -> Iterator[Any]:
    """Pass ``source`` on, moderated (``answer=False``: only the prompt is judged). The gate
    is opened (the prompt judged) while the first chunk is on its way."""
    pre: Prefetch[Any] = Prefetch(source)
    state = _Stream()
    core = _moderation if answer else _prompt_only
    try:
        yield from drive(core(rules, state, Op(pre.next_batch, _no_async)))
    finally:
        pre.stop()
        if state.gate is not None and not state.gate.finished:
            state.gate.abort()


async def amoderate(
    source: AsyncIterator[Any], rules: StreamRules, *, answer: bool = True
) -> AsyncIterator[Any]:
    """The async form of :func:`moderate`."""
    pre: APrefetch[Any] = APrefetch(source)
    state = _Stream()
    core = _moderation if answer else _prompt_only
    try:
        async for item in adrive(core(rules, state, Op(_no_sync, pre.anext_batch))):
            yield item
    finally:
        await pre.aclose()
        if state.gate is not None and not state.gate.finished:
            await state.gate.aabort()


def _no_async(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover
    raise RuntimeError("a sync source read from async code")


def _no_sync(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover
    raise RuntimeError("an async source read from sync code")
