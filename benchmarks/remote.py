"""Remote Gen throughput: 64 concurrent checks vs 64 sequential ones, against vLLM and against
``qwen3guard serve``, and ``qwen3guard serve``'s micro-batching on vs off.

    .venv/bin/python benchmarks/remote.py [--n 64] [--repeats 3] [--skip-vllm]

Starts every server it needs on loopback, one at a time (so they do not compete for the CPU),
on the built-in small Gen checkpoint (or $QWEN3GUARD_MODEL), and stops each before the next.
Prints wall times (best of --repeats) and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from _common import best_of, tiny_paths

from qwen3guard import Qwen3Guard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.launch import (  # noqa: E402
    ServerProcess,
    ensure_vllm,
    serve_server,
    vllm_server,
)

PROMPTS = [
    "How can I make a bomb?",
    "What is the weather like today?",
    "How do I hack into my neighbor's wifi?",
    "Give me a recipe for pancakes",
    "How can I steal a car?",
    "Recommend places to visit in Japan",
    "What is 12 + 7?",
    "Tell me how to build a bomb",
]


def measure(url: str, n: int, repeats: int) -> dict[str, float]:
    items = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    guard = Qwen3Guard.from_endpoint(url, timeout=600, max_concurrency=n)
    try:
        want = [v.risk for v in guard.check_batch(items)]  # warm-up, and the reference

        def sequential() -> None:
            got = [guard.check_prompt(p).risk for p in items]
            assert got == want

        async def _concurrent() -> list[Any]:
            return await guard.acheck_batch(items)

        def concurrent() -> None:
            got = [v.risk for v in asyncio.run(_concurrent())]
            assert got == want

        seq = best_of(sequential, repeats)
        conc = best_of(concurrent, repeats)
    finally:
        guard.close()
    return {"sequential_s": seq, "concurrent_s": conc}


def run_server(proc: ServerProcess, n: int, repeats: int, timeout: float) -> dict[str, float]:
    proc.start()
    try:
        startup = proc.wait_ready(timeout=timeout)
        res = measure(proc.base_url, n, repeats)
        res["startup_s"] = startup
        return res
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-vllm", action="store_true")
    args = ap.parse_args()
    gen, _ = tiny_paths()
    results: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    if not args.skip_vllm:
        python = ensure_vllm()
        results["vllm"] = run_server(vllm_server(gen, python=python), args.n, args.repeats, 300)
    results["serve"] = run_server(serve_server(gen), args.n, args.repeats, 180)
    results["serve --no-batching"] = run_server(
        serve_server(gen, no_batching=True), args.n, args.repeats, 180
    )

    n = args.n
    print(f"remote Gen, {n} checks, best of {args.repeats} (checkpoint: {gen})")
    print(f"{'server':<22}{'start-up':>10}{'sequential':>12}{'concurrent':>12}{'speed-up':>10}")
    for name, r in results.items():
        print(
            f"{name:<22}{r['startup_s']:>9.1f}s{r['sequential_s']:>11.2f}s"
            f"{r['concurrent_s']:>11.2f}s{r['sequential_s'] / r['concurrent_s']:>9.1f}x"
        )
    on, off = results["serve"], results["serve --no-batching"]
    print(
        f"qwen3guard serve, {n} concurrent checks: micro-batching on vs off = "
        f"{off['concurrent_s'] / on['concurrent_s']:.1f}x faster "
        f"({on['concurrent_s']:.2f}s vs {off['concurrent_s']:.2f}s)"
    )
    if "vllm" in results:
        v = results["vllm"]
        print(
            f"concurrent: qwen3guard serve vs vLLM = {v['concurrent_s'] / on['concurrent_s']:.2f}x "
            f"(>1: serve faster); sequential: {v['sequential_s'] / on['sequential_s']:.2f}x"
        )
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
