"""``qwen3guard serve``: Gen over the OpenAI API, OpenAI-style moderations, and Stream over a
WebSocket. ``create_app`` needs the ``server`` extra (FastAPI); importing this package does not."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(guard: Any, **kwargs: Any) -> Any:
    from .app import create_app as _create_app

    return _create_app(guard, **kwargs)
