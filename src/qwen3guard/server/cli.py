"""``qwen3guard serve``: arguments and entry point (called by ``qwen3guard.cli``).

Imports nothing heavy at module level, so ``qwen3guard --help`` stays fast and a missing
``server`` extra is reported when ``serve`` runs, not when the CLI starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

log = logging.getLogger("qwen3guard.server")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=os.environ.get("QWEN3GUARD_MODEL"),
        help="Gen checkpoint: a path, a hub id, or 'tiny' for the built-in "
        "small checkpoint (default: $QWEN3GUARD_MODEL)",
    )
    parser.add_argument(
        "--stream-model",
        default=None,
        help="Stream checkpoint (path, hub id or 'tiny') for /v1/stream; "
        "without it stream sessions re-check with Gen",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("QWEN3GUARD_SERVER_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes "
        "(default: $QWEN3GUARD_SERVER_API_KEY)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: auto)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="most conversations per Gen forward batch (default 32)",
    )
    parser.add_argument(
        "--no-batching", action="store_true", help="one conversation per forward (max batch size 1)"
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the model id /v1/models reports (default: --model as given)",
    )
    parser.add_argument(
        "--policy",
        choices=["strict", "loose"],
        default="strict",
        help="decides 'flagged' in /v1/moderations (default strict)",
    )
    parser.add_argument("--max-request-bytes", type=int, default=1_000_000)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    limits = parser.add_argument_group("cost and abuse limits")
    limits.add_argument(
        "--max-request-tokens",
        type=int,
        default=65_536,
        help="most tokens of model input (all windows of all inputs) one request may need; "
        "over it: 413 (default 65536)",
    )
    limits.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="most padded tokens in one Gen forward batch, so long windows cannot hold the model "
        "for long (default: one context on CPU, four on GPU)",
    )
    limits.add_argument(
        "--max-window-tokens",
        type=int,
        default=4096,
        help="content tokens per window of a long input (default 4096, or less when the "
        "context is smaller): a window's forward is the longest a small request waits behind "
        "a long one",
    )
    limits.add_argument("--max-stream-sessions", type=int, default=64)
    limits.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=30.0,
        help="seconds a stream session may go without text or ids (default 30)",
    )
    limits.add_argument(
        "--stream-max-session-seconds",
        type=float,
        default=600.0,
        help="lifetime limit of one stream session (default 600)",
    )
    limits.add_argument("--max-stream-chunk-chars", type=int, default=8_192)
    limits.add_argument("--max-stream-answer-chars", type=int, default=262_144)
    limits.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (e.g. https://app.example) allowed to open stream sessions; "
        "repeatable; '*' allows any. Without it only same-origin pages and non-browser "
        "clients (no Origin header) may",
    )
    limits.add_argument(
        "--public-metrics", action="store_true", help="serve /metrics without the API key"
    )
    limits.add_argument(
        "--public-openapi", action="store_true", help="serve /openapi.json without the API key"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        print(
            f"error: qwen3guard serve needs the server extra "
            f"(pip install 'qwen3guard[server]'): {exc}",
            file=sys.stderr,
        )
        return 2
    from ..gen.local import TransformersGenBackend
    from ..guard import Qwen3Guard
    from ..policy import Policy

    if args.api_key is not None and not args.api_key.strip():
        print(
            "error: the API key is empty (--api-key or $QWEN3GUARD_SERVER_API_KEY); an empty "
            "key does not turn authentication off: unset it to serve without a key",
            file=sys.stderr,
        )
        return 2
    if not args.model:
        print("error: --model is required (or set QWEN3GUARD_MODEL)", file=sys.stderr)
        return 2
    if args.max_batch_size < 1:
        print("error: --max-batch-size must be >= 1", file=sys.stderr)
        return 2
    # The Gen worker thread runs Python between its kernels (the decode loop): a shorter GIL
    # switch interval lets request handling (parse, tokenize, reply) cut in sooner, so small
    # requests are not slowed by a long one's forwards (5 ms is Python's default).
    sys.setswitchinterval(0.0005)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    model = args.model
    stream_model = args.stream_model
    if "tiny" in (model, stream_model):
        from ..tiny import ensure_built

        root = ensure_built()
        model = str(root / "gen") if model == "tiny" else model
        stream_model = str(root / "stream") if stream_model == "tiny" else stream_model
    if not _is_loopback(args.host) and not args.api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use the guard",
            args.host,
        )
    gen = TransformersGenBackend(
        model,
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_window_tokens=args.max_window_tokens,
    )
    stream = None
    if stream_model:
        from ..stream.local import LocalStreamBackend

        stream = LocalStreamBackend(stream_model, device=args.device, dtype=args.dtype)
    guard = Qwen3Guard(gen, stream=stream, policy=Policy(mode=args.policy))
    try:
        app = create_app(
            guard,
            api_key=args.api_key,
            served_model_name=args.served_model_name or args.model,
            close_guard=True,
            max_request_bytes=args.max_request_bytes,
            max_request_tokens=args.max_request_tokens,
            max_stream_sessions=args.max_stream_sessions,
            stream_idle_timeout_s=args.stream_idle_timeout,
            stream_max_session_s=args.stream_max_session_seconds,
            max_stream_chunk_chars=args.max_stream_chunk_chars,
            max_stream_answer_chars=args.max_stream_answer_chars,
            allowed_origins=tuple(args.allow_origin),
            public_metrics=args.public_metrics,
            public_openapi=args.public_openapi,
        )
    except ValueError as exc:
        guard.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "qwen3guard serve: model %s%s on http://%s:%d (batching %s)",
        model,
        f" + stream {stream_model}" if stream_model else "",
        args.host,
        args.port,
        "off" if args.no_batching else f"up to {args.max_batch_size}",
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_max_size=max(args.max_request_bytes, 1 << 16),
        timeout_graceful_shutdown=5,
    )
    return 0
