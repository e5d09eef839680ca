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
from typing import Any

log = logging.getLogger("qwen3guard.server")

DEFAULT_GEN_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"  # as qwen3guard.defaults (not imported: fast --help)
NONE = "none"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="Gen checkpoint: a path, a hub id, or 'tiny' for the built-in small checkpoint "
        f"(default: $QWEN3GUARD_MODEL or {DEFAULT_GEN_MODEL}, as the other commands); "
        "'none' serves no Gen model (only /v1/stream, with --stream-model or --stream-url)",
    )
    parser.add_argument(
        "--stream-model",
        default=None,
        help="Stream checkpoint (path, hub id or 'tiny') for /v1/stream, loaded in this "
        "process; with --stream-url, the model's name on that vLLM server (default: its only "
        "model). Without either, stream sessions re-check with Gen",
    )
    vllm = parser.add_argument_group(
        "Stream on vLLM (docs/stream_on_vllm.md): the sessions' state lives in vLLM's prefix "
        "cache, this process loads no Stream model and holds no KV cache"
    )
    vllm.add_argument(
        "--stream-url",
        default=None,
        metavar="URL",
        help="a vLLM server (or a router in front of replicas) serving the Stream model with "
        "qwen3guard's plugins, e.g. http://127.0.0.1:8001/v1",
    )
    vllm.add_argument(
        "--stream-tokenizer",
        default=None,
        help="where the Stream tokenizer, chat template and config are read (path or hub id; "
        "default: --stream-model, else the served model's root)",
    )
    vllm.add_argument(
        "--stream-api-key",
        default=os.environ.get("QWEN3GUARD_STREAM_API_KEY") or None,
        help="the vLLM server's API key (default: $QWEN3GUARD_STREAM_API_KEY)",
    )
    vllm.add_argument(
        "--stream-cache-salt",
        default=None,
        help="salt every request, so this server's sessions share no cached blocks with other "
        "clients of the vLLM server",
    )
    vllm.add_argument(
        "--stream-submit-every",
        type=int,
        default=1,
        help="answer tokens per vLLM request (default 1: every chunk is judged at once)",
    )
    vllm.add_argument(
        "--stream-timeout", type=float, default=30.0, help="seconds per vLLM request (default 30)"
    )
    vllm.add_argument(
        "--stream-session-header",
        default="x-session-id",
        help="the header that carries each session's id, for a router with session affinity "
        "(default x-session-id; '' sends none)",
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


def resolve_models(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(Gen, Stream) as ``serve`` loads them: the Gen default of the other commands
    ($QWEN3GUARD_MODEL, else the 0.6B hub model), ``none`` for no Gen, ``tiny`` for the built-in
    checkpoints."""
    model: str | None = args.model or os.environ.get("QWEN3GUARD_MODEL") or DEFAULT_GEN_MODEL
    if model is not None and model.lower() == NONE:
        model = None
    stream_model = args.stream_model
    if "tiny" in (model, stream_model):
        from ..cli import _build_progress
        from ..tiny import ensure_built

        root = ensure_built(progress=_build_progress())
        model = str(root / "gen") if model == "tiny" else model
        stream_model = str(root / "stream") if stream_model == "tiny" else stream_model
    return model, stream_model


def build_guard(args: argparse.Namespace) -> Any:
    """The guard ``qwen3guard serve`` serves: a local Gen model (unless ``--model none``), and
    for /v1/stream a local Stream model (``--stream-model``) or, with ``--stream-url``, a
    :class:`~qwen3guard.stream.vllm.VLLMStreamBackend`: then this process loads no Stream model
    and holds no KV cache; a session's state is the ids it has sent, and vLLM's prefix cache
    makes each request compute only the new tokens."""
    from ..defaults import locate_model
    from ..guard import Qwen3Guard
    from ..policy import Policy

    model, stream_model = resolve_models(args)
    # Models loaded here fail in seconds when missing or offline (not after the hub's retries);
    # with --stream-url the Stream model is a name on that server, not loaded here.
    model = locate_model(model, hint="pass --model DIR or 'tiny'") if model else None
    if stream_model is not None and not args.stream_url:
        stream_model = locate_model(stream_model, hint="pass --stream-model DIR or 'tiny'")
    stream: Any = None
    if args.stream_url:
        from ..stream.vllm import VLLMStreamBackend

        stream = VLLMStreamBackend(
            args.stream_url,
            stream_model,
            tokenizer=args.stream_tokenizer,
            api_key=args.stream_api_key,
            timeout=args.stream_timeout,
            cache_salt=args.stream_cache_salt,
            submit_every=args.stream_submit_every,
            session_header=args.stream_session_header or None,
        )
    elif stream_model:
        from ..stream.local import LocalStreamBackend

        stream = LocalStreamBackend(stream_model, device=args.device, dtype=args.dtype)
    gen = None
    if model is not None:
        from ..gen.local import TransformersGenBackend

        try:
            gen = TransformersGenBackend(
                model,
                device=args.device,
                dtype=args.dtype,
                max_new_tokens=args.max_new_tokens,
                max_batch_size=1 if args.no_batching else args.max_batch_size,
                max_batch_tokens=args.max_batch_tokens,
                max_window_tokens=args.max_window_tokens,
            )
        except BaseException:
            if stream is not None:
                stream.close()
            raise
    return Qwen3Guard(gen, stream=stream, policy=Policy(mode=args.policy))


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
    from ..errors import Qwen3GuardError

    if args.api_key is not None and not args.api_key.strip():
        print(
            "error: the API key is empty (--api-key or $QWEN3GUARD_SERVER_API_KEY); an empty "
            "key does not turn authentication off: unset it to serve without a key",
            file=sys.stderr,
        )
        return 2
    if args.max_batch_size < 1:
        print("error: --max-batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.stream_submit_every < 1 or args.stream_timeout <= 0:
        print("error: --stream-submit-every must be >= 1 and --stream-timeout > 0",
              file=sys.stderr)
        return 2
    model, stream_model = resolve_models(args)
    if model is None and not (stream_model or args.stream_url):
        print("error: --model none serves nothing without --stream-model or --stream-url",
              file=sys.stderr)
        return 2
    # The Gen worker thread runs Python between its kernels (the decode loop): a shorter GIL
    # switch interval lets request handling (parse, tokenize, reply) cut in sooner, so small
    # requests are not slowed by a long one's forwards (5 ms is Python's default).
    sys.setswitchinterval(0.0005)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not _is_loopback(args.host) and not args.api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use the guard",
            args.host,
        )
    try:
        guard = build_guard(args)
    except Qwen3GuardError as exc:  # e.g. the vLLM server cannot be reached to list its model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(
            guard,
            api_key=args.api_key,
            served_model_name=args.served_model_name
            or (args.model if model else None)
            or model
            or stream_model
            or "qwen3guard",
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
    if args.stream_url:
        where = f" + stream on vLLM at {args.stream_url} ({guard.stream.model})"
    else:
        where = f" + stream {stream_model}" if stream_model else ""
    log.info(
        "qwen3guard serve: model %s%s on http://%s:%d (batching %s)",
        model,
        where,
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
