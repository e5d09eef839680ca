"""Run QwenLM/Qwen3Guard's evaluation scripts offline on a local checkpoint and JSONL file.

The scripts (``eval/eval_stream.py``, ``eval/eval_gen.py`` at commit
6a52eca94b3d2aedb8aebd36baa353828d4166f1) are fetched separately and never copied into this
repository. Nothing in their logic is changed; the shims only make them run here:

- ``datasets.load_dataset(path, split=...)`` returns the rows of the local JSONL file ``path``
  (``split`` is ignored: one file per split);
- ``AutoModel.from_pretrained`` (eval_stream.py) loads qwen3guard's ``Qwen3ForGuardModel`` (the
  built checkpoint has no remote code), in float32 (the project's CPU dtype, so the predictions
  are the project's) instead of bfloat16, without ``device_map``;
- ``AutoModelForCausalLM.from_pretrained`` (eval_gen.py): float32, no ``device_map`` (which needs
  accelerate);
- ``--fix-prompt-keyerror``: ``SafetyEvaluator.label_map`` also maps a label string to itself,
  the one-line fix of the ``KeyError`` prompt rows raise at 6a52eca.

    .venv/bin/python scripts/run_official_eval.py /tmp/eval_stream.py [--fix-prompt-keyerror] \\
        -- --model_path DIR --input_path tests/data/official_stream_rows.jsonl \\
           --output_path /tmp/out.jsonl --data_type response --split thinking --thinking

What it printed on the built checkpoints is ``tests/data/official_eval_6a52eca.json``.
"""

from __future__ import annotations

import json
import runpy
import sys
import types
from typing import Any


def _load_dataset(path: str, split: str | None = None, **_: Any) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _install_shims() -> None:
    import torch
    import transformers

    datasets = types.ModuleType("datasets")
    datasets.load_dataset = _load_dataset  # type: ignore[attr-defined]
    sys.modules["datasets"] = datasets

    causal = transformers.AutoModelForCausalLM.from_pretrained

    def load_causal(path: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("device_map", None)
        kwargs.pop("torch_dtype", None)
        kwargs["dtype"] = torch.float32
        return causal(path, *args, **kwargs)

    def load_stream(path: str, *args: Any, **kwargs: Any) -> Any:
        from qwen3guard.stream.modeling import load_stream_model

        return load_stream_model(path, dtype=torch.float32)

    transformers.AutoModelForCausalLM.from_pretrained = load_causal  # type: ignore[method-assign,assignment]
    transformers.AutoModel.from_pretrained = load_stream  # type: ignore[method-assign,assignment]


class _LabelMap(dict[Any, Any]):
    def __getitem__(self, key: Any) -> Any:
        return key if isinstance(key, str) else dict.__getitem__(self, key)


def main(argv: list[str]) -> None:
    script, rest = argv[0], argv[1:]
    fix = "--fix-prompt-keyerror" in rest
    args = rest[rest.index("--") + 1 :] if "--" in rest else []
    _install_shims()
    sys.argv = [script, *args]
    if not fix:
        runpy.run_path(script, run_name="__main__")
        return
    ns = runpy.run_path(script, run_name="official_eval")
    evaluator = ns["SafetyEvaluator"]
    original = evaluator.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        self.label_map = _LabelMap(self.label_map)

    evaluator.__init__ = init
    ns["main"]()


if __name__ == "__main__":
    main(sys.argv[1:])
