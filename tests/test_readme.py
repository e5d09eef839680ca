"""The README's Python examples run as written, on the built-in checkpoints.

Every ```python block of README.md is run, in order, in one fresh interpreter (the README says
each example continues the one before), with the hub model ids swapped for the built-in Gen
and Stream checkpoints. A block preceded by an HTML comment ``<!-- not run: REASON -->`` is
skipped (it needs an LLM, a server or vLLM); the test checks that there are only a few.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
_NOT_RUN = re.compile(r"<!--\s*not run:[^>]*-->")
MAX_NOT_RUN = 4
EXPECTED_OUTPUT = (
    "RiskLevel.UNSAFE",
    "[True, False, False]",
    "Surface.INPUT ['Violent']",
    "Go for a walk in the park. Then cook a nice dinner",
)

# Runs each block in one namespace; on a failure prints which block and exits 1.
_RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__readme__"}
for number, line, code in blocks:
    try:
        source = "\n" * (line - 1) + code  # tracebacks name the README's own lines
        exec(compile(source, "README.md", "exec"), ns)
    except BaseException:
        print(f"README block {number} (line {line}) failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
print(f"ran {len(blocks)} blocks")
"""


def readme_blocks(text: str) -> list[tuple[int, int, str, bool]]:
    """(number, line, code, run) for each ```python block, in order."""
    out = []
    for number, m in enumerate(_BLOCK.finditer(text), 1):
        line = text.count("\n", 0, m.start("code")) + 1
        run = not _NOT_RUN.search(m.group("before"))
        out.append((number, line, m.group("code"), run))
    return out


def swap_models(code: str, gen: str, stream: str) -> str:
    return code.replace("Qwen/Qwen3Guard-Gen-0.6B", gen).replace(
        "Qwen/Qwen3Guard-Stream-0.6B", stream
    )


def run_blocks(blocks: list[tuple[int, int, str]], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "blocks.json"
    path.write_text(json.dumps(blocks))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(path)], capture_output=True, text=True,
        timeout=300, env=env, cwd=tmp,
    )


def _runnable(tiny_dir: Path) -> list[tuple[int, int, str]]:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    gen, stream = str(tiny_dir / "gen"), str(tiny_dir / "stream")
    return [(n, line, swap_models(code, gen, stream)) for n, line, code, run in blocks if run]


def test_readme_blocks_are_found() -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert len([b for b in blocks if b[3]]) >= 6
    not_run = [b for b in blocks if not b[3]]
    assert len(not_run) <= MAX_NOT_RUN, f"{len(not_run)} blocks marked not run"
    for _, line, code, run in blocks:
        compile(code, f"README.md:{line}", "exec")  # the blocks not run are valid Python too
        if run:  # a runnable block must name no hub model it cannot swap
            assert "Qwen/Qwen3Guard-" not in swap_models(code, "G", "S")


def test_readme_python_blocks_run(tiny_dir: Path, tmp_path: Path) -> None:
    result = run_blocks(_runnable(tiny_dir), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    # What the README's comments say the examples print, on the built-in checkpoints.
    for shown in EXPECTED_OUTPUT:
        assert shown in result.stdout, (shown, result.stdout)


def test_a_broken_block_fails(tmp_path: Path) -> None:
    """The runner reports a failing block (so the test above can go red)."""
    blocks = [(1, 1, "x = 1"), (99, 1, "assert x == 2, 'broken on purpose'")]
    result = run_blocks(blocks, tmp_path)
    assert result.returncode == 1
    assert "README block 99" in result.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
