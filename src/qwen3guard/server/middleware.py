"""Pure ASGI middleware of ``qwen3guard serve``: refuse bodies over the limit (413) before the
app reads them, and count requests and latency per endpoint."""

from __future__ import annotations

import json
import time
from typing import Any

from .errors import error_body
from .metrics import Metrics

ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/models",
    "/v1/moderations",
    "/v1/stream",
    "/health",
    "/metrics",
    "/openapi.json",
}


class LimitAndMeasure:
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
        endpoint = path if path in ENDPOINTS else "other"
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
            error_body(
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
