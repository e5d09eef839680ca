"""Speed and memory at real dimensions (random weights, the real Qwen3 tokenizer), in one run.

    .venv/bin/python benchmarks/real_size.py DIR [--size 0.6b] [--tokens 64] [--threads 1]
        [--gen-batches 1 8 32] [--gen-new-tokens 8] [--budget-gib 16] [--skip-gen] [--skip-bf16]

DIR holds ``gen`` and ``stream`` checkpoints written by ``benchmarks/real_checkpoints.py``
(built there first when missing). Every figure is a ratio or a budget measured side by side in
this run, so the load of a shared machine affects both sides alike:

1. Stream per token: a session's ``feed_ids([id])`` (fast path, and the transformers forward)
   against a bare transformers ``Qwen3Model`` decode step with a ``DynamicCache`` on the same
   backbone weights, one answer token at a time, interleaved token by token (the order of the
   three rotates). Medians per token and their ratios.
2. KV-cache bytes per session per token (used, and allocated by the session's growing buffer),
   and how many 2,048-token sessions fit in ``--budget-gib``.
3. Gen: ``guard.check_batch`` of B conversations (encoding, windows, micro-batcher hand-off,
   generate, parsing) against a bare ``model.generate`` of the same prompts (chat template,
   left padding, the same ``max_new_tokens`` and eos ids), at each batch size: latency per
   call, throughput (conversations/s) and the library's ratio. Random weights never emit eos,
   so both sides generate exactly ``--gen-new-tokens`` tokens (checked).
4. fp32 against bf16 on this CPU: the Stream session per token, and the Gen batch-1 check; and
   what ``qwen3guard.gen.local.resolve_device_dtype`` picks on CPU (for this Gen model's size,
   and for Stream) and on CUDA (``benchmarks/dtype.py`` measures the dtypes on their own).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "src"))
sys.path.insert(0, str(_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARAGRAPH = (
    "The garden was quiet in the early morning, and the light came slowly over the wall. "
    "We talked about the music we had heard the night before, about the river, and about "
    "the long walk home through the old part of the town. 今天天气很好，我们在河边散步。 "
)
PROMPTS = [
    "How do I bake bread at home?", "What is the capital of France?",
    "Explain photosynthesis simply.", "Write a haiku about rain.",
    "怎么学习编程？", "Give me three tips for sleeping better.",
    "What does a compiler do?", "Summarise the plot of Hamlet.",
]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _kv_bytes(cache: Any, length: int) -> tuple[int, int]:
    """(bytes of the first ``length`` positions, bytes allocated) of a session's cache."""
    from qwen3guard.stream.fastpath import KVBuffer

    used = alloc = 0
    if isinstance(cache, KVBuffer):
        pairs = list(zip(cache.keys, cache.values))
    elif hasattr(cache, "layers"):
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    else:
        pairs = list(zip(cache.key_cache, cache.value_cache))
    for k, v in pairs:
        for t in (k, v):
            if t is None:
                continue
            alloc += t.numel() * t.element_size()
            used += t[:, :, :length].numel() * t.element_size()
    return used, alloc


def _buffer_capacity(n: int) -> int:
    """Positions the fast path's KVBuffer allocates for ``n`` positions (fastpath.KVBuffer:
    at least 64, doubling)."""
    cap = 64
    while cap < n:
        cap *= 2
    return cap


def answer_ids(tok: Any, n: int) -> list[int]:
    from qwen3guard.stream.retokenize import encode_plain

    text = PARAGRAPH
    while len(encode_plain(tok, text)) < n:
        text += PARAGRAPH
    return encode_plain(tok, text)[:n]


