"""Prometheus metrics of one server app (own registry, so several apps can live in a process)."""

from __future__ import annotations

from typing import Any


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qwen3guard_requests", "HTTP and WebSocket requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "qwen3guard_request_seconds",
            "Request latency",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.in_flight = Gauge("qwen3guard_requests_in_flight", "Requests being served", registry=r)
        self.batch_size = Histogram(
            "qwen3guard_gen_batch_size",
            "Conversations per Gen forward batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.verdicts = Counter(
            "qwen3guard_verdicts", "Verdicts returned", ["endpoint", "risk"], registry=r
        )
        self.stream_sessions = Gauge(
            "qwen3guard_stream_sessions_active", "Open streaming-moderation sessions", registry=r
        )
        self.stream_tokens = Counter(
            "qwen3guard_stream_tokens", "Response tokens judged by stream sessions", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_batches(self, gen: Any) -> None:
        """Count the Gen backend's forward batch sizes, when it runs a micro-batcher.

        Wraps the batcher's batch function in place; the batcher's worker thread looks it up
        for every batch.
        """
        batcher = getattr(gen, "_batcher", None)
        run = getattr(batcher, "_run_batch", None)
        if run is None:
            return
        hist = self.batch_size

        def observed(items: list[Any]) -> Any:
            hist.observe(len(items))
            return run(items)

        batcher._run_batch = observed  # type: ignore[union-attr]
