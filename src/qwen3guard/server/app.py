"""The ``qwen3guard serve`` application (FastAPI).

Endpoints (all JSON; errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``,
mapped from exception types in :mod:`qwen3guard.server.errors`):

- ``POST /v1/chat/completions``: OpenAI-compatible, non-streaming. The completion's content is
  the Gen model's raw answer (``Safety: ...``), so :class:`~qwen3guard.gen.remote.OpenAIGenBackend`
  talks to this server exactly as to vLLM. The server decodes greedily with its own token
  budget; ``temperature`` / ``max_tokens`` are accepted and ignored; ``stream: true`` and
  ``n > 1`` are refused (400). A conversation longer than the context: 400
  ``context_length_exceeded``.
- ``GET /v1/models``: the served model, with ``max_model_len``.
- ``POST /v1/moderations``: OpenAI's moderation API (``{"input": str | [str]}``); each input is
  judged as a user prompt (long ones in windows); ``flagged`` is the server policy's decision
  (strict by default); see :mod:`qwen3guard.server.moderation` for the category mapping. Any
  ``model`` is accepted. An input that cannot be judged (e.g. a lone surrogate) is a 400 that
  names it (``param: "input[3]"``); OpenAI's result shape has no per-item error, so nothing is
  judged then.
- ``WS /v1/stream``: streaming moderation, one session per socket (:mod:`qwen3guard.server.ws`).
- ``GET /health`` (no key), ``GET /metrics`` (Prometheus) and ``GET /openapi.json``. With an
  API key, ``/metrics`` and ``/openapi.json`` need it too, unless ``public_metrics`` /
  ``public_openapi`` (``--public-metrics`` / ``--public-openapi``) open them.

Auth: with an API key every route but ``/health`` needs ``Authorization: Bearer KEY`` (the
WebSocket also takes ``?api_key=KEY`` for clients that cannot set headers); otherwise 401. An
empty key is an error, never "auth off".

Cost limits (:class:`~qwen3guard.server.state.Limits`): bodies over ``max_request_bytes`` get
413 before they are read; a request whose windows need more than ``max_request_tokens`` tokens
of model input in all gets 413 ``request_too_expensive`` before any model work. Judging runs off
the event loop, and the Gen micro-batcher fills batches round-robin over requests with a padded
token budget per batch, so one large request cannot starve small ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .errors import install_handlers
from .middleware import LimitAndMeasure
from .routes import router
from .state import Limits, ServerState
from .ws import stream_endpoint

DEFAULT_MAX_REQUEST_BYTES = 1_000_000


def create_app(
    guard: Any,
    *,
    api_key: str | None = None,
    served_model_name: str | None = None,
    close_guard: bool = False,
    **limits: Any,
) -> FastAPI:
    """The server app around ``guard`` (a local :class:`~qwen3guard.Qwen3Guard`).

    ``limits`` are the fields of :class:`~qwen3guard.server.state.Limits` (``max_request_bytes``,
    ``max_inputs``, ``max_messages``, ``max_request_tokens``, ``max_stream_sessions``,
    ``stream_idle_timeout_s``, ``stream_max_session_s``, ``max_stream_chunk_chars``,
    ``max_stream_answer_chars``, ``allowed_origins``, ``public_metrics``, ``public_openapi``).
    ``api_key=""`` raises ValueError: an empty key (an unset environment variable) must not turn
    authentication off silently; pass None for a server without a key. ``close_guard`` closes
    the guard when the app shuts down (the CLI's choice; tests that share a guard leave it open).
    """
    if api_key is not None and not api_key.strip():
        raise ValueError(
            "api_key is empty: pass None to serve without a key, or a non-empty key "
            "(an empty QWEN3GUARD_SERVER_API_KEY does not turn authentication off)"
        )
    unknown = set(limits) - set(Limits.__dataclass_fields__)
    if unknown:
        raise TypeError(f"create_app() got unknown limits: {', '.join(sorted(unknown))}")
    if "allowed_origins" in limits:
        limits["allowed_origins"] = tuple(limits["allowed_origins"])
    gen = guard.gen
    state = ServerState(
        guard=guard,
        limits=Limits(**limits),
        model_name=served_model_name or str(getattr(gen, "model_id", None) or "qwen3guard"),
        api_key=api_key,
    )
    if gen is not None:
        state.metrics.observe_batches(gen)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.pool.shutdown(wait=False, cancel_futures=True)
            if close_guard:
                await asyncio.to_thread(guard.close)

    app = FastAPI(
        title="qwen3guard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.server = state
    app.state.guard = guard
    app.state.metrics = state.metrics
    app.state.served_model_name = state.model_name
    app.add_middleware(
        LimitAndMeasure, max_bytes=state.limits.max_request_bytes, metrics=state.metrics
    )
    install_handlers(app)
    app.include_router(router)
    app.add_api_websocket_route("/v1/stream", stream_endpoint)
    return app
