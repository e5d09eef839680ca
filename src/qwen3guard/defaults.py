"""The process-wide guard integrations use when none is passed to them."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Literal

from .policy import Policy

if TYPE_CHECKING:
    from .guard import Qwen3Guard

DEFAULT_GEN_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"
DEFAULT_STREAM_MODEL = "Qwen/Qwen3Guard-Stream-0.6B"

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
