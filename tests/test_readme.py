"""The README's Python examples run as written, on the built-in checkpoints.

Every ```python block of README.md is run, in order, in one fresh interpreter (the README says
each example continues the one before), with only the model ids swapped: the hub ids for the
built-in Gen and Stream checkpoints, ``http://localhost:8000/v1`` and its model for a
``qwen3guard serve`` of them, and the guarded LLMs for scripted fakes (``init_chat_model(...)``
becomes :data:`_PRELUDE`'s ``_readme_llm()``; LlamaIndex's ``Settings`` get a mock LLM and
embedding). No block may be skipped.
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
_HUB_GEN = re.compile(r"Qwen/Qwen3Guard-Gen-[0-9.]+B")
_HUB_STREAM = re.compile(r"Qwen/Qwen3Guard-Stream-[0-9.]+B")
_README_URL = "http://localhost:8000/v1"
_README_LLM = re.compile(r"init_chat_model\(\"[^\"]+\"\)")
EXPECTED_OUTPUT = (
    "RiskLevel.UNSAFE",
    "[True, False, False]",
    "Surface.INPUT ['Violent']",
    "Go for a walk in the park. Then cook a nice dinner",
    "The capital of France is Paris.",  # the LangChain chain's answer, judged safe
    "Paris is the capital of France.",  # the agent's answer after the guarded tool call
    "input False",  # the tracing observer
)

# The guarded models the README leaves to the reader, as scripted fakes (the guard stays real).
_PRELUDE = r"""
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
import json
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from llama_index.core import Settings
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM


class _ScriptedLLM(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        # one chunk per scripted message, tool calls included (the parent streams text only)
        message = next(self.messages)
        calls = [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                 for i, c in enumerate(message.tool_calls)]
        chunk = AIMessageChunk(content=message.content, tool_call_chunks=calls)
        yield ChatGenerationChunk(message=chunk)


def _readme_llm():
    return _ScriptedLLM(messages=iter([
        AIMessage("The capital of France is Paris."),  # the chain
        AIMessage("", tool_calls=[{"name": "search", "args": {"query": "capital of France"},
                                   "id": "call_1"}]),  # the agent's first turn
        AIMessage("Paris is the capital of France."),  # and its answer
    ]))


Settings.llm = MockLLM(max_tokens=8)
Settings.embed_model = MockEmbedding(embed_dim=8)
"""

# Runs each block in one namespace; on a failure prints which block and exits 1.
_RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__readme__"}
prelude = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else ""
exec(compile(prelude, "prelude", "exec"), ns)
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


def swap_models(code: str, gen: str, stream: str, url: str = _README_URL) -> str:
    """Only the model ids: hub checkpoints, the served model's address, the guarded LLM."""
    code = _HUB_STREAM.sub(stream, _HUB_GEN.sub(gen, code))
    return _README_LLM.sub("_readme_llm()", code.replace(_README_URL, url))


def run_blocks(
    blocks: list[tuple[int, int, str]], tmp: Path, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    path, prelude_path = tmp / "blocks.json", tmp / "prelude.json"
    path.write_text(json.dumps(blocks))
    prelude_path.write_text(json.dumps(prelude))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(path), str(prelude_path)], capture_output=True,
        text=True, timeout=300, env=env, cwd=tmp,
    )


def _runnable(tiny_dir: Path, url: str) -> list[tuple[int, int, str]]:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    gen, stream = str(tiny_dir / "gen"), str(tiny_dir / "stream")
    return [(n, line, swap_models(code, gen, stream, url)) for n, line, code, _ in blocks]


def test_readme_blocks_are_found() -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 9
    not_run = [line for _, line, _, run in blocks if not run]
    assert not not_run, f"README blocks marked not run at lines {not_run}: every block must run"
    for _, line, code, _ in blocks:
        compile(code, f"README.md:{line}", "exec")
        # a block must name no hub model or guarded LLM the test cannot swap
        swapped = swap_models(code, "G", "S", "U")
        assert "Qwen/Qwen3Guard-" not in swapped and "init_chat_model(" not in swapped, line


def test_readme_python_blocks_run(tiny_dir: Path, tmp_path: Path, serve_url: str) -> None:
    result = run_blocks(_runnable(tiny_dir, serve_url), tmp_path, _PRELUDE)
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
