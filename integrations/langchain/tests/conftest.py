"""Fixtures of this package's tests: guards on the built-in small checkpoints.

Self-contained (nothing from the repository's root ``conftest.py``), so the suite runs on its
own: ``pytest`` from this package's directory, or ``pytest integrations/langchain/tests`` from
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
def gen_guard(tiny_dir: Path) -> Iterator[Qwen3Guard]:
    """A guard with only the Gen model (shared by the tests; do not close it)."""
    guard = Qwen3Guard.from_pretrained(str(tiny_dir / "gen"))
    yield guard
    guard.close()


@pytest.fixture(scope="session")
def guard(tiny_dir: Path) -> Iterator[Qwen3Guard]:
    """A guard with Gen and Stream models (shared by the tests; do not close it)."""
    guard = Qwen3Guard.from_pretrained(str(tiny_dir / "gen"), stream_model=str(tiny_dir / "stream"))
    yield guard
    guard.close()
