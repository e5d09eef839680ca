"""Scale-out recipe for Qwen3Guard-Stream on vLLM, run end to end on one machine: two vLLM
replicas of the Stream checkpoint behind vLLM's router (``vllm-router``, the Rust one on PyPI,
``--policy consistent_hash``: session affinity on the ``x-session-id`` header), sessions fed
token by token through the router, compared with the local session.

    scripts/ensure_router.sh                  # vllm-router in its own venv
    .venv/bin/python scripts/scale_out.py [--sessions 6] [--tokens 96] [--kv-gb 1]
        [--model DIR] [--router PATH] [--json OUT]

What it shows (printed, and written as JSON with ``--json``):

0. ``direct``: the same sessions straight to one replica (no router), the baseline.
1. ``affinity``: sessions one after another through the router with ``consistent_hash``. The
   per-replica request counters of vLLM's ``/metrics`` (``vllm:request_success_total``) are
   read before and after each session: every session's requests land on one replica. Every
   request after a session's first reads that replica's prefix cache (``num_cached_tokens``)
   and the per-token probabilities equal the local session's (max abs difference printed).
   The router's log names the hash key of every request (``header:x-session-id:ID``) and the
   worker it chose: each session id maps to one worker. Then all sessions at once
   (``concurrent``): total answer tokens per second.
2. ``round_robin``: the same sessions (another ``cache_salt``, so nothing is read from phase 1)
   through the router restarted with ``--policy round_robin``: requests alternate between the
   replicas, verdicts are the same; the cost per token is printed.
3. ``failover``: with affinity again, the replica a session is on is killed mid-stream; the
   router's next requests go to the other replica, which recomputes the prefix once, and the
   session ends with the same verdicts.

Each replica: ``VLLM_CPU_KVCACHE_SPACE=--kv-gb`` (GiB), block size 32, float32, eager, its
OpenMP threads pinned to its own half of the cores (``VLLM_CPU_OMP_THREADS_BIND``; vLLM's
"auto" binds every replica to all cores); its resident memory (the whole process group) is
printed after start-up and at the end.
Default model: the built-in tiny Stream checkpoint (``qwen3guard.tiny.ensure_built()``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the server launcher the tests use
from tests.support.launch import (  # noqa: E402
    ServerProcess,
    ensure_vllm,
    free_port,
    vllm_server,
)
from tests.vllm_stream_fixtures import install_plugin, stream_server_args  # noqa: E402

DEFAULT_ROUTER = Path.home() / ".cache" / "qwen3guard" / "router-venv" / "bin" / "vllm-router"
PROMPT = (
    "Please tell me, in a few sentences and without any lists, what the weather is usually "
    "like in a quiet garden during a sunny spring afternoon."
)
WORDS = ["sunny", "garden", "quiet", "bird", "flower", "light", "warm", "bomb", "explosive",
         "timer", "river", "stone", "mix", "the", "powder"]


# -- processes --------------------------------------------------------------------------------


def group_rss_mib(pid: int) -> float:
    """Resident memory of every process in ``pid``'s process group (vLLM forks its engine)."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp != pid:
                continue
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def router_process(router: str, workers: list[str], policy: str, log: Path) -> ServerProcess:
    port = free_port()
    argv = [
        router, "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *workers,
        "--policy", policy,
        # a dead replica leaves the ring quickly (failover phase)
        "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
        "--cb-failure-threshold", "1", "--request-timeout-secs", "120",
        "--log-level", "warning",
    ]
    return ServerProcess("vllm-router", argv, ready_url=f"http://127.0.0.1:{port}/v1/models",
                         log_path=str(log))


def metrics(url: str) -> dict[str, float]:
    """The counters this recipe reads from one replica's ``/metrics`` (summed over labels)."""
    root = url.rsplit("/v1", 1)[0]
    try:
        with urllib.request.urlopen(root + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name in ("vllm:request_success_total", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total"):
        pat = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.M)
        out[name.split(":", 1)[1]] = sum(float(v) for v in pat.findall(text))
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


# -- sessions ---------------------------------------------------------------------------------


def answers(tokenizer: Any, n_sessions: int, n_tokens: int) -> list[list[int]]:
    import random

    out = []
    for i in range(n_sessions):
        rng = random.Random(i)
        text = " ".join(rng.choice(WORDS) for _ in range(n_tokens * 2))
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens])
    return out


def reference(guard: Any, prompt: str, ids: list[int]) -> tuple[Any, Any]:
    s = guard.stream.open_session(prompt, record_logits=True)
    for t in ids:
        s.feed_ids([t])
    return s, s.close()


