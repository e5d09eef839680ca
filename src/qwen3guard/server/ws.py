"""``WS /v1/stream``: one streaming-moderation session per socket (protocol and codec in
:mod:`qwen3guard.stream.wire`).

Limits, each answered with a reason the client can read:

- a cap on open sessions, counted from the upgrade; when full the upgrade gets HTTP 503 with
  ``Retry-After`` (the seconds until the first slot frees at the latest);
- an idle timeout (default 30 s) that only a message carrying text or ids resets (an empty
  feed does not), and a lifetime cap per session (default 600 s);
- a cap on one message's text (``max_stream_chunk_chars``) and on the whole answer
  (``max_stream_answer_chars``): the memory one session can make the server hold is bounded
  (one 600 KB message used to build a 60 MB reply and grow the server by hundreds of MB).
  A ``rollback`` shrinks the answer the session holds to the kept prefix (the cap then counts
  from there), but the kept text is judged again, so it counts as work: all the text a session
  has the model judge, re-judged prefixes included, is capped at
  :data:`WORK_FACTOR` times ``max_stream_answer_chars`` (code ``work_too_large``);
- an Origin check: a browser page from another origin is refused (403) unless allowed.

Errors reach the client as ``{"type": "error", "error": {"type", "message", "code"}}`` followed
by a close (1008 bad input or a limit, 1009 too large, 1011 a guard failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from ..errors import GuardUnavailableError, InvalidInputError, Qwen3GuardError
from ..messages import normalize_messages
from ..stream.wire import error_to_wire, options_from_wire, update_to_wire, verdict_to_wire
from .errors import error_body
from .state import ServerState

log = logging.getLogger("qwen3guard.server")

#: A session may have the model judge at most this many times ``max_stream_answer_chars``
#: (text fed plus prefixes re-judged by rollbacks): a few regenerations of a long answer fit,
#: a loop of rollbacks does not.
WORK_FACTOR = 4


class LimitError(InvalidInputError):
    """A session went past one of the server's limits; ``code`` says which."""

    def __init__(self, message: str, code: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code


async def stream_endpoint(ws: WebSocket) -> None:
    s: ServerState = ws.app.state.server
    lim = s.limits
    header = ws.headers.get("authorization")
    if header is None and ws.query_params.get("api_key"):
        header = "Bearer " + ws.query_params["api_key"]
    if not s.authorized(header):
        await _deny(s, ws, 401, "a valid API key is required", "authentication_error")
        return
    origin = ws.headers.get("origin")
    if origin is not None and not _origin_allowed(origin, ws.headers.get("host"), lim):
        await _deny(
            s, ws, 403, f"origin {origin!r} may not open stream sessions (see --allow-origin)"
        )
        return
    now = time.monotonic()
    slot = s.slots.acquire(now + min(lim.stream_idle_timeout_s, lim.stream_max_session_s))
    if slot is None:
        after = s.slots.retry_after()
        await _deny(
            s,
            ws,
            503,
            f"too many stream sessions (limit {lim.max_stream_sessions}); retry in {after}s",
            headers={"Retry-After": str(after)},
        )
        return
    try:
        await ws.accept()
    except Exception:  # noqa: BLE001 - the client left during the handshake
        s.slots.release(slot)
        return
    s.metrics.stream_sessions.inc()
    handler = _Session(s, ws, slot, now)
    status = "1000"
    try:
        await handler.run()
    except WebSocketDisconnect:
        status = "disconnect"
    except LimitError as exc:
        status = exc.code
        await _send_error(ws, exc, handler.seq, exc.close_code, exc.code)
    except (Qwen3GuardError, ValueError, TypeError) as exc:
        status = "error"
        bad_input = isinstance(exc, (InvalidInputError, ValueError, TypeError))
        await _send_error(ws, exc, handler.seq, 1008 if bad_input else 1011)
    except Exception as exc:  # noqa: BLE001 - reported to the client, then logged
        status = "error"
        log.exception("stream session failed")
        err = GuardUnavailableError(f"internal error: {type(exc).__name__}")
        await _send_error(ws, err, handler.seq, 1011)
    finally:
        s.slots.release(slot)
        s.metrics.stream_sessions.dec()
        s.metrics.requests.labels("/v1/stream", status).inc()
        s.metrics.latency.labels("/v1/stream").observe(time.monotonic() - now)
        await handler.drop()


class _Session:
    """One socket's session: the request loop, its deadlines and its size accounting."""

    def __init__(self, s: ServerState, ws: WebSocket, slot: int, started: float) -> None:
        self.s, self.ws, self.slot = s, ws, slot
        self.lim = s.limits
        self.end_of_life = started + self.lim.stream_max_session_s
        self.active = started  # the last message that carried text or ids
        self.session: Any = None
        self.seq: Any = None
        self.answer_chars = 0  # the answer the session holds now (after rollbacks)
        self.work_chars = 0  # all text judged, prefixes re-judged by rollbacks included
        self.sent_len = 0  # response text already sent as text_delta

    async def run(self) -> None:
        hello = await self._recv()
        if "messages" not in hello and "prompt" not in hello:
            raise InvalidInputError("the first message must carry 'messages'")
        options = options_from_wire(hello.get("options") or {})
        messages = normalize_messages(hello.get("messages", hello.get("prompt")))
        if len(messages) > self.lim.max_messages:
            raise InvalidInputError(
                f"{len(messages)} messages, over the limit of {self.lim.max_messages}"
            )
        self.session = await self.s.guard.aopen_stream(messages, **options)
        self._touch()
        await self._send("opened", None, self.session.prompt_verdict)
        while True:
            msg = await self._recv()
            self.seq = msg.get("seq")
            update, kind = await self._step(msg)
            self.s.metrics.stream_tokens.inc(len(update.token_verdicts))
            await self._send(kind, update, None)
            if kind == "closed":
                self.session = None
                await self.ws.close(1000)
                return

    async def _step(self, msg: dict[str, Any]) -> tuple[Any, str]:
        session = self.session
        if msg.get("close"):
            return await session.aclose(), "closed"
        if "rollback" in msg:
            offset = msg["rollback"]
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise InvalidInputError("'rollback' must be an int offset in the answer")
            held = session.text_length
            if not 0 <= offset <= held:
                raise InvalidInputError(f"rollback({offset}): the answer has {held} characters")
            self._account_work(offset, "characters")
            if offset:  # the kept text is judged again: activity, as feeding it would be
                self._touch()
            update = await session.arollback(offset)
            self.answer_chars = offset
            self.sent_len = min(self.sent_len, offset)
            return update, "update"
        if msg.get("end"):
            return await session.aend(), "update"
        if "text" in msg:
            text = msg["text"]
            if not isinstance(text, str):
                raise InvalidInputError("'text' must be a string")
            self._account(len(text), "characters")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # JSON can carry a lone surrogate
                raise InvalidInputError(f"'text' is not valid text: {exc.reason}") from exc
            return await session.afeed_text(text), "update"
        if "ids" in msg:
            ids = msg["ids"]
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
            ):
                raise InvalidInputError("'ids' must be a list of non-negative ints")
            self._account(len(ids), "ids")
            return await session.afeed_ids(ids), "update"
        raise InvalidInputError("a message must carry 'text', 'ids', 'rollback', 'end' or 'close'")

    def _account(self, n: int, unit: str) -> None:
        lim = self.lim
        if n > lim.max_stream_chunk_chars:
            raise LimitError(
                f"one message of {n} {unit}, over the limit of {lim.max_stream_chunk_chars}: "
                "send the answer in smaller chunks",
                "chunk_too_large",
                1009,
            )
        self.answer_chars += n
        if self.answer_chars > lim.max_stream_answer_chars:
            raise LimitError(
                f"the answer reached {self.answer_chars} {unit}, over the limit of "
                f"{lim.max_stream_answer_chars} per session",
                "answer_too_large",
                1009,
            )
        self._account_work(n, unit)
        if n:  # only a message with content counts as activity
            self._touch()

    def _account_work(self, n: int, unit: str) -> None:
        limit = WORK_FACTOR * self.lim.max_stream_answer_chars
        self.work_chars += n
        if self.work_chars > limit:
            raise LimitError(
                f"the session had {self.work_chars} {unit} judged (rollbacks re-judge the kept "
                f"text), over the limit of {limit} per session",
                "work_too_large",
                1009,
            )

    def _touch(self) -> None:
        self.active = time.monotonic()
        self.s.slots.update(self.slot, self._deadline())

    def _deadline(self) -> float:
        return min(self.active + self.lim.stream_idle_timeout_s, self.end_of_life)

    async def _recv(self) -> dict[str, Any]:
        deadline = self._deadline()
        try:
            message = await asyncio.wait_for(
                self.ws.receive(), max(0.0, deadline - time.monotonic())
            )
        except asyncio.TimeoutError as exc:
            if deadline >= self.end_of_life:
                raise LimitError(
                    f"the session reached its lifetime limit of {self.lim.stream_max_session_s:g}s",
                    "session_too_long",
                ) from exc
            raise LimitError(
                f"no text or ids for {self.lim.stream_idle_timeout_s:g}s; closing the session",
                "idle_timeout",
            ) from exc
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("text")
        if data is None and message.get("bytes") is not None:
            data = message["bytes"].decode("utf-8", "replace")
        if data is None:
            raise InvalidInputError("empty WebSocket message")
        if len(data) > self.lim.max_request_bytes:
            raise LimitError(
                f"message of {len(data)} bytes, over the limit of {self.lim.max_request_bytes}",
                "message_too_large",
                1009,
            )
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise InvalidInputError(f"the message is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise InvalidInputError("each message must be a JSON object")
        return obj

    async def _send(self, kind: str, update: Any, prompt_verdict: Any) -> None:
        session = self.session
        text_delta = _text_since(session, self.sent_len)
        self.sent_len += len(text_delta)
        state = {
            "flagged": bool(session.flagged),
            "verdict": verdict_to_wire(session.verdict),
            "text_delta": text_delta,
            "text_len": self.sent_len,
        }
        if kind == "opened":
            body = {"type": "opened", "prompt_verdict": verdict_to_wire(prompt_verdict)}
        else:
            body = {"type": kind, "seq": self.seq, "update": update_to_wire(update)}
        body["session"] = state
        await self.ws.send_text(json.dumps(body, ensure_ascii=False))

    async def drop(self) -> None:
        """The client left or failed: free the session without judging."""
        if self.session is not None:
            try:
                await self.session.aabort()
            except Exception:  # noqa: BLE001 - the session is being dropped anyway
                log.debug("closing an abandoned stream session failed", exc_info=True)
            self.session = None


def _text_since(session: Any, offset: int) -> str:
    """``session.response_text[offset:]`` without joining the whole answer on every message
    (quadratic over a long answer): read the tail of the session's text parts."""
    if callable(getattr(session, "text_since", None)):
        return str(session.text_since(offset))
    parts = getattr(session, "_text_parts", None)
    total = getattr(session, "_text_len", None)
    if not isinstance(parts, list) or not isinstance(total, int):
        return str(session.response_text[offset:])
    need = total - offset
    tail: list[str] = []
    for part in reversed(parts):
        if need <= 0:
            break
        tail.append(part if len(part) <= need else part[-need:])
        need -= len(part)
    return "".join(reversed(tail))


def _origin_allowed(origin: str, host: str | None, lim: Any) -> bool:
    if "*" in lim.allowed_origins or origin in lim.allowed_origins:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == str(host).lower()


async def _send_error(
    ws: WebSocket, exc: BaseException, seq: Any, close: int, code: str | None = None
) -> None:
    if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, Qwen3GuardError):
        exc = InvalidInputError(str(exc))
    body = error_to_wire(exc, seq if isinstance(seq, int) else None)
    if code is not None:
        body["error"]["code"] = code
    try:
        await ws.send_json(body)
        await ws.close(close, reason=(code or type(exc).__name__)[:120])
    except Exception:  # noqa: BLE001 - the client is gone
        log.debug("could not report a stream error", exc_info=True)


async def _deny(
    s: ServerState,
    ws: WebSocket,
    status: int,
    message: str,
    type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> None:
    s.metrics.requests.labels("/v1/stream", str(status)).inc()
    if status >= 500:
        type = "server_error"
    body = json.dumps(error_body(message, type)).encode()
    try:
        await ws.send_denial_response(
            Response(body, status_code=status, media_type="application/json", headers=headers)
        )
    except RuntimeError:  # the server lacks the denial-response extension
        await ws.close(1008 if status < 500 else 1013, reason=message[:120])
