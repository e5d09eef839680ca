"""The HTTP routes of ``qwen3guard serve`` (see :mod:`qwen3guard.server.app` for the API)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInputError
from ..gen.base import request_budget
from ..messages import Message, normalize_messages
from .errors import ApiError, guard_failure
from .moderation import moderation_result
from .state import ServerState

T = TypeVar("T")

router = APIRouter()


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


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def require_key(request: Request) -> None:
    if not state_of(request).authorized(request.headers.get("authorization")):
        raise ApiError(
            401,
            "a valid API key is required: send 'Authorization: Bearer KEY'",
            type="authentication_error",
            code="invalid_api_key",
        )


def key_unless(flag: str) -> Callable[[Request], None]:
    """``require_key``, unless the server's limit ``flag`` (e.g. ``public_metrics``) is set."""

    def check(request: Request) -> None:
        if not getattr(state_of(request).limits, flag):
            require_key(request)

    return check


async def off_loop(state: ServerState, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the server's pool, under its cost budget per request."""

    def run() -> T:
        with request_budget(state.limits.max_request_tokens):
            return fn()

    return await asyncio.get_running_loop().run_in_executor(state.pool, run)


# -- open routes ------------------------------------------------------------------------------


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    s = state_of(request)
    return {
        "status": "ok",
        "model": s.model_name,
        "gen": s.guard.gen is not None,
        "stream": s.guard.stream is not None,
        # "vllm-stream": sessions live in a vLLM server's prefix cache, not in this process
        "stream_backend": getattr(s.guard.stream, "name", None),
        "stream_sessions": len(s.slots),
    }


@router.get("/metrics", dependencies=[Depends(key_unless("public_metrics"))])
async def prometheus(request: Request) -> Response:
    body, ctype = state_of(request).metrics.render()
    return Response(body, media_type=ctype)


@router.get(
    "/openapi.json", include_in_schema=False, dependencies=[Depends(key_unless("public_openapi"))]
)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# -- /v1 ----------------------------------------------------------------------------------------


@router.get("/v1/models", dependencies=[Depends(require_key)])
async def models(request: Request) -> dict[str, Any]:
    s = state_of(request)
    entry: dict[str, Any] = {
        "id": s.model_name,
        "object": "model",
        "created": s.created,
        "owned_by": "qwen3guard",
    }
    ctx = getattr(s.guard.gen, "max_context_tokens", None)
    if isinstance(ctx, int):
        entry["max_model_len"] = ctx
    return {"object": "list", "data": [entry]}


@router.post("/v1/chat/completions", dependencies=[Depends(require_key)])
async def chat_completions(req: ChatCompletionRequest, request: Request) -> dict[str, Any]:
    s = state_of(request)
    backend = _require_gen(s)
    _check_model(s, req.model)
    if req.stream:
        raise ApiError(
            400,
            "stream=true is not supported: a verdict is a few tokens; send stream=false",
            param="stream",
        )
    if req.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    if len(req.messages) > s.limits.max_messages:
        raise ApiError(
            400,
            f"{len(req.messages)} messages, over the limit of {s.limits.max_messages}",
            param="messages",
        )
    try:
        conv = normalize_messages([m.model_dump() for m in req.messages])
    except InvalidInputError as exc:
        raise ApiError(400, str(exc), param="messages") from exc
    with request_budget(s.limits.max_request_tokens):  # long content is encoded off the loop
        raw = (await backend.agenerate([conv]))[0]
    if isinstance(raw, BaseException):
        raise guard_failure(raw, param="messages")
    s.metrics.verdicts.labels("chat", _risk_label(raw)).inc()
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": s.model_name,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": raw},
            }
        ],
    }


@router.post("/v1/moderations", dependencies=[Depends(require_key)])
async def moderations(req: ModerationRequest, request: Request) -> dict[str, Any]:
    s = state_of(request)
    _require_gen(s)
    texts = _moderation_texts(req.input)
    if not texts:
        raise ApiError(400, "input is empty: there is nothing to judge", param="input")
    if len(texts) > s.limits.max_inputs:
        raise ApiError(
            400, f"{len(texts)} inputs, over the limit of {s.limits.max_inputs}", param="input"
        )
    one = isinstance(req.input, str)
    convs: list[list[Message]] = []
    for i, text in enumerate(texts):  # a bad item is named; nothing is judged for nothing
        where = "input" if one else f"input[{i}]"
        try:
            convs.append(normalize_messages([{"role": "user", "content": text}]))
        except InvalidInputError as exc:
            raise ApiError(400, f"{where}: {exc}", code="invalid_input", param=where) from exc
    verdicts = await off_loop(s, lambda: s.guard.check_batch(convs, return_exceptions=True))
    results = []
    for i, v in enumerate(verdicts):
        if isinstance(v, BaseException):
            err = guard_failure(v, param="input" if one else f"input[{i}]")
            if err.status == 400 and not one:
                err.message = f"input[{i}]: {err.message}"
            raise err
        s.metrics.verdicts.labels("moderations", v.risk.value).inc()
        results.append(moderation_result(v, s.guard.decide(v, "input")))
    return {"id": f"modr-{uuid.uuid4().hex}", "model": s.model_name, "results": results}


# -- helpers ------------------------------------------------------------------------------------


def _check_model(s: ServerState, name: str | None) -> None:
    if name is not None and name != s.model_name:
        raise ApiError(
            404,
            f"the model {name!r} does not exist; this server serves {s.model_name!r}",
            code="model_not_found",
            param="model",
        )


def _require_gen(s: ServerState) -> Any:
    if s.guard.gen is None:
        raise ApiError(404, "this server has no Gen model", code="model_not_found")
    return s.guard.gen


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
            raise ApiError(
                400, f"input[{i}]: only text can be judged, not {kind!r}", param=f"input[{i}]"
            )
    return texts