def stream_phase(stream_dir: str, n_tokens: int, budget_gib: float, bf16: bool) -> dict:
    import torch
    from transformers import DynamicCache

    from qwen3guard import Qwen3Guard
    from qwen3guard.stream.local import LocalStreamBackend

    out: dict[str, Any] = {}
    guard = Qwen3Guard.from_pretrained(None, stream_model=stream_dir)
    fast_be = guard.stream
    assert fast_be is not None and fast_be._fast is not None, "the fast path did not load"
    model, tok = fast_be.model, fast_be.tokenizer
    hf_be = LocalStreamBackend(stream_dir, model=model, tokenizer=tok, fast_path=False)
    cfg = model.config
    out["dims"] = {k: getattr(cfg, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "intermediate_size", "vocab_size", "guard_inner_size")}
    out["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    ids = answer_ids(tok, n_tokens)
    prompt = [{"role": "user", "content": "Tell me about your morning."}]
    backbone = model.model  # the bare transformers Qwen3Model, same weights

    s_fast = fast_be.open_session(prompt)
    s_hf = hf_be.open_session(prompt)
    prompt_ids = fast_be.plan_prompt(prompt).ids
    with torch.inference_mode():
        cache = DynamicCache(config=cfg)
        backbone(input_ids=torch.tensor([prompt_ids]), past_key_values=cache, use_cache=True)

    def bare(i: int) -> None:
        with torch.inference_mode():
            backbone(input_ids=torch.tensor([[i]]), past_key_values=cache, use_cache=True)

    sessions = {"fast": lambda i: s_fast.feed_ids([i]), "hf": lambda i: s_hf.feed_ids([i]),
                "bare": bare}
    s_bf = None
    if bf16:
        bf_be = LocalStreamBackend(stream_dir, dtype=torch.bfloat16)
        s_bf = bf_be.open_session(prompt)
        sessions["bf16"] = lambda i: s_bf.feed_ids([i])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for k, i in enumerate(ids):
        order = names[k % len(names):] + names[: k % len(names)]
        for name in order:
            t0 = time.perf_counter()
            sessions[name](i)
            times[name].append(time.perf_counter() - t0)
    med = {k: _median(v[4:]) for k, v in times.items()}  # the first few warm the caches up
    out["per_token_ms_median"] = {k: round(v * 1e3, 2) for k, v in med.items()}
    out["session_fast_vs_bare"] = round(med["fast"] / med["bare"], 3)
    out["session_hf_vs_bare"] = round(med["hf"] / med["bare"], 3)
    out["fast_vs_hf"] = round(med["fast"] / med["hf"], 3)
    out["session_fast_vs_bare_total"] = round(sum(times["fast"]) / sum(times["bare"]), 3)
    if bf16:
        out["bf16_vs_fp32_session"] = round(med["bf16"] / med["fast"], 3)
    print(json.dumps({"stream_ms": out["per_token_ms_median"]}), file=sys.stderr, flush=True)

    # KV cache per session per token, fp32 (the CPU default).
    length = len(prompt_ids) + len(ids)
    used, alloc = _kv_bytes(s_fast._kv.cache, length)
    per_token = used / length
    theory = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4
    hf_used, hf_alloc = _kv_bytes(s_hf._kv.cache, length)
    budget = budget_gib * 2**30
    alloc_2048 = _buffer_capacity(2048) * theory
    out["kv"] = {
        "positions": length,
        "bytes_per_token_used": round(per_token),
        "bytes_per_token_formula_fp32": theory,  # 2 (k, v) x layers x kv_heads x head_dim x 4
        "bytes_per_token_allocated_now": round(alloc / length),
        "hf_dynamiccache_bytes_per_token": round(hf_used / length),
        "bytes_per_2048_session_allocated": alloc_2048,
        "budget_gib": budget_gib,
        "sessions_of_2048_in_budget": int(budget // alloc_2048),
        "sessions_of_2048_in_budget_bf16": int(budget // (alloc_2048 // 2)),
    }
    for s in (s_fast, s_hf) + ((s_bf,) if s_bf is not None else ()):
        s.close()
    guard.close()
    return out


def gen_phase(gen_dir: str, batches: list[int], new_tokens: int, bf16: bool,
              bare_first: bool = False) -> dict:
    import torch

    from qwen3guard import Qwen3Guard

    out: dict[str, Any] = {"max_new_tokens": new_tokens, "batches": {}}
    guard = Qwen3Guard.from_pretrained(gen_dir, max_new_tokens=new_tokens, max_batch_size=32)
    gen = guard.gen
    model, tok = gen.model, gen.tokenizer

    def convs(b: int) -> list[list[dict]]:
        return [[{"role": "user", "content": f"{PROMPTS[k % len(PROMPTS)]} ({k})"}]
                for k in range(b)]

    def library(cs: list) -> None:
        res = guard.check_batch(cs, return_exceptions=True)
        assert len(res) == len(cs)

    def bare(cs: list, m: Any = model) -> int:
        texts = [tok.apply_chat_template(c, tokenize=False) for c in cs]
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            o = m.generate(**enc, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                           eos_token_id=gen.eos_ids, pad_token_id=gen.pad_id)
        return o.shape[1] - enc["input_ids"].shape[1]

    if bf16:
        cs = convs(1)
        # The guard loaded its default dtype (bf16 at this size on a CPU with AMX): the other one
        # is loaded beside it.
        other = torch.float32 if model.dtype == torch.bfloat16 else torch.bfloat16
        other_model = type(model).from_pretrained(gen_dir, dtype=other).eval()
        fp_model, bf_model = ((other_model, model) if other == torch.float32
                              else (model, other_model))
        out["default_dtype"] = str(model.dtype)
        fp, bf = [], []
        for r in range(2):
            for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                t0 = time.perf_counter()
                bare(cs, fp_model if name == "fp32" else bf_model)
                (fp if name == "fp32" else bf).append(time.perf_counter() - t0)
        out["bf16_vs_fp32_generate_batch1"] = round(min(bf) / min(fp), 3)
        del other_model, fp_model, bf_model
        print(json.dumps({"bf16_vs_fp32_generate_batch1": out["bf16_vs_fp32_generate_batch1"]}),
              file=sys.stderr, flush=True)
    prompt_len = len(gen.encoder.encode(convs(1)[0]))
    out["prompt_tokens"] = prompt_len
    for b in batches:
        cs = convs(b)
        repeats = 2 if b == 1 else 1
        lib_t, bare_t = [], []
        generated = bare(cs[:1]) if b == batches[0] else new_tokens  # warm-up
        for r in range(repeats):
            for side in (("lib", "bare") if (r + bare_first) % 2 == 0 else ("bare", "lib")):
                t0 = time.perf_counter()
                if side == "lib":
                    library(cs)
                else:
                    generated = bare(cs)
                (lib_t if side == "lib" else bare_t).append(time.perf_counter() - t0)
        assert generated == new_tokens, f"generate stopped at {generated} tokens"
        t0 = time.perf_counter()
        for c in cs:
            gen.encoder.encode(c)
        encode_s = time.perf_counter() - t0
        lib, bar = min(lib_t), min(bare_t)
        out["batches"][b] = {
            "library_s": round(lib, 3), "bare_generate_s": round(bar, 3),
            "library_vs_bare": round(lib / bar, 3),
            "library_convs_per_s": round(b / lib, 3), "bare_convs_per_s": round(b / bar, 3),
            "encode_s": round(encode_s, 4),
        }
        print(json.dumps({"gen_batch": b, **out["batches"][b]}), file=sys.stderr, flush=True)
    b0, bn = batches[0], batches[-1]
    out[f"throughput_batch_{bn}_vs_{b0}"] = round(
        out["batches"][bn]["library_convs_per_s"] / out["batches"][b0]["library_convs_per_s"], 2)
    guard.close()
    return out


def dtype_choice(root: Path | None = None) -> dict:
    import torch

    from qwen3guard.gen.local import cpu_has_native_bf16, param_count, resolve_device_dtype
    from qwen3guard.stream.local_backend import resolve_device_dtype as stream_resolve

    params = None
    if root is not None and (root / "gen" / "config.json").is_file():
        from transformers import AutoConfig

        params = param_count(AutoConfig.from_pretrained(str(root / "gen")))

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu_native_bf16": cpu_has_native_bf16(),
        "gen_params_M": round(params / 1e6, 1) if params else None,
        "cpu_default_gen": str(resolve_device_dtype("cpu", None, params=params)[1]),
        "cpu_default_stream": str(stream_resolve("cpu", None)[1]),
        "cuda_default": str(resolve_device_dtype("cuda", None)[1]),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--size", default="0.6b")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gen-batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--gen-new-tokens", type=int, default=8)
    ap.add_argument("--budget-gib", type=float, default=16.0)
    ap.add_argument("--skip-gen", action="store_true")
    ap.add_argument("--bare-first", action="store_true",
                    help="time the bare generate before the library (first repeat)")
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--skip-bf16", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    if not (root / "gen" / "config.json").is_file() or not (root / "stream" / "config.json").is_file():
        from benchmarks.real_checkpoints import build

        build(args.size, root)
    report: dict[str, Any] = {
        "threads": args.threads, "load_avg_start": os.getloadavg()[0], "dtype": dtype_choice(root),
    }
    t0 = time.perf_counter()
    if not args.skip_stream:
        report["stream"] = stream_phase(str(root / "stream"), args.tokens, args.budget_gib,
                                        not args.skip_bf16)
        gc.collect()
    if not args.skip_gen:
        report["gen"] = gen_phase(str(root / "gen"), args.gen_batches, args.gen_new_tokens,
                                  not args.skip_bf16, args.bare_first)
    report["load_avg_end"] = os.getloadavg()[0]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
