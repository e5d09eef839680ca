"""Streaming-moderation sessions: the API integrations code against, and which kind to open.

    with guard.open_stream(prompt_messages) as session:   # the prompt is judged on open
        session.prompt_verdict                              # Verdict (role PROMPT) or None
        for chunk in llm_stream:
            update = session.feed_text(chunk)               # or feed_ids(ids) for Qwen3 ids
            if update.flagged:                              # sticky
                break                                       # cut the answer here
        final = session.close()                             # judges held-back text; idempotent

    async with await guard.aopen_stream(prompt_messages) as session:
        update = await session.afeed_text(chunk)

``open_session(guard, ...)`` asks the guard's Stream backend (a :class:`StreamBackend`: the
local model, a server, vLLM) for a session or, with no Stream model, re-checks the accumulated
answer with Gen (:class:`~qwen3guard.stream.fallback.FallbackSession`). All have the public API
of :class:`StreamSession`.

A prompt is never judged by a stand-in: a prompt too long for the Stream model even in windows
(the template of ~200 short turns alone can fill its context) is judged whole by Gen, in
windows, and the answer is judged in the context of the most recent messages that fit; with no
Gen model it raises :class:`~qwen3guard.ContextLengthError`. With no prompt at all
(``prompt_messages=None``) the answer is judged in a neutral context and ``prompt_verdict`` is
None, never Safe.

Threading: one session serves one caller at a time; its feeds are serialized by a lock (sync
and async alike: concurrent ``afeed_text`` calls on one session run in call order). Different
sessions may run concurrently. The ``a*`` methods never block the event loop. Mixing sync and
async calls on one session concurrently is not supported.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..content import NO_PROMPT as NO_PROMPT_TEXT
from ..errors import ContextLengthError, GuardUnavailableError, InvalidInputError
from ..messages import normalize_messages
from ..verdict import Verdict, worst
from .types import StreamUpdate, TokenVerdict

if TYPE_CHECKING:
    from ..guard import Qwen3Guard


class StreamSession:
    """Base class: the public session API. Subclasses implement ``_feed_text``,
    ``_feed_ids``, ``_close`` and ``_free`` (and may override the ``_a*`` forms)."""

    prompt_verdict: Verdict | None = None

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._alock: asyncio.Lock | None = None
        self._closed = False
        self._final: StreamUpdate | None = None
        self._end_update: StreamUpdate | None = None  # set by end(), cleared by rollback()
        self._text_parts: list[str] = []
        self._text_cache: str | None = ""
        self._text_len = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def flagged(self) -> bool:
        raise NotImplementedError

    @property
    def verdict(self) -> Verdict | None:
        raise NotImplementedError

    @property
    def tokens_seen(self) -> int:
        raise NotImplementedError

    @property
    def settled_offset(self) -> int:
        """The offset in ``response_text`` before which no future flag can start (see
        :class:`~qwen3guard.stream.types.StreamUpdate`)."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def response_text(self) -> str:
        """Everything fed so far (including text not yet judged)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._text_parts)
            self._text_parts = [self._text_cache] if self._text_cache else []
        return self._text_cache

    @property
    def text_length(self) -> int:
        """``len(response_text)``, without joining it."""
        return self._text_len

    def text_since(self, offset: int) -> str:
        """``response_text[offset:]``, reading only the parts after ``offset`` (a server sends
        each step's new text without joining the whole answer every time)."""
        need = self._text_len - max(0, offset)
        if need <= 0:
            return ""
        if self._text_cache is not None:
            return self._text_cache[len(self._text_cache) - need :]
        tail: list[str] = []
        got = 0
        for part in reversed(self._text_parts):
            tail.append(part)
            got += len(part)
            if got >= need:
                break
        joined = "".join(reversed(tail))
        return joined[len(joined) - need :]

    def _append_text(self, text: str) -> None:
        if text:
            self._text_parts.append(text)
            self._text_cache = None
            self._text_len += len(text)

    # -- sync API ------------------------------------------------------------------------------

    def feed_text(self, chunk: str) -> StreamUpdate:
        """Feed the next piece of the answer as text (any LLM's)."""
        if not isinstance(chunk, str):
            raise InvalidInputError(f"feed_text() takes a str, not {type(chunk).__name__}")
        with self._lock:
            self._check_feedable()
            return self._feed_text(chunk)

    def feed_ids(self, ids: Sequence[int]) -> StreamUpdate:
        """Feed the next ids of the answer (LLMs that share Qwen3's tokenizer)."""
        ids = _as_id_list(ids)
        with self._lock:
            self._check_feedable()
            return self._feed_ids(ids)

    def close(self) -> StreamUpdate:
        """End of the answer: judge what was held back, free the session's memory. Idempotent:
        later calls return the same final update."""
        with self._lock:
            if self._closed:
                assert self._final is not None
                return self._final
            try:
                self._final = self._end_update if self._end_update is not None else self._close()
            finally:
                self._closed = True
                self._free()
                if self._final is None:  # _close raised
                    self._final = self._snapshot((), {"closed": True, "aborted": True})
            return self._final

    def end(self) -> StreamUpdate:
        """The answer is complete: judge what was held back, as :meth:`close` does, but keep the
        session so that it can still be rolled back. Feeding again needs a :meth:`rollback`
        first; :meth:`close` after it only frees. Idempotent."""
        with self._lock:
            self._check_open()
            if self._end_update is None:
                self._end_update = self._close()
            return self._end_update

    def rollback(self, offset: int) -> StreamUpdate:
        """Forget the answer after ``offset`` (a character offset in ``response_text``): the
        session becomes the same as a fresh session on the same prompt fed
        ``response_text[:offset]`` in one chunk (same per-token verdicts, same flag state; a flag
        after ``offset`` is gone). Returns the update that feeding the kept text gives. Used to
        regenerate a flagged answer from a kept prefix (:mod:`qwen3guard.stream.intervene`)."""
        with self._lock:
            self._check_open()
            kept = self._kept(offset)
            self._forget_answer()
            return self._feed_text(kept) if kept else self._snapshot((), {"rolled_back": True})

    def _forget_answer(self) -> None:
        self._text_parts, self._text_cache, self._text_len = [], "", 0
        self._end_update = None
        self._reset_answer()

    def _kept(self, offset: int) -> str:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise InvalidInputError(f"rollback() takes an int offset, not {type(offset).__name__}")
        text = self.response_text
        if not 0 <= offset <= len(text):
            raise InvalidInputError(f"rollback({offset}): the answer has {len(text)} characters")
        return text[:offset]

    def abort(self) -> None:
        """Free the session without judging held-back text (used when the caller's code
        raised inside ``with``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._final = self._snapshot((), {"closed": True, "aborted": True})
            self._free()

    # -- async API -----------------------------------------------------------------------------

    def _async_lock(self) -> asyncio.Lock:
        if self._alock is None:  # created in the loop's thread; no await between test and set
            self._alock = asyncio.Lock()
        return self._alock

    async def afeed_text(self, chunk: str) -> StreamUpdate:
        """:meth:`feed_text`, awaited (the model work runs off the event loop)."""
        if not isinstance(chunk, str):
            raise InvalidInputError(f"afeed_text() takes a str, not {type(chunk).__name__}")
        async with self._async_lock():
            return await self._afeed_text(chunk)

    async def afeed_ids(self, ids: Sequence[int]) -> StreamUpdate:
        """:meth:`feed_ids`, awaited."""
        ids = _as_id_list(ids)
        async with self._async_lock():
            return await self._afeed_ids(ids)

    async def aclose(self) -> StreamUpdate:
        """:meth:`close`, awaited."""
        async with self._async_lock():
            return await self._aclose()

    async def aend(self) -> StreamUpdate:
        """:meth:`end`, awaited."""
        async with self._async_lock():
            return await self._aend()

    async def arollback(self, offset: int) -> StreamUpdate:
        """:meth:`rollback`, awaited."""
        async with self._async_lock():
            return await self._arollback(offset)

    async def aabort(self) -> None:
        """:meth:`abort`, awaited."""
        async with self._async_lock():
            await asyncio.to_thread(self.abort)

    # Default async forms: the sync work in a worker thread.
    async def _afeed_text(self, chunk: str) -> StreamUpdate:
        return await asyncio.to_thread(self.feed_text, chunk)

    async def _afeed_ids(self, ids: list[int]) -> StreamUpdate:
        return await asyncio.to_thread(self.feed_ids, ids)

    async def _aclose(self) -> StreamUpdate:
        return await asyncio.to_thread(self.close)

    async def _arollback(self, offset: int) -> StreamUpdate:
        return await asyncio.to_thread(self.rollback, offset)

    async def _aend(self) -> StreamUpdate:
        return await asyncio.to_thread(self.end)

    # -- context managers ----------------------------------------------------------------------

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    async def __aenter__(self) -> StreamSession:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            await self.aabort()

    # -- for subclasses ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GuardUnavailableError("this stream session is closed")

    def _check_feedable(self) -> None:
        self._check_open()
        if self._end_update is not None:
            raise InvalidInputError("this answer has ended (end()); rollback() before feeding")

    def _feed_text(self, chunk: str) -> StreamUpdate:
        raise NotImplementedError

    def _feed_ids(self, ids: list[int]) -> StreamUpdate:
        raise NotImplementedError

    def _close(self) -> StreamUpdate:
        raise NotImplementedError

    def _reset_answer(self) -> None:
        """Back to the state right after open (the prompt judged, no answer fed)."""
        raise NotImplementedError(f"{type(self).__name__} cannot roll back")

    def _free(self) -> None:
        """Release memory; must not raise."""

    def _snapshot(
        self, token_verdicts: Sequence[TokenVerdict] = (), metadata: dict[str, Any] | None = None
    ) -> StreamUpdate:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {state} tokens_seen={self.tokens_seen} flagged={self.flagged}>"
        )


def _as_id_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        ids = ids.tolist()  # a tensor or an array
    if isinstance(ids, int) and not isinstance(ids, bool):
        ids = [ids]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InvalidInputError(f"feed_ids() takes a sequence of ints, not {type(ids).__name__}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise InvalidInputError(f"feed_ids(): token ids must be non-negative ints, got {i!r}")
        out.append(int(i))
    return out


# -- which session -----------------------------------------------------------------------------

#: The context a Stream session judges an answer in when no prompt is known. Its own verdict is
#: never reported: ``prompt_verdict`` is None for such a session.
NO_PROMPT: tuple[dict[str, str], ...] = ({"role": "user", "content": NO_PROMPT_TEXT},)


@runtime_checkable
class StreamBackend(Protocol):
    """What a Stream model backend offers: the local model, a ``qwen3guard serve`` server, or
    vLLM. ``open_session`` judges the prompt and returns a session; it raises
    :class:`~qwen3guard.ContextLengthError` when the prompt does not fit the model."""

    name: str

    def open_session(self, prompt_messages: Any, **options: Any) -> StreamSession:
        """Judge the prompt and open a session for its answer."""
        ...

    async def aopen_session(self, prompt_messages: Any, **options: Any) -> StreamSession:
        """:meth:`open_session`, awaited."""
        ...

    def close(self) -> None:
        """Free the model or the connection."""
        ...


def open_session(guard: Qwen3Guard, prompt_messages: Any, **kwargs: Any) -> StreamSession:
    """Open the session kind the guard is configured for (see the module docstring)."""
    stream = guard.stream
    if stream is None:
        from .fallback import FallbackSession

        return FallbackSession.open(guard, prompt_messages, **kwargs)
    options = _options(guard, kwargs)
    if prompt_messages is None:
        return _without_prompt(stream.open_session(list(NO_PROMPT), **options))
    try:
        return stream.open_session(prompt_messages, **options)
    except ContextLengthError:
        if guard.gen is None:
            raise
    # Too long for Stream even in windows: the prompt is judged whole by Gen (windows, worst
    # wins), and the answer in the context of the most recent messages that fit.
    messages = normalize_messages(prompt_messages)
    gen_verdict = guard.check(messages)
    lo, hi = 1, len(messages) - 1  # drop the first k messages; find the smallest k that fits
    session: StreamSession | None = None
    while lo <= hi:
        k = (lo + hi) // 2
        try:
            candidate = stream.open_session(messages[k:], **options)
        except ContextLengthError:
            lo = k + 1
            continue
        if session is not None:
            session.abort()
        session, hi = candidate, k - 1
    if session is None:
        raise ContextLengthError("not even the last message of the prompt fits the Stream model")
    return _judged_by_gen(session, gen_verdict)


async def aopen_session(guard: Qwen3Guard, prompt_messages: Any, **kwargs: Any) -> StreamSession:
    stream = guard.stream
    if stream is None:
        from .fallback import FallbackSession

        return await FallbackSession.aopen(guard, prompt_messages, **kwargs)
    options = _options(guard, kwargs)
    if prompt_messages is None:
        return _without_prompt(await stream.aopen_session(list(NO_PROMPT), **options))
    try:
        return await stream.aopen_session(prompt_messages, **options)
    except ContextLengthError:
        if guard.gen is None:
            raise
    messages = normalize_messages(prompt_messages)
    gen_verdict = await guard.acheck(messages)
    lo, hi = 1, len(messages) - 1
    session: StreamSession | None = None
    while lo <= hi:
        k = (lo + hi) // 2
        try:
            candidate = await stream.aopen_session(messages[k:], **options)
        except ContextLengthError:
            lo = k + 1
            continue
        if session is not None:
            await session.aabort()
        session, hi = candidate, k - 1
    if session is None:
        raise ContextLengthError("not even the last message of the prompt fits the Stream model")
    return _judged_by_gen(session, gen_verdict)


def _options(guard: Qwen3Guard, kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs)
    options.setdefault("policy", guard.policy)
    options.pop("fallback_every", None)  # only meaningful for the Gen fallback
    return options


def _without_prompt(session: StreamSession) -> StreamSession:
    session.prompt_verdict = None  # the placeholder's verdict says nothing about any prompt
    return session


def _judged_by_gen(session: StreamSession, gen_verdict: Verdict) -> StreamSession:
    stream_verdict = session.prompt_verdict
    verdicts = [gen_verdict] if stream_verdict is None else [gen_verdict, stream_verdict]
    combined = worst(verdicts)
    session.prompt_verdict = replace(
        combined, metadata={**combined.metadata, "judged_by": "gen", "stream_context": "suffix"}
    )
    return session
