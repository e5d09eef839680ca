"""Every Python block of this package's README runs, in order, in one namespace, with the
model ids swapped for the built-in small checkpoints (as the root README's examples are meant
to be run offline). The blocks hold their own asserts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
GEN_ID = "Qwen/Qwen3Guard-Gen-0.6B"
STREAM_ID = "Qwen/Qwen3Guard-Stream-0.6B"


def python_blocks(text: str) -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    assert GEN_ID in blocks[0] and STREAM_ID in blocks[0]


def test_readme_python_blocks_run(gen_path: str, stream_path: str):
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(python_blocks(README.read_text(encoding="utf-8"))):
        code = block.replace(GEN_ID, gen_path).replace(STREAM_ID, stream_path)
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message names the block
            pytest.fail(f"README python block {i} failed: {exc!r}\n{block}")
    guard = namespace["guard"]
    guard.close()  # type: ignore[attr-defined]
