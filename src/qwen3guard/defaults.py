"""The process-wide guard integrations use when none is passed to them."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .guard import Qwen3Guard

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
