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

``open_session(guard, ...)`` picks the implementation: the guard's local Stream model
(:class:`~qwen3guard.stream.local.LocalStreamSession`), a remote backend's own sessions (any
``guard.stream`` with an ``open_session`` method), or, with no Stream model, re-checking the
accumulated answer with Gen (:class:`~qwen3guard.stream.fallback.FallbackSession`). All have
the public API of :class:`StreamSession`.

Threading: one session serves one caller at a time; its feeds are serialized by a lock (sync
and async alike: concurrent ``afeed_text`` calls on one session run in call order). Different
sessions may run concurrently. The ``a*`` methods never block the event loop. Mixing sync and
async calls on one session concurrently is not supported.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import GuardUnavailableError, InvalidInputError
from ..verdict import Verdict
from .types import StreamUpdate, TokenVerdict


class StreamSession:
    """Base class: the public session API. Subclasses implement ``_feed_text``,
    ``_feed_ids``, ``_close`` and ``_free`` (and may override the ``_a*`` forms)."""

    prompt_verdict: Verdict | None = None

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._alock: asyncio.Lock | None = None
        self._closed = False
        self._final: StreamUpdate | None = None
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
    def closed(self) -> bool:
        return self._closed

    @property
    def response_text(self) -> str:
        """Everything fed so far (including text not yet judged)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._text_parts)
            self._text_parts = [self._text_cache] if self._text_cache else []
        return self._text_cache

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
            self._check_open()
            return self._feed_text(chunk)

    def feed_ids(self, ids: Sequence[int]) -> StreamUpdate:
        """Feed the next ids of the answer (LLMs that share Qwen3's tokenizer)."""
        ids = _as_id_list(ids)
        with self._lock:
            self._check_open()
            return self._feed_ids(ids)

    def close(self) -> StreamUpdate:
        """End of the answer: judge what was held back, free the session's memory. Idempotent:
        later calls return the same final update."""
        with self._lock:
            if self._closed:
                assert self._final is not None
                return self._final
            try:
                self._final = self._close()
            finally:
                self._closed = True
                self._free()
                if self._final is None:  # _close raised
                    self._final = self._snapshot((), {"closed": True, "aborted": True})
            return self._final

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
        if not isinstance(chunk, str):
            raise InvalidInputError(f"afeed_text() takes a str, not {type(chunk).__name__}")
        async with self._async_lock():
            return await self._afeed_text(chunk)

    async def afeed_ids(self, ids: Sequence[int]) -> StreamUpdate:
        ids = _as_id_list(ids)
        async with self._async_lock():
            return await self._afeed_ids(ids)

    async def aclose(self) -> StreamUpdate:
        async with self._async_lock():
            return await self._aclose()

    async def aabort(self) -> None:
        async with self._async_lock():
            await asyncio.to_thread(self.abort)

    # Default async forms: the sync work in a worker thread.
    async def _afeed_text(self, chunk: str) -> StreamUpdate:
        return await asyncio.to_thread(self.feed_text, chunk)

    async def _afeed_ids(self, ids: list[int]) -> StreamUpdate:
        return await asyncio.to_thread(self.feed_ids, ids)

    async def _aclose(self) -> StreamUpdate:
        return await asyncio.to_thread(self.close)

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

    def _feed_text(self, chunk: str) -> StreamUpdate:
        raise NotImplementedError

    def _feed_ids(self, ids: list[int]) -> StreamUpdate:
        raise NotImplementedError

    def _close(self) -> StreamUpdate:
        raise NotImplementedError

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


def open_session(guard: Any, prompt_messages: Any, **kwargs: Any) -> StreamSession:
    """Open the session kind the guard is configured for (see the module docstring)."""
    from .local import LocalStreamBackend, LocalStreamSession

    stream = guard.stream
    if isinstance(stream, LocalStreamBackend):
        kwargs.setdefault("policy", guard.policy)
        kwargs.pop("fallback_every", None)  # only meaningful for the Gen fallback
        return LocalStreamSession(stream, prompt_messages, **kwargs)
    if stream is not None and hasattr(stream, "open_session"):
        return stream.open_session(prompt_messages, **kwargs)
    from .fallback import FallbackSession

    return FallbackSession.open(guard, prompt_messages, **kwargs)


async def aopen_session(guard: Any, prompt_messages: Any, **kwargs: Any) -> StreamSession:
    from .local import LocalStreamBackend, LocalStreamSession

    stream = guard.stream
    if isinstance(stream, LocalStreamBackend):
        kwargs.setdefault("policy", guard.policy)
        kwargs.pop("fallback_every", None)
        return await asyncio.to_thread(LocalStreamSession, stream, prompt_messages, **kwargs)
    if stream is not None and hasattr(stream, "aopen_session"):
        return await stream.aopen_session(prompt_messages, **kwargs)
    if stream is not None and hasattr(stream, "open_session"):
        return await asyncio.to_thread(stream.open_session, prompt_messages, **kwargs)
    from .fallback import FallbackSession

    return await FallbackSession.aopen(guard, prompt_messages, **kwargs)
