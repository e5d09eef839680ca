"""Checkpoint files that transformers 4.5x and 5 read the same way.

transformers 5 saves the RoPE settings only as ``rope_parameters``; transformers 4.57 (which the
official remote code and any-guardrail need) reads ``rope_theta`` and, not finding it, silently
uses 10000. The hub's Qwen3Guard checkpoints carry ``rope_theta`` / ``rope_scaling`` (and
``torch_dtype``), which transformers 5 converts on load. So the built checkpoints carry both
spellings, with the same values.

The tokenizer is a ``PreTrainedTokenizerFast``, whose default ``model_input_names`` under 4.x
include ``token_type_ids``: ``model.generate(**tokenizer(...))`` then fails on a Qwen3 model.
``tokenizer_config.json`` names the inputs (``input_ids``, ``attention_mask``), as the hub's
``Qwen2Tokenizer`` does by class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def portable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` (a transformers 5 ``config.json`` dict) with the 4.x spellings added."""
    out = dict(cfg)
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
        extra = {k: v for k, v in rope.items() if k != "rope_theta"}
        out["rope_scaling"] = None if extra.get("rope_type", "default") == "default" else extra
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    return out


def make_portable(out_dir: Path) -> None:
    """Rewrite ``out_dir/config.json`` with both spellings (see the module doc)."""
    path = Path(out_dir) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(
        json.dumps(portable_config(cfg), indent=2, ensure_ascii=False, sort_keys=True) + "\n",
        encoding="utf-8",
    )