def compare(ref: tuple[Any, Any], got: tuple[Any, Any]) -> dict[str, Any]:
    import torch

    (local, lu), (remote, ru) = ref, got
    ids_l, risk_l, cat_l = local._logits_trace()
    ids_r, risk_r, cat_r = remote._logits_trace()
    same_ids = ids_l == ids_r
    diff = max(
        (torch.softmax(risk_r, -1) - torch.softmax(risk_l, -1)).abs().max().item(),
        (torch.softmax(cat_r, -1) - torch.softmax(cat_l, -1)).abs().max().item(),
    ) if same_ids else float("inf")
    return {
        "same_ids": same_ids,
        "max_prob_diff": diff,
        "flagged": bool(ru.flagged),
        "same_verdict": (ru.flagged, ru.flag_offset, ru.flag_token_index, remote.verdict.risk)
        == (lu.flagged, lu.flag_offset, lu.flag_token_index, local.verdict.risk),
    }


def run_session(
    backend: Any, prompt: str, ids: list[int], salt: str, on_token: Any = None
) -> tuple[Any, list[Any], float]:
    n0 = len(backend.requests)
    t0 = time.perf_counter()
    s = backend.open_session(prompt, record_logits=True, cache_salt=salt,
                             session_id=uuid.uuid4().hex)
    for i, t in enumerate(ids):
        if on_token is not None:
            on_token(i, s)
        s.feed_ids([t])
    u = s.close()
    return (s, u), list(backend.requests)[n0:], time.perf_counter() - t0


def phase(
    name: str, backend: Any, replicas: list[str], refs: list[Any], cases: list[list[int]],
) -> dict[str, Any]:
    salt = f"{name}-{uuid.uuid4().hex}"
    rows = []
    for i, ids in enumerate(cases):
        before = [metrics(u) for u in replicas]
        s, reqs, secs = run_session(backend, PROMPT, ids, salt)
        after = [metrics(u) for u in replicas]
        per = [delta(a, b) for a, b in zip(after, before)]
        row = {
            "session": i,
            "requests": len(reqs),
            "requests_per_replica": [int(d.get("request_success_total", 0)) for d in per],
            "prefix_hits_per_replica": [int(d.get("prefix_cache_hits_total", 0)) for d in per],
            "requests_reading_cache": sum(1 for r in reqs[1:] if r.num_cached_tokens > 0),
            "computed_per_request": sum(r.computed for r in reqs) / max(1, len(reqs)),
            "ms_per_token": 1000 * secs / len(ids),
            **compare(refs[i], s),
        }
        rows.append(row)
        print(f"  [{name}] session {i}: {row['requests']} requests, per replica "
              f"{row['requests_per_replica']}, cache hits per replica "
              f"{row['prefix_hits_per_replica']}, {row['computed_per_request']:.1f} tokens "
              f"computed/request, {row['ms_per_token']:.1f} ms/token, max prob diff "
              f"{row['max_prob_diff']:.2e}, same verdict {row['same_verdict']}", flush=True)
    return {
        "sessions": rows,
        "one_replica_per_session": all(
            sum(1 for n in r["requests_per_replica"] if n > 0) == 1 for r in rows
        ),
        "same_verdicts": all(r["same_verdict"] and r["same_ids"] for r in rows),
        "max_prob_diff": max(r["max_prob_diff"] for r in rows),
        "ms_per_token": sum(r["ms_per_token"] for r in rows) / len(rows),
        "computed_per_request": sum(r["computed_per_request"] for r in rows) / len(rows),
    }


def concurrent(
    name: str, backend: Any, replicas: list[str], refs: list[Any], cases: list[list[int]],
) -> dict[str, Any]:
    """All sessions at once (one thread each), token by token: total answer tokens per second."""
    from concurrent.futures import ThreadPoolExecutor

    salt = f"{name}-{uuid.uuid4().hex}"
    before = [metrics(u) for u in replicas]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(cases)) as pool:
        done = list(pool.map(lambda ids: run_session(backend, PROMPT, ids, salt), cases))
    secs = time.perf_counter() - t0
    per = [delta(metrics(u), b) for u, b in zip(replicas, before)]
    same = [compare(r, d[0]) for r, d in zip(refs, done)]
    out = {
        "sessions": len(cases),
        "tokens_per_s": sum(len(c) for c in cases) / secs,
        "requests_per_replica": [int(d.get("request_success_total", 0)) for d in per],
        "prefix_hits_per_replica": [int(d.get("prefix_cache_hits_total", 0)) for d in per],
        "same_verdicts": all(x["same_verdict"] and x["same_ids"] for x in same),
        "max_prob_diff": max(x["max_prob_diff"] for x in same),
    }
    print(f"  [{name}] {out}", flush=True)
    return out


