"""Fixtures of this package's tests: the built-in small checkpoints, and guards loaded on them.

The same fixtures as the core's ``tests/conftest.py`` (``tiny_dir``, ``gen_path``,
``stream_path``, ``gen_guard``, ``guard``).

Self-contained (nothing from the repository's root ``conftest.py``), so the suite runs on its
own: ``pytest`` from this package's directory, or ``pytest integrations/llama-index/tests`` from
the repository root. The checkpoints are built once per machine through the public
``qwen3guard.tiny.ensure_built`` (cached by the builder's source hash) and loaded by the same
code a real checkpoint uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen3guard import Qwen3Guard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from qwen3guard.tiny import ensure_built

    return Path(ensure_built())


@pytest.fixture(scope="session")
def gen_path(tiny_dir: Path) -> str:
    return str(tiny_dir / "gen")


@pytest.fixture(scope="session")
def stream_path(tiny_dir: Path) -> str:
    return str(tiny_dir / "stream")


@pytest.fixture(scope="session")
def gen_guard(gen_path: str) -> Iterator[Qwen3Guard]:
    """A guard with only the Gen model (shared by the tests; do not close it)."""
    guard = Qwen3Guard.from_pretrained(gen_path)
    yield guard
    guard.close()


@pytest.fixture(scope="session")
def guard(gen_path: str, stream_path: str) -> Iterator[Qwen3Guard]:
    """A guard with Gen and Stream models (shared by the tests; do not close it)."""
    guard = Qwen3Guard.from_pretrained(gen_path, stream_model=stream_path)
    yield guard
    guard.close()
