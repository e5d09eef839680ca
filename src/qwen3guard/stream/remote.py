"""The Stream model of a ``qwen3guard serve`` server, over a WebSocket (``/v1/stream``).

    guard = Qwen3Guard.from_endpoint("http://127.0.0.1:8000/v1", stream=True)
    with guard.open_stream([{"role": "user", "content": "Tell me a story"}]) as session:
        update = session.feed_text(chunk)         # one round trip per chunk

A session here has the public API of a local one (``prompt_verdict``, ``feed_text``,
``feed_ids``, ``close``, ``end``, ``rollback``, ``flagged``, ``verdict``, ``response_text``, the
``a*`` forms, sync and async context managers); the server runs a local session per socket.
``rollback(offset)`` asks the server to roll its session back (the same as a fresh session fed
the kept prefix) and takes the server's state after it; ``end()`` judges the held-back text and
keeps the socket open for a rollback. Anything that goes wrong
on the way (refused connection, timeout, a closed socket, a malformed answer) raises
:class:`GuardUnavailableError` or :class:`GuardOutputError` and ends the session: an answer
that did not arrive is never taken as Safe.

The wire protocol and its codec live in :mod:`qwen3guard.stream.wire` (shared with the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import GuardOutputError, GuardUnavailableError, InvalidInputError, Qwen3GuardError
from ..messages import normalize_messages
from ..verdict import Verdict
from .session import StreamSession
from .types import StreamUpdate, TokenVerdict
from .wire import decode_answer, options_to_wire, update_from_wire, verdict_from_wire

# -- client ---------------------------------------------------------------------------------


def stream_url(base_url: str, path: str = "/stream") -> str:
    """``http://h:8000/v1`` -> ``ws://h:8000/v1/stream`` (``https`` -> ``wss``)."""
    parts = urlsplit(base_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) or ws(s) URL, not {base_url!r}")
    base = parts.path.rstrip("/") or "/v1"
    return urlunsplit((scheme, parts.netloc, base + path, "", ""))


class RemoteStreamBackend:
    """Opens moderation sessions on a ``qwen3guard serve`` server's Stream model."""

    name = "remote-stream"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        path: str = "/stream",
        max_message_bytes: int = 16 * 2**20,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = stream_url(base_url, path)
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_message_bytes = max_message_bytes
        self._sessions: weakref.WeakSet[_RemoteSessionBase] = weakref.WeakSet()
        self._closed = False

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _hello(self, prompt_messages: Any, options: Mapping[str, Any]) -> str:
        if self._closed:
            raise GuardUnavailableError("the remote Stream backend has been closed")
        messages = normalize_messages(prompt_messages)
        try:
            return json.dumps({"messages": messages, "options": options_to_wire(options)})
        except TypeError as exc:
            raise InvalidInputError(f"stream options must be JSON values: {exc}") from exc

    def open_session(self, prompt_messages: Any, **options: Any) -> RemoteStreamSession:
        """Open a session (blocking); the prompt is judged on open."""
        from websockets.sync.client import connect

        hello = self._hello(prompt_messages, options)
        try:
            extra: dict[str, Any] = {"legacy": True} if _takes_legacy_flag(connect) else {}
            ws = connect(
                self.url,
                **extra,
                additional_headers=self._headers(),
                open_timeout=self.timeout,
                close_timeout=5,
                max_size=self.max_message_bytes,
            )
        except Exception as exc:  # noqa: BLE001 - refused, DNS, HTTP 401, handshake timeout
            raise _unavailable(f"could not open a stream session at {self.url}", exc) from exc
        session = RemoteStreamSession(ws, self.timeout)
        session._start(hello)
        self._sessions.add(session)
        return session

    async def aopen_session(self, prompt_messages: Any, **options: Any) -> AsyncRemoteStreamSession:
        """Open a session without blocking the event loop."""
        from websockets.asyncio.client import connect

        hello = self._hello(prompt_messages, options)
        try:
            ws = await connect(
                self.url,
                additional_headers=self._headers(),
                open_timeout=self.timeout,
                close_timeout=5,
                max_size=self.max_message_bytes,
            )
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(f"could not open a stream session at {self.url}", exc) from exc
        session = AsyncRemoteStreamSession(ws, self.timeout)
        await session._start(hello)
        self._sessions.add(session)
        return session

    def close(self) -> None:
        """Abort the sessions still open (their next call raises) and refuse new ones."""
        self._closed = True
        for s in list(self._sessions):
            if not s.closed:
                s._failure = GuardUnavailableError("the remote Stream backend has been closed")
                s._closed = True
                s._final = s._snapshot((), {"closed": True, "aborted": True})
                s._free()


def _takes_legacy_flag(connect: Any) -> bool:
    """websockets >= 16 wants ``legacy=True`` to return a connection outside ``with``."""
    import inspect

    try:
        return "legacy" in inspect.signature(connect).parameters
    except (TypeError, ValueError):
        return False


