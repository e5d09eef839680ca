"""Per-token cost of Stream moderation: our incremental session vs the official algorithm.

    .venv/bin/python benchmarks/stream_incremental.py [--threads 1] [--lengths 128 512 2048]

- ours: ``guard.open_stream(prompt)`` then ``session.feed_ids([id])`` per answer token (one
  incremental forward with the KV cache per token, plus debounce and bookkeeping); median of
  3 sessions. Also ``feed_text`` one word per chunk (re-tokenization included);
- official: a faithful re-implementation of ``stream_moderate_from_ids`` as the official
  remote code runs it: the growing id list is re-run in full for every new token, no cache
  (QwenLM/Qwen3Guard issue 22), and the last position's heads are read;
- Gen fallback: a Gen-only guard's session (re-checking the accumulated answer with Gen every
  N tokens, and on close), at N = 32 and N = 200.

Runs on the built-in tiny checkpoints (CPU). Their context is 2048 tokens, prompt included;
the Stream checkpoint is copied to a temporary directory with ``max_position_embeddings``
raised to 8192 (a config-only change: RoPE works at any length) so a 2048-token answer fits.
For long answers the official algorithm is timed at every ``stride``-th position and averaged
(its cost depends only on the length, so this estimates the mean over all positions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Tell me about your day."


def answer_ids(tokenizer, n: int) -> list[int]:
    from qwen3guard.tiny.data import filler_text

    words = n
    while True:
        ids = tokenizer(filler_text(words, seed=7), add_special_tokens=False)["input_ids"]
        if len(ids) >= n:
            return ids[:n]
        words *= 2


def time_ours(guard, ids: list[int], repeats: int = 3) -> float:
    """Median over ``repeats`` sessions of the mean cost of ``feed_ids([id])``."""
    runs = []
    for _ in range(repeats):
        s = guard.open_stream(PROMPT)
        t0 = time.perf_counter()
        for i in ids:
            s.feed_ids([i])
        runs.append((time.perf_counter() - t0) / len(ids))
        s.close()
    return statistics.median(runs)


def time_ours_text(guard, text: str, n_tokens: int) -> float:
    """``feed_text`` with one word per chunk (re-tokenization included), per answer token."""
    s = guard.open_stream(PROMPT)
    words = text.split(" ")
    t0 = time.perf_counter()
    for k, w in enumerate(words):
        s.feed_text(w if k == 0 else " " + w)
    s.close()
    dt = time.perf_counter() - t0
    return dt / max(1, s.tokens_seen)


def time_official(backend, ids: list[int], stride: int) -> float:
    """The official algorithm: re-run the whole growing prefix for each new token."""
    import torch

    plan = backend.plan_prompt([{"role": "user", "content": PROMPT}])
    prefix = plan.ids + backend.tokenizer(plan.tail, add_special_tokens=False)["input_ids"]
    model = backend.model
    labels = backend.labels
    costs = []
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix]))  # the user turn, as the official code does
        for k in range(0, len(ids), stride):
            seq = prefix + ids[: k + 1]
            t0 = time.perf_counter()
            out = model(input_ids=torch.tensor([seq]))  # no cache
            risk = torch.softmax(out.risk_level_logits[0, -1].float(), -1)
            cat = torch.softmax(out.category_logits[0, -1].float(), -1)
            _ = (
                labels.risk[int(risk.argmax())],
                float(risk.max()),
                labels.category[int(cat.argmax())],
                float(cat.max()),
            )
            costs.append(time.perf_counter() - t0)
    return sum(costs) / len(costs)


def time_fallback(gen_guard, tokenizer, n_tokens: int, every: int) -> tuple[float, int]:
    ids = answer_ids(tokenizer, n_tokens)
    s = gen_guard.open_stream(PROMPT, fallback_every=every)
    t0 = time.perf_counter()
    for i in ids:
        s.feed_ids([i])
    s.close()
    dt = time.perf_counter() - t0
    return dt / len(ids), s.checks_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--fallback-lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from qwen3guard import Qwen3Guard
    from qwen3guard.tiny import ensure_built

    tiny = Path(ensure_built())
    tmp = Path(tempfile.mkdtemp(prefix="qwen3guard-bench-"))
    try:
        stream_dir = tmp / "stream"
        shutil.copytree(tiny / "stream", stream_dir)
        cfg_path = stream_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        orig_ctx = cfg.get("max_position_embeddings")
        need = max(args.lengths) + 256
        if orig_ctx is None or orig_ctx < need:
            cfg["max_position_embeddings"] = max(8192, need)
            cfg_path.write_text(json.dumps(cfg, indent=2))
        guard = Qwen3Guard.from_pretrained(None, stream_model=str(stream_dir), device="cpu")
        backend = guard.stream
        tok = backend.tokenizer
        print(
            f"tiny Stream checkpoint: {cfg.get('num_hidden_layers')} layers, hidden "
            f"{cfg.get('hidden_size')}, context {orig_ctx} -> {backend.max_context_tokens} "
            f"(config-only copy); torch threads {torch.get_num_threads()}; CPU"
        )
        # Warm-up.
        time_ours(guard, answer_ids(tok, 32))
        time_official(backend, answer_ids(tok, 16), 1)

        results = {}
        print(
            f"\n{'answer tokens':>14} {'ours ms/token':>14} {'official ms/token':>18} "
            f"{'speed-up':>9} {'ours feed_text':>15}  (official stride)"
        )
        for n in args.lengths:
            ids = answer_ids(tok, n)
            ours = time_ours(guard, ids)
            stride = 1 if n <= 128 else max(1, n // 128)
            official = time_official(backend, ids, stride)
            text = time_ours_text(guard, tok.decode(ids), n)
            results[n] = (ours, official)
            print(
                f"{n:>14} {ours * 1e3:>14.3f} {official * 1e3:>18.3f} "
                f"{official / ours:>8.1f}x {text * 1e3:>15.3f}  ({stride})"
            )
        lo, hi = min(args.lengths), max(args.lengths)
        flat = results[hi][0] / results[lo][0]
        speedup = results[hi][1] / results[hi][0]
        print(
            f"\nours at {hi} vs ours at {lo}: {flat:.2f}x (target <= 1.5x) "
            f"{'OK' if flat <= 1.5 else 'MISSED'}"
        )
        print(
            f"speed-up at {hi} tokens: {speedup:.1f}x (target >= 20x) "
            f"{'OK' if speedup >= 20 else 'MISSED'}"
        )
        guard.close()

        gen_guard = Qwen3Guard.from_pretrained(str(tiny / "gen"), device="cpu")
        gtok = gen_guard.gen.tokenizer
        time_fallback(gen_guard, gtok, 16, 8)  # warm-up
        print("\nGen fallback (no Stream model), per answer token, checks on close included:")
        print(f"{'answer tokens':>14} {'N':>5} {'ms/token':>10} {'checks':>7} {'vs ours':>8}")
        fb = {}
        for n in args.fallback_lengths:
            for every in (32, 200):
                per_tok, checks = time_fallback(gen_guard, gtok, n, every)
                fb[(n, every)] = per_tok
                ours_n = results.get(n, (None,))[0]
                ratio = f"{per_tok / ours_n:7.1f}x" if ours_n else "      -"
                print(f"{n:>14} {every:>5} {per_tok * 1e3:>10.3f} {checks:>7} {ratio:>8}")
        gen_guard.close()
        if args.json:
            print(
                json.dumps(
                    {
                        "stream": {
                            str(n): {"ours_s": o, "official_s": f} for n, (o, f) in results.items()
                        },
                        "fallback": {f"{n}/{e}": v for (n, e), v in fb.items()},
                    }
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
