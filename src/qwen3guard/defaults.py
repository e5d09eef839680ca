"""The process-wide guard integrations use when none is passed to them."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from .policy import Policy

if TYPE_CHECKING:
    from .guard import Qwen3Guard

DEFAULT_GEN_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"
DEFAULT_STREAM_MODEL = "Qwen/Qwen3Guard-Stream-0.6B"
# How long locate_model waits for a TCP connection to the hub (or its proxy), DNS included.
HUB_CONNECT_TIMEOUT_S = 5.0

_default_guard: Qwen3Guard | None = None
_default_lock = threading.Lock()


def get_default_guard() -> Qwen3Guard:
    """The process-wide guard: built once, from the environment (:meth:`Qwen3Guard.from_env`),
    on first use. Loading a model per object would be wasteful."""
    global _default_guard
    with _default_lock:
        if _default_guard is None:
            from .guard import Qwen3Guard

            _default_guard = Qwen3Guard.from_env()
        return _default_guard


def set_default_guard(guard: Qwen3Guard | None) -> None:
    """Replace (or with ``None`` forget) the process-wide default guard."""
    global _default_guard
    with _default_lock:
        _default_guard = guard


def guard_from_env(cls: type[Qwen3Guard], policy: Policy | None) -> Qwen3Guard:
    """:meth:`Qwen3Guard.from_env` (its docstring lists the variables)."""
    env = os.environ
    if policy is None and env.get("QWEN3GUARD_POLICY"):
        policy = Policy(mode=env["QWEN3GUARD_POLICY"])  # type: ignore[arg-type]
    if env.get("QWEN3GUARD_ENDPOINT"):
        return cls.from_endpoint(
            env["QWEN3GUARD_ENDPOINT"],
            env.get("QWEN3GUARD_ENDPOINT_MODEL"),
            api_key=env.get("QWEN3GUARD_API_KEY"),
            stream=_stream_kind(env.get("QWEN3GUARD_ENDPOINT_STREAM", "0")),
            stream_url=env.get("QWEN3GUARD_STREAM_ENDPOINT") or None,
            stream_model=env.get("QWEN3GUARD_STREAM_ENDPOINT_MODEL") or None,
            policy=policy,
        )
    stream_model: str | None = env.get("QWEN3GUARD_STREAM_MODEL", DEFAULT_STREAM_MODEL)
    if stream_model is not None and stream_model.lower() in ("", "none"):
        stream_model = None
    return cls.from_pretrained(
        env.get("QWEN3GUARD_MODEL", DEFAULT_GEN_MODEL),
        stream_model=stream_model,
        device=env.get("QWEN3GUARD_DEVICE") or None,
        dtype=env.get("QWEN3GUARD_DTYPE") or None,
        policy=policy,
    )


def _stream_kind(value: str) -> bool | Literal["serve", "vllm"]:
    value = value.strip().lower()
    if value == "vllm":
        return "vllm"
    return value in ("1", "true", "yes", "serve")


def _looks_like_path(name: str) -> bool:
    """A name no hub id can be: ``/``, ``./``, ``../``, ``~`` (or their Windows forms), a drive,
    or anything the hub's repo id rules reject (``a/b/c``, spaces, ...)."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:  # pragma: no cover - the local extra brings huggingface_hub
        return name.count("/") > 1
    except ValueError:  # HFValidationError
        return True
    return False


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection opens within ``timeout`` s. The attempt runs in a daemon thread
    so that a hanging DNS lookup (which ``socket`` cannot time out) counts against it too."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, name="qwen3guard-hub-check", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def hub_reachable(endpoint: str, timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub ``endpoint`` opens, through the proxy the
    environment names for its scheme (as httpx, and so huggingface_hub, would use)."""
    url = urlsplit(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme) or getproxies().get("all")
    if proxy and not proxy_bypass(host):
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname or host, purl.port or 8080
    return bool(host) and _can_connect(host, port, timeout)


def locate_model(name: str, *, hint: str = "pass a local checkpoint directory") -> str:
    """Where ``from_pretrained`` should load ``name`` (a checkpoint directory or a hub id) from,
    decided in seconds, so that a missing model fails at once with a message that says why:

    - an existing directory: itself (``~`` expanded); it must hold a ``config.json``;
    - a name that can only be a path (``/``, ``./``, ``../``, ``~``, or no valid hub id) and
      does not exist: ``FileNotFoundError`` ("no model directory at ...");
    - a hub id: unchanged when the hub answers (transformers downloads or revalidates it); its
      cached snapshot directory when the hub cannot be reached or ``HF_HUB_OFFLINE`` is set;
      ``ConnectionError`` when it is not cached then. ``hint`` ends that message.

    Without this, transformers retries an unreachable hub with backoff for every file before
    it gives up (about 80 s for a Gen checkpoint, huggingface_hub 2.4's ``hf_hub_download``:
    a second metadata call with ``retry_on_errors=True`` when no local file exists).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{name} is not a checkpoint directory (it has no config.json)")
        return str(path)
    if path.exists():
        raise NotADirectoryError(f"{name} is a file, not a checkpoint directory")
    if _looks_like_path(name):
        shown = f"{name} ({path})" if name.startswith("~") else name
        raise FileNotFoundError(f"no model directory at {shown}")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - the local extra brings huggingface_hub
        return name
    cached = try_to_load_from_cache(name, "config.json")
    snapshot = os.path.dirname(cached) if isinstance(cached, str) else None
    if constants.HF_HUB_OFFLINE:
        if snapshot is None:
            raise ConnectionError(
                f"HF_HUB_OFFLINE is set and {name} is not in the local cache "
                f"({constants.HF_HUB_CACHE}); {hint}, or unset HF_HUB_OFFLINE to download it")
        return snapshot
    if hub_reachable(constants.ENDPOINT):
        return name
    if snapshot is None:
        raise ConnectionError(
            f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) and {name} is not in the "
            f"local cache ({constants.HF_HUB_CACHE}); {hint}, or download it once with network "
            "access")
    return snapshot
