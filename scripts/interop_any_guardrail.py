"""Runs inside the interop virtualenv (scripts/ensure_interop.sh: any-guardrail, transformers < 5).

    python scripts/interop_any_guardrail.py GEN_CHECKPOINT CASES.json

``CASES.json``: a list of ``{"prompt": str, "response": str | null}``. Prints one JSON object:

- ``transformers``: the version (must be < 5);
- ``rope_theta`` as transformers 4.x reads the checkpoint's config, and the tokenizer's
  ``model_input_names`` (no ``token_type_ids``: ``generate(**tokenizer(...))`` then works);
- ``any_guardrail``: per case, any-guardrail 0.7.7's ``Qwen3Guard`` (its Gen wrapper,
  ``any_guardrail/guardrails/qwen3_guard/qwen3_guard.py``) ``validate`` result: severity, valid,
  categories, the generated text;
- ``eval_gen``: per case, the calls ``eval/eval_gen.py`` of QwenLM/Qwen3Guard makes at commit
  6a52eca94b3d2aedb8aebd36baa353828d4166f1 (``apply_chat_template(message, tokenize=False,
  add_generation_prompt=False)``, ``tokenizer([text], return_tensors="pt")``, ``generate(...,
  max_new_tokens=128, do_sample=False, pad_token_id=eos)``, ``decode(...,
  skip_special_tokens=True)``) and its rule: unsafe when the output contains
  ``"Safety: Unsafe"`` or ``"Safety: Controversial"``.

This file imports nothing from qwen3guard: it sees the checkpoint only as the official stack does.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(path: str, cases_file: str) -> dict[str, Any]:
    import torch
    import transformers
    from any_guardrail.guardrails.qwen3_guard.qwen3_guard import Qwen3Guard
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with open(cases_file, encoding="utf-8") as f:
        cases = json.load(f)
    out: dict[str, Any] = {"transformers": transformers.__version__}
    out["rope_theta"] = getattr(AutoConfig.from_pretrained(path), "rope_theta", None)

    # any-guardrail accepts only hub ids it lists; a local checkpoint is added to the list
    Qwen3Guard.SUPPORTED_MODELS = [*Qwen3Guard.SUPPORTED_MODELS, path]
    guard = Qwen3Guard(model_id=path)
    results = []
    for c in cases:
        r = guard.validate(c["prompt"], output_text=c.get("response"))
        extra = r.extra or {}
        results.append({
            "severity": extra.get("severity"),
            "parse_failure": bool(extra.get("parse_failure")),
            "valid": r.valid,
            "categories": [x.name for x in (r.categories or []) if x.name != "refusal"],
            "text": r.explanation,
        })
    out["any_guardrail"] = results

    tokenizer = AutoTokenizer.from_pretrained(path)
    out["model_input_names"] = list(tokenizer.model_input_names)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    official = []
    for c in cases:
        message = [{"role": "user", "content": c["prompt"]}]
        if c.get("response") is not None:
            message.append({"role": "assistant", "content": c["response"]})
        text = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=False)
        inputs = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=128, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        content = tokenizer.decode(ids[0][len(inputs.input_ids[0]):], skip_special_tokens=True)
        official.append({
            "text": content,
            "unsafe": "Safety: Unsafe" in content or "Safety: Controversial" in content,
            "input_keys": sorted(inputs.keys()),
        })
    out["eval_gen"] = official
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), ensure_ascii=False))
