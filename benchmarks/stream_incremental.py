"""Per-token cost of Stream moderation: our incremental session vs the official algorithm.

    .venv/bin/python benchmarks/stream_incremental.py [--threads 1] [--lengths 128 512 2048]

- ours: ``guard.open_stream(prompt)`` then ``session.feed_ids([id])`` per answer token (one
  incremental forward with the KV cache per token, plus debounce and bookkeeping);
- official: a faithful re-implementation of ``stream_moderate_from_ids`` as the official
  remote code runs it: the growing id list is re-run in full for every new token, no cache
  (QwenLM/Qwen3Guard issue 22), and the last position's heads are read;
- Gen fallback: a Gen-only guard's session (re-checking the accumulated answer with Gen every
  N tokens, and on close), at N = 32 and N = 200.

"Per-token cost at L" is the mean cost per token of moderating an L-token answer.

Runs on the built-in tiny checkpoints (CPU). Their context is 2048 tokens, prompt included;
the Stream checkpoint is copied to a temporary directory with ``max_position_embeddings``
raised to 8192 (a config-only change: RoPE works at any length) so a 2048-token answer fits.

Shared machines drift in load, so the measurements are interleaved: each round feeds one
token to a session of every length (a session that reaches its length is closed and a new one
opened, untimed) and, at sampled rounds, times the official algorithm at that position. Every
length is therefore measured under the same conditions. The official algorithm's cost depends
only on the position, so it is timed at every position below 128, every 4th below 512 and
every 16th beyond, and averaged with those weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def stride_at(position: int) -> int:
    return 1 if position < 128 else 4 if position < 512 else 16


class Official:
    """The official algorithm: re-run the whole growing prefix for each new token."""

    def __init__(self, backend) -> None:
        import torch

        self.torch = torch
        plan = backend.plan_prompt([{"role": "user", "content": PROMPT}])
        tail = backend.tokenizer(plan.tail, add_special_tokens=False)["input_ids"]
        self.prefix = plan.ids + tail
        self.model = backend.model
        self.labels = backend.labels
        with torch.inference_mode():  # the user turn, as the official code does first
            self.model(input_ids=torch.tensor([self.prefix]))

    def step(self, answer: list[int], position: int) -> float:
        torch = self.torch
        seq = self.prefix + answer[: position + 1]
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([seq]))  # no cache
            risk = torch.softmax(out.risk_level_logits[0, -1].float(), -1)
            cat = torch.softmax(out.category_logits[0, -1].float(), -1)
            _ = (
                self.labels.risk[int(risk.argmax())],
                float(risk.max()),
                self.labels.category[int(cat.argmax())],
                float(cat.max()),
            )
        return time.perf_counter() - t0


def measure(guard, ids: list[int], lengths: list[int]) -> tuple[dict, dict]:
    """Interleaved: per-token cost of ours for each answer length, and of the official
    algorithm averaged over the positions below each length."""
    official = Official(guard.stream)
    sessions: dict[int, list] = {n: [None, 0] for n in lengths}
    ours: dict[int, list[float]] = {n: [] for n in lengths}
    samples: list[tuple[int, float]] = []  # (position, cost)
    for k in range(max(lengths)):
        for n in lengths:
            state = sessions[n]
            if state[0] is None or state[1] == n:
                if state[0] is not None:
                    state[0].close()
                state[0], state[1] = guard.open_stream(PROMPT), 0
            t0 = time.perf_counter()
            state[0].feed_ids([ids[state[1]]])
            ours[n].append(time.perf_counter() - t0)
            state[1] += 1
        if k % stride_at(k) == 0:
            samples.append((k, official.step(ids, k)))
    for state in sessions.values():
        state[0].close()
    ours_mean = {n: sum(v) / len(v) for n, v in ours.items()}
    official_mean = {}
    for n in lengths:
        pts = [(stride_at(p), c) for p, c in samples if p < n]
        official_mean[n] = sum(w * c for w, c in pts) / sum(w for w, _ in pts)
    return ours_mean, official_mean


def time_ours_text(guard, text: str) -> float:
    """``feed_text`` with one word per chunk (re-tokenization included), per answer token."""
    s = guard.open_stream(PROMPT)
    words = text.split(" ")
    t0 = time.perf_counter()
    for k, w in enumerate(words):
        s.feed_text(w if k == 0 else " " + w)
    s.close()
    return (time.perf_counter() - t0) / max(1, s.tokens_seen)


def time_fallback(gen_guard, tokenizer, n_tokens: int, every: int) -> tuple[float, int]:
    ids = answer_ids(tokenizer, n_tokens)
    s = gen_guard.open_stream(PROMPT, fallback_every=every)
    t0 = time.perf_counter()
    for i in ids:
        s.feed_ids([i])
    s.close()
    return (time.perf_counter() - t0) / len(ids), s.checks_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--fallback-lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    lengths = sorted(set(args.lengths))

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
        need = max(lengths) + 256
        if orig_ctx is None or orig_ctx < need:
            cfg["max_position_embeddings"] = max(8192, need)
            cfg_path.write_text(json.dumps(cfg, indent=2))
        guard = Qwen3Guard.from_pretrained(None, stream_model=str(stream_dir), device="cpu")
        backend = guard.stream
        tok = backend.tokenizer
        print(
            f"tiny Stream checkpoint: {cfg.get('num_hidden_layers')} layers, hidden "
            f"{cfg.get('hidden_size')}, context {orig_ctx} -> {backend.max_context_tokens} "
            f"(config-only copy); torch threads {torch.get_num_threads()}; CPU; "
            f"fast decode path: {'on' if backend._fast is not None else 'off'}"
        )
        ids = answer_ids(tok, max(lengths))
        measure(guard, ids[:64], [16, 64])  # warm-up
        ours, official = measure(guard, ids, lengths)
        text_cost = time_ours_text(guard, tok.decode(ids))

        print(
            f"\n{'answer tokens':>14} {'ours ms/token':>14} {'official ms/token':>18} "
            f"{'speed-up':>9}"
        )
        for n in lengths:
            print(
                f"{n:>14} {ours[n] * 1e3:>14.3f} {official[n] * 1e3:>18.3f} "
                f"{official[n] / ours[n]:>8.1f}x"
            )
        lo, hi = lengths[0], lengths[-1]
        flat = ours[hi] / ours[lo]
        speedup = official[hi] / ours[hi]
        print(
            f"\nours at {hi} vs ours at {lo}: {flat:.2f}x (target <= 1.5x) "
            f"{'OK' if flat <= 1.5 else 'MISSED'}"
        )
        print(
            f"speed-up at {hi} tokens: {speedup:.1f}x (target >= 20x) "
            f"{'OK' if speedup >= 20 else 'MISSED'}"
        )
        print(
            f"ours with feed_text (one word per chunk, re-tokenization included), "
            f"{max(lengths)} tokens: {text_cost * 1e3:.3f} ms/token"
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
                ratio = f"{per_tok / ours[n]:7.1f}x" if n in ours else "      -"
                print(f"{n:>14} {every:>5} {per_tok * 1e3:>10.3f} {checks:>7} {ratio:>8}")
        gen_guard.close()
        if args.json:
            print(
                json.dumps(
                    {
                        "stream": {
                            str(n): {"ours_s": ours[n], "official_s": official[n]} for n in lengths
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
