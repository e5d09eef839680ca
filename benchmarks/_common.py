"""Helpers shared by the benchmark scripts: where the checkpoints are, and a timer."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_paths() -> tuple[str, str]:
    """Gen and Stream checkpoints: $QWEN3GUARD_MODEL / $QWEN3GUARD_STREAM_MODEL, else the
    built-in small ones."""
    from qwen3guard.tiny import ensure_built

    root = ensure_built()
    return (os.environ.get("QWEN3GUARD_MODEL", str(root / "gen")),
            os.environ.get("QWEN3GUARD_STREAM_MODEL", str(root / "stream")))


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of a few runs: the least disturbed by the rest of a noisy machine."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