def _unavailable(what: str, exc: BaseException) -> GuardUnavailableError:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return GuardUnavailableError(f"{what}: timed out")
    return GuardUnavailableError(f"{what}: {type(exc).__name__}: {exc}")


class _RemoteSessionBase(StreamSession):
    """State and decoding shared by the sync and async sessions. The state (``flagged``,
    ``verdict``, ``response_text``) is the server session's, as of the last answer."""

    def __init__(self, ws: Any, timeout: float) -> None:
        super().__init__()
        self._ws = ws
        self.timeout = timeout
        self.prompt_verdict: Verdict | None = None
        self._verdict: Verdict | None = None
        self._flagged = False
        self._tokens_seen = 0
        self._last: StreamUpdate | None = None
        self._seq = 0
        self._failure: Qwen3GuardError | None = None

    @property
    def flagged(self) -> bool:
        return self._flagged

    @property
    def verdict(self) -> Verdict | None:
        return self._verdict

    @property
    def tokens_seen(self) -> int:
        return self._tokens_seen

    @property
    def settled_offset(self) -> int:
        return self._last.settled_offset if self._last is not None else 0

    @property
    def last_update(self) -> StreamUpdate | None:
        return self._last

    # -- protocol ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(f"the stream session failed earlier: {self._failure}")
        super()._check_open()

    def _request(self, kind: str, value: Any) -> str:
        self._check_open()
        self._seq += 1
        return json.dumps({"seq": self._seq, kind: value})

    def _apply_session(self, msg: Mapping[str, Any]) -> None:
        state = msg.get("session")
        if not isinstance(state, Mapping):
            raise GuardOutputError(
                "the stream server's answer has no session state", raw=str(msg)[:500]
            )
        self._flagged = self._flagged or bool(state.get("flagged"))
        self._verdict = verdict_from_wire(state.get("verdict"))
        self._append_text(str(state.get("text_delta") or ""))
        text_len = state.get("text_len")  # servers older than rollback omit it
        if text_len is not None and text_len != self._text_len:
            raise GuardOutputError(
                f"the stream server holds {text_len!r} characters of the answer, this session "
                f"{self._text_len}",
                raw=str(msg)[:500],
            )

    def _opened(self, raw: Any) -> None:
        msg = decode_answer(raw, ("opened",), None)
        self.prompt_verdict = verdict_from_wire(msg.get("prompt_verdict"))
        self._apply_session(msg)

    def _answered(self, raw: Any, kind: str, value: Any = None) -> StreamUpdate:
        msg = decode_answer(raw, ("closed",) if kind == "close" else ("update",), self._seq)
        update = update_from_wire(msg.get("update") or {})
        if kind == "rollback":  # the server rolled back: so does this copy of its state
            kept = self.response_text[:value]
            self._forget_answer()
            self._append_text(kept)
        self._apply_session(msg)
        self._flagged = self._flagged or update.flagged
        self._tokens_seen = max(self._tokens_seen, update.tokens_seen)
        self._last = update
        if kind == "end":
            self._end_update = update
        return update

    def _reset_answer(self) -> None:
        """This copy of the server's state, back to right after open (the server's session
        is rolled back by the ``rollback`` request; its answer says the state after it)."""
        self._flagged = False
        self._tokens_seen = 0
        self._last = None

    def _failed(self, exc: BaseException, what: str) -> Qwen3GuardError:
        """Mark the session dead (fail closed: every later call raises)."""
        err = (
            exc if isinstance(exc, Qwen3GuardError) else _unavailable(f"stream session {what}", exc)
        )
        self._failure = err
        self._free()
        return err

    def _snapshot(
        self, token_verdicts: Sequence[TokenVerdict] = (), metadata: dict[str, Any] | None = None
    ) -> StreamUpdate:
        return StreamUpdate(
            token_verdicts=tuple(token_verdicts),
            flagged=self._flagged,
            verdict=self._verdict,
            flag_offset=self._last.flag_offset if self._last else None,
            flag_token_index=self._last.flag_token_index if self._last else None,
            tokens_seen=self._tokens_seen,
            settled_offset=self.settled_offset,
            metadata={**(metadata or {}), "remote": True},
        )

    @staticmethod
    def _ids_payload(ids: Sequence[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise InvalidInputError("feed_ids(): token ids must be non-negative")
        return list(ids)


class RemoteStreamSession(_RemoteSessionBase):
    """A session on a blocking WebSocket; the ``a*`` methods run it in a worker thread."""

    def _start(self, hello: str) -> None:
        try:
            self._ws.send(hello)
            self._opened(self._ws.recv(timeout=self.timeout))
        except Exception as exc:  # noqa: BLE001
            self._closed = True
            raise self._failed(exc, "could not open") from exc

    def _call(self, kind: str, value: Any) -> StreamUpdate:
        payload = self._request(kind, value)
        try:
            self._ws.send(payload)
            return self._answered(self._ws.recv(timeout=self.timeout), kind, value)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"{kind} request failed") from exc

    def _feed_text(self, chunk: str) -> StreamUpdate:
        return self._call("text", chunk)

    def end(self) -> StreamUpdate:
        """Judge the held-back text on the server and keep the session (see
        :meth:`StreamSession.end`)."""
        with self._lock:
            self._check_open()
            if self._end_update is None:
                self._call("end", True)  # sets _end_update
            assert self._end_update is not None
            return self._end_update

    def rollback(self, offset: int) -> StreamUpdate:
        """Roll the server's session back to ``offset`` (see :meth:`StreamSession.rollback`)."""
        with self._lock:
            self._check_open()
            self._kept(offset)  # checks the offset before anything is sent
            return self._call("rollback", offset)

    def _feed_ids(self, ids: list[int]) -> StreamUpdate:
        return self._call("ids", self._ids_payload(ids))

    def _close(self) -> StreamUpdate:
        if self._failure is not None:
            raise type(self._failure)(f"the stream session failed earlier: {self._failure}")
        return self._call("close", True)

    def _free(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self._ws.close()


class AsyncRemoteStreamSession(_RemoteSessionBase):
    """A session on an asyncio WebSocket. Its sync methods work from other threads only (they
    hand the work to the session's event loop)."""

    def __init__(self, ws: Any, timeout: float) -> None:
        super().__init__(ws, timeout)
        self._loop = asyncio.get_running_loop()

    async def _recv(self) -> Any:
        return await asyncio.wait_for(self._ws.recv(), self.timeout)

    async def _start(self, hello: str) -> None:
        try:
            await self._ws.send(hello)
            self._opened(await self._recv())
        except Exception as exc:  # noqa: BLE001
            self._closed = True
            err = self._failed(exc, "could not open")
            await self._aclose_socket()
            raise err from exc

    async def _acall(self, kind: str, value: Any) -> StreamUpdate:
        payload = self._request(kind, value)
        try:
            await self._ws.send(payload)
            return self._answered(await self._recv(), kind, value)
        except BaseException as exc:  # cancellation too: the socket's state is unknown now
            err = self._failed(exc, f"{kind} request failed")
            await asyncio.shield(self._aclose_socket())
            if isinstance(exc, Exception):
                raise err from exc
            raise

    async def _afeed_text(self, chunk: str) -> StreamUpdate:
        self._check_feedable()
        return await self._acall("text", chunk)

    async def _afeed_ids(self, ids: list[int]) -> StreamUpdate:
        self._check_feedable()
        return await self._acall("ids", self._ids_payload(ids))

    async def _aend(self) -> StreamUpdate:
        self._check_open()
        if self._end_update is None:
            await self._acall("end", True)  # sets _end_update
        assert self._end_update is not None
        return self._end_update

    async def _arollback(self, offset: int) -> StreamUpdate:
        self._check_open()
        self._kept(offset)  # checks the offset before anything is sent
        return await self._acall("rollback", offset)

    async def _aclose(self) -> StreamUpdate:
        if self._closed:
            assert self._final is not None
            return self._final
        try:
            if self._end_update is not None:  # ended: the answer was judged; only free
                self._final = self._end_update
            else:
                self._final = await self._acall("close", True)
        finally:
            self._closed = True
            await self._aclose_socket()
            if self._final is None:
                self._final = self._snapshot((), {"closed": True, "aborted": True})
        return self._final

    # The sync API, from threads other than the session's loop.
    def _sync(self, coro: Any) -> StreamUpdate:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError(
                "this session was opened with aopen_stream(); inside its event loop use "
                "afeed_text / afeed_ids / aclose"
            )
        if self._loop.is_closed():
            coro.close()
            raise GuardUnavailableError("the event loop of this stream session is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def feed_text(self, chunk: str) -> StreamUpdate:
        return self._sync(self.afeed_text(chunk))

    def feed_ids(self, ids: Sequence[int]) -> StreamUpdate:
        return self._sync(self.afeed_ids(ids))

    def close(self) -> StreamUpdate:
        return self._sync(self.aclose())

    def end(self) -> StreamUpdate:
        return self._sync(self.aend())

    def rollback(self, offset: int) -> StreamUpdate:
        return self._sync(self.arollback(offset))

    async def aabort(self) -> None:
        if not self._closed:
            self._closed = True
            self._final = self._snapshot((), {"closed": True, "aborted": True})
        await self._aclose_socket()

    async def _aclose_socket(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()

    def _free(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is self._loop:
            loop.create_task(self._aclose_socket())
        elif not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._aclose_socket(), self._loop)
