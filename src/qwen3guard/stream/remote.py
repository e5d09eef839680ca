"""The Stream model of a ``qwen3guard serve`` server, over a WebSocket (``/v1/stream``).

    guard = Qwen3Guard.from_endpoint("http://127.0.0.1:8000/v1", stream=True)
    with guard.open_stream([{"role": "user", "content": "Tell me a story"}]) as session:
        update = session.feed_text(chunk)         # one round trip per chunk

A session here has the public API of a local one (``prompt_verdict``, ``feed_text``,
``feed_ids``, ``close``, ``flagged``, ``verdict``, ``response_text``, the ``a*`` forms, sync and
async context managers); the server runs a local session per socket. Anything that goes wrong
on the way (refused connection, timeout, a closed socket, a malformed answer) raises
:class:`GuardUnavailableError` or :class:`GuardOutputError` and ends the session: an answer
that did not arrive is never taken as Safe.

Wire protocol (shared with the server; one JSON object per text message):

    client -> {"messages": [...] | "prompt text", "options": {...}}     (first message)
    server <- {"type": "opened", "prompt_verdict": VERDICT | null, "session": SESSION}
    client -> {"seq": n, "text": "chunk"} | {"seq": n, "ids": [1, 2]} | {"seq": n, "close": true}
    server <- {"type": "update" | "closed", "seq": n, "update": UPDATE, "session": SESSION}
    server <- {"type": "error", "seq": n | null, "error": {"type": "GuardUnavailableError", ...}}

SESSION = {"flagged": bool, "verdict": VERDICT | null, "text_delta": str}: the server session's
state after the step (``text_delta`` is what the step added to its ``response_text``). A request
is answered before the next one is read and every answer echoes its ``seq``, so answers cannot
cross. After ``closed`` or ``error`` the server closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import (
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    ModelFormatError,
    Qwen3GuardError,
)
from ..messages import normalize_messages
from ..policy import Policy, Surface, SurfaceRule
from ..verdict import Category, RiskLevel, Role, Verdict
from .session import StreamSession
from .types import StreamUpdate, TokenVerdict

ERRORS: dict[str, type[Qwen3GuardError]] = {
    "InvalidInputError": InvalidInputError,
    "GuardUnavailableError": GuardUnavailableError,
    "GuardOutputError": GuardOutputError,
    "ModelFormatError": ModelFormatError,
}


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of metadata: unknown objects become strings, NaN becomes null."""
    if depth > 6:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):  # enums
        return value.value
    return str(value)


def verdict_to_wire(v: Verdict | None) -> dict[str, Any] | None:
    if v is None:
        return None
    d = v.to_dict()
    d["metadata"] = jsonable(dict(v.metadata))
    return jsonable(d)