def router_routes(log: Path) -> dict[str, set[str]]:
    """session id -> the workers the router sent its requests to (from the router's log:
    ``Consistent hash routing: key='header:x-session-id:ID' -> worker='URL'``)."""
    routes: dict[str, set[str]] = {}
    pat = re.compile(r"key='header:x-session-id:([0-9a-f]+)' -> worker='([^']+)'")
    for sid, worker in pat.findall(log.read_text(errors="replace")):
        routes.setdefault(sid, set()).add(worker)
    return routes


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=96, help="answer tokens per session")
    ap.add_argument("--kv-gb", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE per replica")
    ap.add_argument("--model", default=None, help="Stream checkpoint (default: the tiny one)")
    ap.add_argument("--router", default=str(DEFAULT_ROUTER), help="the vllm-router executable")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--no-bind", action="store_true",
                    help="do not pin each replica's OpenMP threads to its own core")
    args = ap.parse_args()

    from qwen3guard import Qwen3Guard
    from qwen3guard.stream.vllm import VLLMStreamBackend

    if not Path(args.router).exists() and not shutil.which(args.router):
        print(f"error: no vllm-router at {args.router}: run scripts/ensure_router.sh",
              file=sys.stderr)
        return 2
    model = args.model
    if model is None:
        from qwen3guard.tiny import ensure_built

        model = str(ensure_built() / "stream")
    tmp = Path(tempfile.mkdtemp(prefix="qwen3guard-scale-out-"))
    python = ensure_vllm()
    install_plugin(python, tmp)
    results: dict[str, Any] = {"model": model, "kv_gb_per_replica": args.kv_gb}
    replicas = [
        vllm_server(model, python=python, kv_cache_gb=args.kv_gb, max_model_len=2048,
                    extra_args=stream_server_args(), log_path=str(tmp / f"vllm-{i}.log"))
        for i in range(2)
    ]
    cores = os.cpu_count() or 1
    if not args.no_bind and cores >= 2:
        # vLLM's CPU worker binds its OpenMP threads to all cores by default ("auto"): two
        # replicas on one machine would fight over every core. One core (range) each instead.
        per = cores // 2
        for i, r in enumerate(replicas):
            r.env["VLLM_CPU_OMP_THREADS_BIND"] = f"{i * per}-{(i + 1) * per - 1}"
    results["omp_bind"] = [r.env.get("VLLM_CPU_OMP_THREADS_BIND", "auto") for r in replicas]
    router: ServerProcess | None = None
    try:
        t0 = time.perf_counter()
        for r in replicas:
            r.cwd = "/"  # a folder named like the plugin package would shadow it
            r.start()
        for r in replicas:
            r.wait_ready(timeout=900)
        results["replicas_ready_s"] = time.perf_counter() - t0
        urls = [r.base_url for r in replicas]
        results["replica_rss_mib_at_start"] = [round(group_rss_mib(r.proc.pid)) for r in replicas]  # type: ignore[union-attr]
        print(f"replicas {urls} ready in {results['replicas_ready_s']:.0f}s; RSS (MiB) "
              f"{results['replica_rss_mib_at_start']}", flush=True)

        guard = Qwen3Guard.from_pretrained(None, stream_model=model, dtype="float32")
        tok = guard.stream.tokenizer  # type: ignore[union-attr]
        cases = answers(tok, args.sessions, args.tokens)
        refs = [reference(guard, PROMPT, ids) for ids in cases]
        workers = [u.rsplit("/v1", 1)[0] for u in urls]

        # Baseline: the same sessions straight to one replica, no router.
        backend = VLLMStreamBackend(urls[0], model, tokenizer=model, timeout=120)
        print("direct to replica 0 (no router)", flush=True)
        results["direct"] = phase("direct", backend, urls, refs, cases)
        backend.close()

        for policy in ("consistent_hash", "round_robin"):
            log = tmp / f"router-{policy}.log"
            router = router_process(args.router, workers, policy, log)
            router.start()
            router.wait_ready(timeout=120)
            backend = VLLMStreamBackend(router.base_url, model, tokenizer=model, timeout=120)
            print(f"router --policy {policy} at {router.base_url}", flush=True)
            key = "affinity" if policy == "consistent_hash" else "round_robin"
            results[key] = phase(key, backend, urls, refs, cases)
            results[key]["concurrent"] = concurrent(f"{key} concurrent", backend, urls, refs,
                                                    cases)
            backend.close()
            router.stop()
            router = None
            if policy == "consistent_hash":
                routes = router_routes(log)
                results[key]["router_log"] = {
                    "sessions": len(routes),
                    "sessions_on_one_worker": sum(1 for w in routes.values() if len(w) == 1),
                    "sessions_per_worker": {
                        w: sum(1 for ws in routes.values() if ws == {w}) for w in workers
                    },
                }
                print(f"  [router log] {results[key]['router_log']}", flush=True)

        # Failover: the replica a session is on dies mid-stream.
        router = router_process(args.router, workers, "consistent_hash", tmp / "router-fo.log")
        router.start()
        router.wait_ready(timeout=120)
        backend = VLLMStreamBackend(router.base_url, model, tokenizer=model, timeout=120,
                                    max_retries=6)
        killed: dict[str, Any] = {}
        before = [metrics(u) for u in urls]

        def kill_mid_stream(i: int, session: Any) -> None:
            if i != len(cases[0]) // 2:
                return
            now = [delta(metrics(u), b) for u, b in zip(urls, before)]
            on = max(range(2), key=lambda k: now[k].get("request_success_total", 0))
            killed.update(replica=on, at_token=i,
                          requests_before=[int(d.get("request_success_total", 0)) for d in now])
            replicas[on].kill()

        s, reqs, secs = run_session(backend, PROMPT, cases[0], f"fo-{uuid.uuid4().hex}",
                                    kill_mid_stream)
        other = 1 - killed["replica"]
        after_other = delta(metrics(urls[other]), before[other])
        first_after = reqs[killed["at_token"] + 1] if len(reqs) > killed["at_token"] + 1 else None
        results["failover"] = {
            **killed,
            "requests": len(reqs),
            "requests_on_survivor": int(after_other.get("request_success_total", 0)),
            "first_request_after_kill": None if first_after is None else {
                "num_tokens": first_after.num_tokens,
                "num_cached_tokens": first_after.num_cached_tokens,
            },
            "ms_per_token": 1000 * secs / len(cases[0]),
            **compare(refs[0], s),
        }
        print(f"  [failover] {results['failover']}", flush=True)
        backend.close()
        results["replica_rss_mib_at_end"] = [
            round(group_rss_mib(r.proc.pid)) if r.alive() else None for r in replicas  # type: ignore[union-attr]
        ]
        guard.close()
    finally:
        if router is not None:
            router.stop()
        for r in replicas:
            r.stop()
    a, rr, fo = results["affinity"], results["round_robin"], results["failover"]
    d = results["direct"]
    print("\nsummary:")
    print(f"  direct (no router): {d['ms_per_token']:.1f} ms/token, "
          f"{d['computed_per_request']:.1f} computed/request")
    print(f"  affinity: one replica per session {a['one_replica_per_session']}, same verdicts "
          f"{a['same_verdicts']} (max prob diff {a['max_prob_diff']:.1e}), "
          f"{a['ms_per_token']:.1f} ms/token, {a['computed_per_request']:.1f} computed/request")
    print(f"  round robin: one replica per session {rr['one_replica_per_session']}, same "
          f"verdicts {rr['same_verdicts']} (max prob diff {rr['max_prob_diff']:.1e}), "
          f"{rr['ms_per_token']:.1f} ms/token, {rr['computed_per_request']:.1f} computed/request")
    print(f"  failover: same verdict {fo['same_verdict']} (max prob diff "
          f"{fo['max_prob_diff']:.1e}), first request after the kill computed "
          f"{fo['first_request_after_kill']}")
    print(f"  concurrent ({args.sessions} sessions): affinity "
          f"{a['concurrent']['tokens_per_s']:.1f} tokens/s (requests per replica "
          f"{a['concurrent']['requests_per_replica']}), round robin "
          f"{rr['concurrent']['tokens_per_s']:.1f} tokens/s; same verdicts "
          f"{a['concurrent']['same_verdicts'] and rr['concurrent']['same_verdicts']}")
    print(f"  replica RSS (MiB): start {results['replica_rss_mib_at_start']}, end "
          f"{results['replica_rss_mib_at_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    ok = a["same_verdicts"] and rr["same_verdicts"] and fo["same_verdict"] and fo["same_ids"]
    ok = ok and a["one_replica_per_session"] and d["same_verdicts"]
    ok = ok and a["concurrent"]["same_verdicts"] and rr["concurrent"]["same_verdicts"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
