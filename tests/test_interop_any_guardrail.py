"""Issue 12, item 5: the built Gen checkpoint reads the same under transformers 4.5x as here.

``scripts/ensure_interop.sh`` makes (once, under ~/.cache/qwen3guard/interop-venv) a virtualenv
with any-guardrail 0.7.7 from PyPI and transformers 4.57; ``scripts/interop_any_guardrail.py``
runs there, on the built checkpoint, any-guardrail's Qwen3Guard (Gen) wrapper and the calls of
the official ``eval/eval_gen.py`` (QwenLM/Qwen3Guard @ 6a52eca). Their verdicts must be
qwen3guard's. Before the checkpoint carried ``rope_theta`` beside ``rope_parameters`` and named
its ``model_input_names``, transformers 4.57 read RoPE theta 10000 and ``generate(**inputs)``
failed on ``token_type_ids``.

Creating the virtualenv needs PyPI. Where that fails the test is skipped, unless
``QWEN3GUARD_REQUIRE_INTEROP=1`` (CI sets it), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def interop_python() -> str:
    env = {**os.environ, "TORCH_FROM_PYTHON": os.environ.get("TORCH_FROM_PYTHON", sys.executable)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure_interop.sh")],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    if proc.returncode != 0:
        msg = f"cannot create the interop venv: {proc.stderr[-2000:]}"
        if os.environ.get("QWEN3GUARD_REQUIRE_INTEROP") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return proc.stdout.strip().splitlines()[-1]


def test_any_guardrail_and_eval_gen_read_the_built_checkpoint_as_we_do(
    interop_python: str, gen_path: str, tmp_path: Path
) -> None:
    from qwen3guard import Qwen3Guard
    from qwen3guard.tiny.cases import GEN_CASES

    cases = [
        {"prompt": c.messages[0][1], "response": c.messages[1][1] if len(c.messages) > 1 else None}
        for c in GEN_CASES
    ]
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases), encoding="utf-8")
    proc = subprocess.run(
        [interop_python, str(ROOT / "scripts" / "interop_any_guardrail.py"), gen_path,
         str(cases_file)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = json.loads(proc.stdout.strip().splitlines()[-1])
    assert int(other["transformers"].split(".")[0]) < 5
    assert other["rope_theta"] == 1_000_000.0
    assert "token_type_ids" not in other["model_input_names"]
    assert all("token_type_ids" not in r["input_keys"] for r in other["eval_gen"])

    with Qwen3Guard.from_pretrained(gen_path, max_new_tokens=128) as guard:
        ours = [
            guard.check_response(c["prompt"], c["response"]) if c["response"] is not None
            else guard.check_prompt(c["prompt"])
            for c in cases
        ]
    for case, v, ag, og in zip(cases, ours, other["any_guardrail"], other["eval_gen"]):
        where = f"{case} -> ours {v.raw!r}, any-guardrail {ag['text']!r}"
        assert not ag["parse_failure"], where
        assert ag["severity"] == v.risk.value, where
        assert ag["categories"] == [c.value for c in v.categories], where
        assert og["unsafe"] == (not v.is_safe), where
        assert og["text"].strip() == ag["text"].strip() == v.raw.replace("<|im_end|>", "").strip()
