"""Errors of ``qwen3guard serve``: OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``), and the one place a guard exception becomes a status code, by its type:

=================================== ====== ==========================
exception                           status code
=================================== ====== ==========================
:class:`RequestTooLargeError`       413    ``request_too_expensive``
:class:`ContextLengthError`         400    ``context_length_exceeded``
:class:`InvalidInputError`          400    ``invalid_input``
:class:`GuardOutputError`           502    ``guard_output_error``
:class:`GuardUnavailableError`      503    ``guard_unavailable``
anything else                       500    ``internal_error``
=================================== ====== ==========================

Every answer, a crash included, is JSON: never a plain-text 500 or a reset connection.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextLengthError, GuardOutputError, GuardUnavailableError, InvalidInputError
from ..gen.base import RequestTooLargeError

log = logging.getLogger("qwen3guard.server")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )
        self.headers = headers


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def guard_failure(exc: BaseException, *, param: str | None = None) -> ApiError:
    """The API error for an exception the guard raised or returned (mapped by type)."""
    if isinstance(exc, RequestTooLargeError):
        return ApiError(413, str(exc), code="request_too_expensive", param=param)
    if isinstance(exc, ContextLengthError):
        return ApiError(400, str(exc), code="context_length_exceeded", param=param)
    if isinstance(exc, InvalidInputError):
        return ApiError(400, str(exc), code="invalid_input", param=param)
    if isinstance(exc, GuardOutputError):
        return ApiError(
            502,
            f"the guard model's answer is not a verdict: {exc}",
            type="server_error",
            code="guard_output_error",
        )
    if isinstance(exc, GuardUnavailableError):
        return ApiError(
            503, f"the guard is unavailable: {exc}", type="server_error", code="guard_unavailable"
        )
    log.error("guard failure", exc_info=exc)
    return ApiError(
        500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error"
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(
            error_body(exc.message, exc.type, exc.code, exc.param),
            status_code=exc.status,
            headers=headers or None,
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
            error_body(
                "invalid request: " + "; ".join(parts), "invalid_request_error", "invalid_request"
            ),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        err = guard_failure(exc)
        return JSONResponse(
            error_body(err.message, err.type, err.code, err.param), status_code=err.status
        )
