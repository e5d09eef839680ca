"""Fixtures of the core's tests: the built-in small checkpoints and guards loaded on them.

The checkpoints are built once per machine (cached by the builder's source hash) through
``qwen3guard.tiny.ensure_built``; every guard is loaded through the same public loading code a
real checkpoint uses. The integrations' suites have their own copies of the guard fixtures
(``integrations/*/tests/conftest.py``), so each package's tests run on their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen3guard import Qwen3Guard


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
