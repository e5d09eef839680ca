"""Qwen3Guard-Stream on vLLM: what reading the prefix cache buys, and 32 concurrent streams
over vLLM against ``qwen3guard serve``'s WebSocket sessions.

    .venv/bin/python benchmarks/stream_vllm.py [--lengths 128 512 2048] [--streams 32]
        [--stream-tokens 256] [--skip-serve]

1. Per-token cost at L (the mean cost per token of moderating an L-token answer fed one token
   per request), cache reading on against off. On: a real session (``feed_ids([id])`` per
   token; each request carries the whole prefix and vLLM computes the tokens after its last
   cached block); the sessions of all lengths are fed round-robin, one token each per round,
   and a shorter answer is moderated again in a new session each time it ends, so every
   length is measured over the same stretch of time (the same machine load). Off: the same
   requests with ``read_cache: false``, so each computes its whole prefix; the cost depends only on the position, so it is timed at every position below
   128, every 4th below 512 and every 16th beyond, and averaged with those weights. Each
   measurement has its own ``cache_salt``, so no run reads another's blocks.
2. Tokens per request (k = ``submit_every``) at L=512: requests and per-token cost.
3. 32 concurrent streams (async sessions, text chunks of ~4 tokens) over vLLM against the same
   workload on ``qwen3guard serve --stream-model`` (one WebSocket per session, the KV caches in
   the server process): total answer tokens per second.

Runs on the built-in tiny Stream checkpoint (CPU, float32), copied to a temporary directory
with ``max_position_embeddings`` raised to 8192 (config only: RoPE works at any length) so a
2048-token answer fits. Starts each server on loopback, one at a time, and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import tiny_paths

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.launch import ensure_vllm, serve_server, vllm_server  # noqa: E402
from tests.vllm_stream_fixtures import install_plugin, stream_server_args  # noqa: E402

PROMPT = (
    "Please tell me, in a few sentences and without any lists, what the weather is usually "
    "like in a quiet garden during a sunny spring afternoon."
)
BLOCK = 32


def long_checkpoint(stream: str, tmp: Path) -> str:
    out = tmp / "stream-8k"
    shutil.copytree(stream, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = 8192
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(out)


def answer_ids(tokenizer: Any, n: int) -> list[int]:
    from qwen3guard.tiny.data import filler_text

    words = n
    while True:
        ids = tokenizer(filler_text(words, seed=7), add_special_tokens=False)["input_ids"]
        if len(ids) >= n:
            return list(ids[:n])
        words *= 2


def stream_text(tokenizer: Any, n: int, seed: int) -> str:
    from qwen3guard.tiny.data import filler_text

    ids = tokenizer(filler_text(n, seed=seed), add_special_tokens=False)["input_ids"][:n]
    return str(tokenizer.decode(ids))


def stride_at(position: int) -> int:
    return 1 if position < 128 else 4 if position < 512 else 16


def cost_on(backend: Any, ids: list[int], k: int = 1) -> dict[str, float]:
    """A real session, ``k`` tokens per request; seconds per answer token."""
    return costs_on(backend, {len(ids): ids}, k)[len(ids)]


def costs_on(
    backend: Any, answers: dict[int, list[int]], k: int = 1
) -> dict[int, dict[str, float]]:
    """Real sessions (each with its own ``cache_salt``), ``k`` tokens per request, fed
    round-robin: each round feeds one token to one session of every length. A shorter answer
    is moderated again, in a new session, each time it ends, until the longest ends, so every
    length is measured over the same stretch of time, under the same machine load. Seconds
    per answer token (the mean over all its feeds)."""

    def open_one() -> Any:
        return backend.open_session(PROMPT, cache_salt=uuid.uuid4().hex, submit_every=k)

    sessions = {n: open_one() for n in answers}
    pos = dict.fromkeys(answers, 0)
    feeds: dict[int, list[float]] = {n: [] for n in answers}
    stats: dict[int, list[Any]] = {n: [] for n in answers}
    longest = max(answers, key=lambda n: len(answers[n]))
    while pos[longest] < len(answers[longest]):
        for n, ids in answers.items():
            if pos[n] == len(ids):  # a shorter answer ended: moderate it again
                sessions[n], pos[n] = open_one(), 0
            m = len(backend.requests)
            t0 = time.perf_counter()
            sessions[n].feed_ids([ids[pos[n]]])
            pos[n] += 1
            if pos[n] == len(ids):
                sessions[n].close()
            feeds[n].append(time.perf_counter() - t0)
            stats[n].extend(list(backend.requests)[m:])
    for n in answers:
        if 0 < pos[n] < len(answers[n]):
            sessions[n].close()  # an unfinished repeat: its feeds count, its close does not
    out = {}
    for n, reqs in stats.items():
        out[n] = {
            "per_token_ms": 1000 * sum(feeds[n]) / len(feeds[n]),
            # The median feed: a few stalls of a shared machine move the mean.
            "median_token_ms": 1000 * statistics.median(feeds[n]),
            "requests": len(reqs),
            "computed_per_request": sum(r.computed for r in reqs) / max(1, len(reqs)),
            "max_excess": max(
                (r.computed - (r.num_tokens - r.wanted_from) for r in reqs), default=0
            ),
            "request_ms": 1000 * sum(r.seconds for r in reqs) / max(1, len(reqs)),
        }
    return out


def cost_off(backend: Any, ids: list[int]) -> float:
    """Cache reading off: the same requests, each computing its whole prefix (sampled)."""
    plan = backend.plan_prompt([{"role": "user", "content": PROMPT}])
    head = plan.ids
    total_w = total_t = 0.0
    p = 0
    while p < len(ids):
        w = min(stride_at(p), len(ids) - p)
        full = head + ids[: p + 1]
        t0 = time.perf_counter()
        backend._pool(full, len(full) - 1, None, None, read_cache=False)
        total_t += (time.perf_counter() - t0) * w
        total_w += w
        p += w
    return 1000 * total_t / total_w


async def concurrent_streams(guard: Any, texts: list[str], chunk_chars: int) -> float:
    """All streams at once; returns the wall time."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=len(texts) + 4))

    async def one(i: int, text: str) -> bool:
        async with await guard.aopen_stream(f"Question {i}: " + PROMPT) as s:
            for k in range(0, len(text), chunk_chars):
                await s.afeed_text(text[k : k + chunk_chars])
            return bool(s.flagged)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--stream-tokens", type=int, default=256)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()

    from qwen3guard import Qwen3Guard
    from qwen3guard.stream.vllm import VLLMStreamBackend

    gen, stream = tiny_paths()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="qwen3guard-bench-vllm-"))
    results: dict[str, Any] = {}
    try:
        ckpt = long_checkpoint(stream, tmp)
        python = ensure_vllm()
        install_plugin(python, tmp)
        max_len = max(args.lengths) + 256
        proc = vllm_server(
            ckpt, python=python, max_model_len=max_len, kv_cache_gb=2,
            extra_args=stream_server_args(), log_path=str(tmp / "vllm.log"),
        )
        proc.cwd = "/"
        proc.start()
        try:
            results["vllm_startup_s"] = proc.wait_ready(timeout=600)
            backend = VLLMStreamBackend(proc.base_url, tokenizer=ckpt, timeout=600)
            tok = backend.tokenizer
            cost_on(backend, answer_ids(tok, 64))  # warm-up
            ons = costs_on(backend, {n: answer_ids(tok, n) for n in args.lengths})
            for n in args.lengths:
                on = ons[n]
                off = cost_off(backend, answer_ids(tok, n))
                results[f"L={n}"] = {**on, "off_per_token_ms": off}
                print(f"L={n}: on {on['per_token_ms']:.2f} ms/token "
                      f"({on['computed_per_request']:.1f} rows computed per request, "
                      f"max {on['max_excess']} beyond the new ones), off {off:.2f} ms/token",
                      flush=True)
            ids = answer_ids(tok, 512)
            for k in args.ks:
                results[f"k={k}"] = cost_on(backend, ids, k=k)
            texts = [stream_text(tok, args.stream_tokens, seed=100 + i)
                     for i in range(args.streams)]
            total_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
            vguard = Qwen3Guard(stream=backend)
            asyncio.run(concurrent_streams(vguard, texts[:2], 16))  # warm-up
            wall = asyncio.run(concurrent_streams(vguard, texts, 16))
            results["vllm_streams"] = {"wall_s": wall, "tokens_per_s": total_tokens / wall}
            backend.close()
        finally:
            proc.stop()

        if not args.skip_serve:
            sproc = serve_server(gen, stream_model=ckpt, log_path=str(tmp / "serve.log"))
            sproc.start()
            try:
                results["serve_startup_s"] = sproc.wait_ready(timeout=300)
                sguard = Qwen3Guard.from_endpoint(sproc.base_url, stream=True, timeout=600)
                asyncio.run(concurrent_streams(sguard, texts[:2], 16))
                wall = asyncio.run(concurrent_streams(sguard, texts, 16))
                results["serve_streams"] = {"wall_s": wall, "tokens_per_s": total_tokens / wall}
                sguard.close()
            finally:
                sproc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"Stream on vLLM (tiny checkpoint, CPU, block size {BLOCK}); vLLM ready after "
          f"{results['vllm_startup_s']:.0f}s")
    print(f"{'answer':>8}{'cache on':>12}{'(median)':>12}{'cache off':>12}{'off/on':>8}"
          f"{'rows/request':>14}")
    for n in args.lengths:
        r = results[f"L={n}"]
        print(f"{n:>8}{r['per_token_ms']:>10.2f}ms{r['median_token_ms']:>10.2f}ms"
              f"{r['off_per_token_ms']:>10.2f}ms"
              f"{r['off_per_token_ms'] / r['per_token_ms']:>7.1f}x"
              f"{r['computed_per_request']:>14.1f}")
    lo, hi = results[f"L={min(args.lengths)}"], results[f"L={max(args.lengths)}"]
    ratio = hi["per_token_ms"] / lo["per_token_ms"]
    print(f"cache on: per-token cost at {max(args.lengths)} / at {min(args.lengths)} = "
          f"{ratio:.2f}x (target <= 1.5x); medians: "
          f"{hi['median_token_ms'] / lo['median_token_ms']:.2f}x")
    print(f"{'k (tokens/request)':>20}{'requests':>10}{'ms/token':>10}{'rows/request':>14}")
    for k in args.ks:
        r = results[f"k={k}"]
        print(f"{k:>20}{r['requests']:>10}{r['per_token_ms']:>10.2f}"
              f"{r['computed_per_request']:>14.1f}")
    v = results["vllm_streams"]
    print(f"{args.streams} concurrent streams, {total_tokens} answer tokens in 16-char chunks:")
    print(f"  vLLM:             {v['wall_s']:.1f}s, {v['tokens_per_s']:.0f} tokens/s")
    if "serve_streams" in results:
        s = results["serve_streams"]
        print(f"  qwen3guard serve: {s['wall_s']:.1f}s, {s['tokens_per_s']:.0f} tokens/s "
              f"(vLLM/serve throughput = {v['tokens_per_s'] / s['tokens_per_s']:.2f}x)")
    print(f"total {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
