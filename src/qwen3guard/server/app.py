"""The ``qwen3guard serve`` application (FastAPI).

Endpoints (all JSON; errors in OpenAI's shape ``{"error": {"message", "type", "code"}}``):

- ``POST /v1/chat/completions``: OpenAI-compatible, non-streaming. The completion's content is
  the Gen model's raw answer (``Safety: ...``), so :class:`~qwen3guard.gen.remote.OpenAIGenBackend`
  talks to this server exactly as to vLLM. The server decodes greedily with its own token
  budget; ``temperature`` / ``max_tokens`` are accepted and ignored; ``stream: true`` and
  ``n > 1`` are refused (400).
- ``GET /v1/models``: the served model, with ``max_model_len``.
- ``POST /v1/moderations``: OpenAI's moderation API (``{"input": str | [str]}``); each input is
  judged as a user prompt; ``flagged`` is the server policy's decision (strict by default); see
  :mod:`qwen3guard.server.moderation` for the category mapping. Any ``model`` is accepted.
- ``WS /v1/stream``: streaming moderation, one session per socket (protocol in
  :mod:`qwen3guard.stream.remote`).
- ``GET /health``, ``GET /metrics`` (Prometheus). These two need no API key.

With an API key every ``/v1`` route needs ``Authorization: Bearer KEY`` (the WebSocket also
takes ``?api_key=KEY`` for clients that cannot set headers); otherwise 401. Bodies over
``max_request_bytes`` get 413; malformed ones 400.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GuardOutputError, GuardUnavailableError, InvalidInputError, Qwen3GuardError
from ..messages import normalize_messages
from ..stream.wire import error_to_wire, options_from_wire, update_to_wire, verdict_to_wire
from .metrics import Metrics
from .moderation import moderation_result

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1_000_000
_ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/models",
    "/v1/moderations",
    "/v1/stream",
    "/health",
    "/metrics",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )


def _error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# -- request schemas ------------------------------------------------------------------------


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Any] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool | None = False
    n: int | None = 1
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str | dict[str, Any]]
    model: str | None = None


# -- middleware ---------------------------------------------------------------------------


class _LimitAndMeasure:
    """Pure ASGI: refuse bodies over the limit (413) before the app reads them, and count
    requests and latency per endpoint."""

    def __init__(self, app: Any, *, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        status_box = {"status": 500}
        t0 = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_bytes:
                await self._too_large(send_wrapper, declared)
                return
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    await self._too_large(send_wrapper, len(body))
                    return
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status_box["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _too_large(self, send: Any, size: int) -> None:
        body = json.dumps(
            _error_body(
                f"request body is {size} bytes, over the limit of {self.max_bytes}",
                "invalid_request_error",
                "request_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


# -- the app ------------------------------------------------------------------------------


def create_app(
    guard: Any,
    *,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_inputs: int = 256,
    max_messages: int = 256,
    max_stream_sessions: int = 64,
    stream_idle_timeout_s: float = 300.0,
    close_guard: bool = False,
) -> FastAPI:
    """The server app around ``guard`` (a local :class:`~qwen3guard.Qwen3Guard`).

    ``close_guard`` closes the guard when the app shuts down (the CLI's choice; tests that
    share a guard leave it open).
    """
    from contextlib import asynccontextmanager

    gen = guard.gen
    model_name = served_model_name or str(getattr(gen, "model_id", None) or "qwen3guard")
    metrics = Metrics()
    if gen is not None:
        metrics.observe_batches(gen)
    created = int(time.time())
    active_streams = 0

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        if close_guard:
            await asyncio.to_thread(guard.close)

    app = FastAPI(title="qwen3guard", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.guard = guard
    app.state.metrics = metrics
    app.state.served_model_name = model_name
    app.add_middleware(_LimitAndMeasure, max_bytes=max_request_bytes, metrics=metrics)

    def authorized(header: str | None) -> bool:
        if not api_key:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), api_key.encode())

    def require_key(request: Request) -> None:
        if not authorized(request.headers.get("authorization")):
            raise ApiError(
                401,
                "a valid API key is required: send 'Authorization: Bearer KEY'",
                type="authentication_error",
                code="invalid_api_key",
            )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            _error_body(exc.message, exc.type, exc.code, exc.param),
            status_code=exc.status,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            if e.get("type") == "json_invalid":
                detail = (e.get("ctx") or {}).get("error", "")
                parts.append(f"the body is not valid JSON ({detail})")
                continue
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        return JSONResponse(
            _error_body(
                "invalid request: " + "; ".join(parts), "invalid_request_error", "invalid_request"
            ),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            _error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code
        )

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {model_name!r}",
                code="model_not_found",
                param="model",
            )

    def require_gen() -> Any:
        if gen is None:
            raise ApiError(404, "this server has no Gen model", code="model_not_found")
        return gen

    def guard_failure(exc: BaseException) -> ApiError:
        if isinstance(exc, InvalidInputError):
            return ApiError(400, str(exc))
        if isinstance(exc, ValueError) and "context" in str(exc):
            return ApiError(400, str(exc), code="context_length_exceeded")
        if isinstance(exc, GuardOutputError):
            return ApiError(
                502,
                f"the guard model's answer is not a verdict: {exc}",
                type="server_error",
                code="guard_output_error",
            )
        if isinstance(exc, GuardUnavailableError):
            return ApiError(
                503,
                f"the guard is unavailable: {exc}",
                type="server_error",
                code="guard_unavailable",
            )
        log.error("guard failure", exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    # -- routes ---------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "gen": gen is not None,
            "stream": guard.stream is not None,
            "stream_sessions": active_streams,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "qwen3guard",
        }
        ctx = getattr(gen, "max_context_tokens", None)
        if isinstance(ctx, int):
            entry["max_model_len"] = ctx
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(req: ChatCompletionRequest) -> dict[str, Any]:
        backend = require_gen()
        check_model(req.model)
        if req.stream:
            raise ApiError(
                400,
                "stream=true is not supported: a verdict is a few tokens; send stream=false",
                param="stream",
            )
        if req.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", param="n")
        if len(req.messages) > max_messages:
            raise ApiError(
                400,
                f"{len(req.messages)} messages, over the limit of {max_messages}",
                param="messages",
            )
        try:
            conv = normalize_messages([m.model_dump() for m in req.messages])
        except InvalidInputError as exc:
            raise ApiError(400, str(exc), param="messages") from exc
        raw = (await backend.agenerate([conv]))[0]
        if isinstance(raw, BaseException):
            raise guard_failure(raw)
        metrics.verdicts.labels("chat", _risk_label(raw)).inc()
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": raw},
                }
            ],
        }

    @app.post("/v1/moderations", dependencies=[Depends(require_key)])
    async def moderations(req: ModerationRequest) -> dict[str, Any]:
        require_gen()
        texts = _moderation_texts(req.input)
        if not texts:
            raise ApiError(400, "input is empty: there is nothing to judge", param="input")
        if len(texts) > max_inputs:
            raise ApiError(
                400, f"{len(texts)} inputs, over the limit of {max_inputs}", param="input"
            )
        items = [[{"role": "user", "content": t}] for t in texts]
        verdicts = await guard.acheck_batch(items, return_exceptions=True)
        results = []
        for v in verdicts:
            if isinstance(v, BaseException):
                raise guard_failure(v)
            metrics.verdicts.labels("moderations", v.risk.value).inc()
            results.append(moderation_result(v, guard.decide(v, "input")))
        return {"id": f"modr-{uuid.uuid4().hex}", "model": model_name, "results": results}

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        nonlocal active_streams
        header = ws.headers.get("authorization")
        if header is None and ws.query_params.get("api_key"):
            header = "Bearer " + ws.query_params["api_key"]
        if not authorized(header):
            await _deny(ws, 401, "a valid API key is required")
            metrics.requests.labels("/v1/stream", "401").inc()
            return
        if active_streams >= max_stream_sessions:
            await _deny(ws, 503, f"too many stream sessions (limit {max_stream_sessions})")
            metrics.requests.labels("/v1/stream", "503").inc()
            return
        await ws.accept()
        active_streams += 1
        metrics.stream_sessions.inc()
        t0 = time.perf_counter()
        status = "1000"
        session = None
        seq: Any = None
        try:
            hello = await _recv_json(ws, stream_idle_timeout_s, max_request_bytes)
            if "messages" not in hello and "prompt" not in hello:
                raise InvalidInputError("the first message must carry 'messages'")
            options = options_from_wire(hello.get("options") or {})
            messages = normalize_messages(hello.get("messages", hello.get("prompt")))
            if len(messages) > max_messages:
                raise InvalidInputError(
                    f"{len(messages)} messages, over the limit of {max_messages}"
                )
            session = await guard.aopen_stream(messages, **options)
            await ws.send_json(
                {
                    "type": "opened",
                    "prompt_verdict": verdict_to_wire(session.prompt_verdict),
                    "session": _state(session, 0),
                }
            )
            while True:
                msg = await _recv_json(ws, stream_idle_timeout_s, max_request_bytes)
                seq = msg.get("seq")
                before = len(session.response_text)
                if msg.get("close"):
                    update = await session.aclose()
                    kind = "closed"
                elif "text" in msg:
                    if not isinstance(msg["text"], str):
                        raise InvalidInputError("'text' must be a string")
                    update = await session.afeed_text(msg["text"])
                    kind = "update"
                elif "ids" in msg:
                    ids = msg["ids"]
                    if not isinstance(ids, list) or not all(
                        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
                    ):
                        raise InvalidInputError("'ids' must be a list of non-negative ints")
                    update = await session.afeed_ids(ids)
                    kind = "update"
                else:
                    raise InvalidInputError("a message must carry 'text', 'ids' or 'close'")
                metrics.stream_tokens.inc(len(update.token_verdicts))
                await ws.send_json(
                    {
                        "type": kind,
                        "seq": seq,
                        "update": update_to_wire(update),
                        "session": _state(session, before),
                    }
                )
                if kind == "closed":
                    session = None
                    await ws.close(1000)
                    break
        except WebSocketDisconnect:
            status = "disconnect"
        except (Qwen3GuardError, ValueError, TypeError) as exc:
            status = "error"
            await _send_error(
                ws,
                exc,
                seq,
                1008 if isinstance(exc, (InvalidInputError, ValueError, TypeError)) else 1011,
            )
        except Exception as exc:  # noqa: BLE001 - reported to the client, then logged
            status = "error"
            log.exception("stream session failed")
            await _send_error(ws, GuardUnavailableError(f"internal error: {exc!r}"), seq, 1011)
        finally:
            active_streams -= 1
            metrics.stream_sessions.dec()
            metrics.requests.labels("/v1/stream", status).inc()
            metrics.latency.labels("/v1/stream").observe(time.perf_counter() - t0)
            if session is not None:  # the client left or failed: free without judging
                try:
                    await session.aabort()
                except Exception:  # noqa: BLE001 - the session is being dropped anyway
                    log.debug("closing an abandoned stream session failed", exc_info=True)

    return app


def _risk_label(raw: str) -> str:
    for risk in ("Unsafe", "Controversial", "Safe"):
        if f"Safety: {risk}" in raw:
            return risk
    return "unparsed"


def _moderation_texts(value: str | list[Any]) -> list[str]:
    if isinstance(value, str):
        return [value]
    texts = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            texts.append(item)
        elif (
            isinstance(item, dict)
            and item.get("type") == "text"
            and isinstance(item.get("text"), str)
        ):
            texts.append(item["text"])
        else:
            kind = item.get("type") if isinstance(item, dict) else type(item).__name__
            raise ApiError(400, f"input[{i}]: only text can be judged, not {kind!r}", param="input")
    return texts


def _state(session: Any, before: int) -> dict[str, Any]:
    text = session.response_text
    return {
        "flagged": bool(session.flagged),
        "verdict": verdict_to_wire(session.verdict),
        "text_delta": text[before:],
    }


async def _recv_json(ws: WebSocket, timeout: float, max_bytes: int) -> dict[str, Any]:
    try:
        message = await asyncio.wait_for(ws.receive(), timeout)
    except asyncio.TimeoutError as exc:
        raise InvalidInputError(f"no message for {timeout:g}s; closing the session") from exc
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    data = message.get("text")
    if data is None and message.get("bytes") is not None:
        data = message["bytes"].decode("utf-8", "replace")
    if data is None:
        raise InvalidInputError("empty WebSocket message")
    if len(data) > max_bytes:
        raise InvalidInputError(f"message of {len(data)} bytes, over the limit of {max_bytes}")
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise InvalidInputError(f"the message is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInputError("each message must be a JSON object")
    return obj


async def _send_error(ws: WebSocket, exc: BaseException, seq: Any, code: int) -> None:
    if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, Qwen3GuardError):
        exc = InvalidInputError(str(exc))
    try:
        await ws.send_json(error_to_wire(exc, seq if isinstance(seq, int) else None))
        await ws.close(code)
    except Exception:  # noqa: BLE001 - the client is gone
        log.debug("could not report a stream error", exc_info=True)


async def _deny(ws: WebSocket, status: int, message: str) -> None:
    body = json.dumps(
        _error_body(message, "authentication_error" if status == 401 else "server_error")
    ).encode()
    try:
        await ws.send_denial_response(
            Response(body, status_code=status, media_type="application/json")
        )
    except RuntimeError:  # the server lacks the denial-response extension
        await ws.close(1008 if status == 401 else 1013)