def verdict_from_wire(d: Mapping[str, Any] | None) -> Verdict | None:
    if d is None:
        return None
    try:
        scores = d.get("scores")
        return Verdict(
            risk=RiskLevel(d["risk"]),
            categories=tuple(Category(c) for c in d.get("categories") or ()),
            role=Role(d.get("role", "prompt")),
            refusal=d.get("refusal"),
            raw=d.get("raw"),
            scores=dict(scores) if scores is not None else None,
            latency_s=float(d.get("latency_s") or 0.0),
            windows=int(d.get("windows") or 1),
            metadata={**dict(d.get("metadata") or {}), "remote": True},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardOutputError(f"the server sent a malformed verdict: {exc}", raw=str(d)) from exc


def token_verdict_from_wire(d: Mapping[str, Any]) -> TokenVerdict:
    return TokenVerdict(
        index=int(d["index"]),
        token_id=None if d.get("token_id") is None else int(d["token_id"]),
        text=str(d.get("text", "")),
        risk=RiskLevel(d["risk"]),
        category=Category(d["category"]) if d.get("category") else None,
        risk_prob=float(d.get("risk_prob", 0.0)),
        unsafe_prob=float(d.get("unsafe_prob", 0.0)),
        controversial_prob=float(d.get("controversial_prob", 0.0)),
    )


def update_to_wire(u: StreamUpdate) -> dict[str, Any]:
    return {
        "token_verdicts": [jsonable(t.to_dict()) for t in u.token_verdicts],
        "flagged": bool(u.flagged),
        "verdict": verdict_to_wire(u.verdict),
        "flag_offset": u.flag_offset,
        "flag_token_index": u.flag_token_index,
        "tokens_seen": u.tokens_seen,
        "metadata": jsonable(dict(u.metadata or {})),
    }


def update_from_wire(d: Mapping[str, Any]) -> StreamUpdate:
    try:
        return StreamUpdate(
            token_verdicts=tuple(token_verdict_from_wire(t) for t in d.get("token_verdicts") or ()),
            flagged=bool(d["flagged"]),
            verdict=verdict_from_wire(d.get("verdict")),
            flag_offset=d.get("flag_offset"),
            flag_token_index=d.get("flag_token_index"),
            tokens_seen=int(d.get("tokens_seen") or 0),
            metadata={**dict(d.get("metadata") or {}), "remote": True},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardOutputError(
            f"the server sent a malformed stream update: {exc}", raw=str(d)[:500]
        ) from exc


def error_to_wire(exc: BaseException, seq: int | None = None) -> dict[str, Any]:
    name = type(exc).__name__
    for wire_name, cls in ERRORS.items():
        if isinstance(exc, cls):
            name = wire_name
            break
    else:
        name = "GuardUnavailableError"
    return {"type": "error", "seq": seq, "error": {"type": name, "message": str(exc)}}


def error_from_wire(d: Mapping[str, Any]) -> Qwen3GuardError:
    err = d.get("error") or {}
    cls = ERRORS.get(str(err.get("type")), GuardUnavailableError)
    msg = f"stream server: {err.get('message', 'unknown error')}"
    if cls is GuardOutputError:
        return GuardOutputError(msg)
    return cls(msg)


def policy_to_wire(policy: Policy) -> dict[str, Any]:
    def rule(r: SurfaceRule) -> dict[str, Any]:
        return {
            "mode": r.mode,
            "ignore_categories": None
            if r.ignore_categories is None
            else sorted(c.value for c in r.ignore_categories),
            "block_categories": None
            if r.block_categories is None
            else sorted(c.value for c in r.block_categories),
            "enabled": r.enabled,
        }

    return {
        "mode": policy.mode,
        "ignore_categories": sorted(c.value for c in policy.ignore_categories),
        "block_categories": sorted(c.value for c in policy.block_categories),
        "surfaces": {s.value: rule(r) for s, r in policy.surfaces.items()},
        "fail_open": policy.fail_open,
    }


def policy_from_wire(d: Any) -> Policy:
    if isinstance(d, str):
        return Policy(mode=d)  # type: ignore[arg-type]
    if not isinstance(d, Mapping):
        raise InvalidInputError("'policy' must be 'strict', 'loose' or a policy object")
    try:
        surfaces = {
            Surface(k): SurfaceRule(
                mode=v.get("mode"),
                ignore_categories=v.get("ignore_categories"),
                block_categories=v.get("block_categories"),
                enabled=bool(v.get("enabled", True)),
            )
            for k, v in dict(d.get("surfaces") or {}).items()
        }
        return Policy(
            mode=d.get("mode", "strict"),
            ignore_categories=d.get("ignore_categories") or (),
            block_categories=d.get("block_categories") or (),
            surfaces=surfaces,
            fail_open=bool(d.get("fail_open", False)),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"'policy' is not a valid policy: {exc}") from exc


def options_to_wire(options: Mapping[str, Any]) -> dict[str, Any]:
    """Session options as JSON: a :class:`Policy` goes as its fields."""
    out = {}
    for k, v in options.items():
        out[k] = policy_to_wire(v) if isinstance(v, Policy) else v
    return out


#: Session options a server accepts from clients, and how it checks them.
def options_from_wire(options: Any) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise InvalidInputError("'options' must be an object")
    out: dict[str, Any] = {}
    for k, v in options.items():
        if k == "policy":
            out["policy"] = policy_from_wire(v)
        elif k == "debounce":
            if not isinstance(v, str):
                raise InvalidInputError("'debounce' must be a string")
            out["debounce"] = v
        elif k == "fallback_every":
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise InvalidInputError("'fallback_every' must be an int in 1..4096")
            out["fallback_every"] = v
        else:
            raise InvalidInputError(
                f"unknown stream option {k!r} (accepted: policy, debounce, fallback_every)"
            )
    return out


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
            extra = {"legacy": True} if _takes_legacy_flag(connect) else {}
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

    def _decode(self, raw: Any, expect: tuple[str, ...], seq: int | None) -> dict[str, Any]:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            msg = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise GuardOutputError(
                "the stream server sent a message that is not JSON", raw=str(raw)[:500]
            ) from exc
        if not isinstance(msg, dict):
            raise GuardOutputError(
                "the stream server sent a message that is not an object", raw=str(raw)[:500]
            )
        if msg.get("type") == "error":
            raise error_from_wire(msg)
        if msg.get("type") not in expect:
            raise GuardOutputError(
                f"the stream server sent {msg.get('type')!r}, expected {' or '.join(expect)}",
                raw=str(raw)[:500],
            )
        if seq is not None and msg.get("seq") != seq:
            raise GuardOutputError(
                f"the stream server answered request {msg.get('seq')!r} to request {seq}",
                raw=str(raw)[:500],
            )
        return msg

    def _apply_session(self, msg: Mapping[str, Any]) -> None:
        state = msg.get("session")
        if not isinstance(state, Mapping):
            raise GuardOutputError(
                "the stream server's answer has no session state", raw=str(msg)[:500]
            )
        self._flagged = self._flagged or bool(state.get("flagged"))
        self._verdict = verdict_from_wire(state.get("verdict"))
        self._append_text(str(state.get("text_delta") or ""))

    def _opened(self, raw: Any) -> None:
        msg = self._decode(raw, ("opened",), None)
        self.prompt_verdict = verdict_from_wire(msg.get("prompt_verdict"))
        self._apply_session(msg)

    def _answered(self, raw: Any, closing: bool) -> StreamUpdate:
        msg = self._decode(raw, ("closed",) if closing else ("update",), self._seq)
        update = update_from_wire(msg.get("update") or {})
        self._apply_session(msg)
        self._flagged = self._flagged or update.flagged
        self._tokens_seen = max(self._tokens_seen, update.tokens_seen)
        self._last = update
        return update

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
            return self._answered(self._ws.recv(timeout=self.timeout), kind == "close")
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, f"{kind} request failed") from exc

    def _feed_text(self, chunk: str) -> StreamUpdate:
        return self._call("text", chunk)

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
            return self._answered(await self._recv(), kind == "close")
        except BaseException as exc:  # cancellation too: the socket's state is unknown now
            err = self._failed(exc, f"{kind} request failed")
            await asyncio.shield(self._aclose_socket())
            if isinstance(exc, Exception):
                raise err from exc
            raise

    async def _afeed_text(self, chunk: str) -> StreamUpdate:
        return await self._acall("text", chunk)

    async def _afeed_ids(self, ids: list[int]) -> StreamUpdate:
        return await self._acall("ids", self._ids_payload(ids))

    async def _aclose(self) -> StreamUpdate:
        if self._closed:
            assert self._final is not None
            return self._final
        try:
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
