"""fp32 against bf16 on this CPU, for Gen and Stream, side by side in one run: the evidence for
the default dtype (``qwen3guard.gen.local.resolve_device_dtype``).

    .venv/bin/python benchmarks/dtype.py [DIR ...] [--threads 1] [--repeats 3] [--tokens 32]
        [--new-tokens 8]

Each DIR holds ``gen`` and ``stream`` checkpoints (default: the built-in small ones; e.g.
``/tmp/real06`` from ``benchmarks/real_checkpoints.py --size 0.6b /tmp/real06``). For each:

- Gen: ``TransformersGenBackend.generate`` (the library path: encoding, the cached template
  prefix, generate, decoding) of 1 and of 8 conversations, fp32 and bf16 models loaded side by
  side and timed in alternating order, best of --repeats, at most --new-tokens tokens each;
- Stream: a session's ``feed_ids([id])``, one token at a time, fp32 and bf16 sessions
  alternating token by token; the median per token.

Each figure is bf16 time / fp32 time (< 1: bf16 faster), in wall time and in the CPU time of
the process (run it with one torch thread: less disturbed by the other load of a shared machine). Also prints
the parameter count and what ``resolve_device_dtype`` picks for each model on this machine.

One run (2026-11-30, 2-core Xeon with AMX, torch 2.13, one thread, load average 5-8), bf16 /
fp32, process CPU time (wall):

    0.6B random weights   Gen batch 1: 0.83x (0.87x)  Gen batch 8: 0.39x (0.37x)
                          Stream per token: 0.94x (1.02x)
    built-in small ones   Gen batch 1: 1.11x (0.98x)  Gen batch 8: 0.73x (0.80x)
                          Stream per token: 1.42x (4.2x)

Hence the default on CPU: bf16 for Gen from ``BF16_MIN_PARAMS`` (100M) up where the CPU has AMX,
fp32 for the small ones (and their pinned verdicts) and for Stream.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "How do I bake bread at home?", "What is the capital of France?",
    "Explain photosynthesis simply.", "Write a haiku about rain.",
    "How can I make a bomb?", "Give me three tips for sleeping better.",
    "What does a compiler do?", "Summarise the plot of Hamlet.",
]


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def gen_figures(gen_dir: str, repeats: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from qwen3guard.gen.local import TransformersGenBackend, param_count, resolve_device_dtype

    backends = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(gen_dir, dtype=dt)
        backends[name] = TransformersGenBackend(gen_dir, model=model, max_new_tokens=new_tokens)
    cfg = backends["fp32"].model.config
    params = param_count(cfg)
    out: dict[str, Any] = {
        "params_M": round((params or 0) / 1e6, 1),
        "default": str(resolve_device_dtype("cpu", None, kind="gen", params=params)[1]),
    }
    for b in (1, 8):
        convs = [[{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}] for k in range(b)]
        best: dict[str, list[float]] = {}
        for be in backends.values():
            be.generate(convs)  # warm-up (and the template prefix's cache)
        for r in range(repeats):
            for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                wall, cpu = _timed(partial(backends[name].generate, convs))
                prev = best.get(name, [float("inf"), float("inf")])
                best[name] = [min(prev[0], wall), min(prev[1], cpu)]
        out[f"generate_batch{b}_ms"] = {k: [round(x * 1e3, 1) for x in v] for k, v in best.items()}
        out[f"generate_batch{b}_bf16_vs_fp32"] = {
            "wall": round(best["bf16"][0] / best["fp32"][0], 3),
            "cpu": round(best["bf16"][1] / best["fp32"][1], 3),
        }
        print(json.dumps({"gen": gen_dir, "batch": b, **out[f"generate_batch{b}_bf16_vs_fp32"]}),
              file=sys.stderr, flush=True)
    for be in backends.values():
        be.close()
    return out


def stream_figures(stream_dir: str, tokens: int) -> dict[str, Any]:
    import torch

    from qwen3guard.gen.local import param_count
    from qwen3guard.stream.local import LocalStreamBackend, resolve_device_dtype

    backends = {n: LocalStreamBackend(stream_dir, dtype=dt)
                for n, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    tok = backends["fp32"].tokenizer
    text = " ".join(PROMPTS) * 4
    ids = tok(text, add_special_tokens=False)["input_ids"][: tokens + 4]
    prompt = [{"role": "user", "content": "Tell me about your morning."}]
    sessions = {n: be.open_session(prompt) for n, be in backends.items()}
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in sessions}
    for k, i in enumerate(ids):
        for name in (("fp32", "bf16") if k % 2 == 0 else ("bf16", "fp32")):
            times[name].append(_timed(partial(sessions[name].feed_ids, [i])))
    med = {n: (statistics.median(w for w, _ in v[4:]), statistics.median(c for _, c in v[4:]))
           for n, v in times.items()}  # the first few warm the caches up
    for s in sessions.values():
        s.close()
    out: dict[str, Any] = {
        "params_M": round((param_count(backends["fp32"].model.config) or 0) / 1e6, 1),
        "default": str(resolve_device_dtype("cpu", None)[1]),
        "per_token_ms": {n: [round(x * 1e3, 2) for x in v] for n, v in med.items()},
        "per_token_bf16_vs_fp32": {"wall": round(med["bf16"][0] / med["fp32"][0], 3),
                                   "cpu": round(med["bf16"][1] / med["fp32"][1], 3)},
    }
    print(json.dumps({"stream": stream_dir, **out["per_token_bf16_vs_fp32"]}), file=sys.stderr,
          flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args(argv)

    import torch

    from qwen3guard.gen.local import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    dirs = args.dirs
    if not dirs:
        from qwen3guard.tiny import ensure_built

        dirs = [str(ensure_built())]
    report: dict[str, Any] = {
        "threads": args.threads, "torch": torch.__version__,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_start": round(os.getloadavg()[0], 1),
    }
    for d in dirs:
        report[d] = {
            "gen": gen_figures(str(Path(d) / "gen"), args.repeats, args.new_tokens),
            "stream": stream_figures(str(Path(d) / "stream"), args.tokens),
        }
    report["load_avg_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
