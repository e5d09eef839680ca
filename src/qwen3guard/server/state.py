"""What the routes and the WebSocket handler of one app share: the guard, the limits, the
metrics, the stream-session slots, and the API-key check."""

from __future__ import annotations

import hmac
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics


@dataclass(frozen=True)
class Limits:
    """Cost and abuse limits of one server (see :func:`qwen3guard.server.app.create_app`)."""

    max_request_bytes: int = 1_000_000
    max_inputs: int = 256
    max_messages: int = 256
    max_request_tokens: int = 65_536
    max_stream_sessions: int = 64
    stream_idle_timeout_s: float = 30.0
    stream_max_session_s: float = 600.0
    max_stream_chunk_chars: int = 8_192
    max_stream_answer_chars: int = 262_144
    allowed_origins: tuple[str, ...] = ()
    public_metrics: bool = False
    public_openapi: bool = False

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_inputs", "max_messages", "max_request_tokens",
                     "max_stream_sessions", "max_stream_chunk_chars", "max_stream_answer_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.stream_idle_timeout_s <= 0 or self.stream_max_session_s <= 0:
            raise ValueError("stream timeouts must be positive")


class StreamSlots:
    """At most ``limit`` WebSocket sessions, counted from the upgrade (a client that opens a
    socket and says nothing holds a slot until its idle timeout). Each slot knows when it ends
    at the latest, so a full server can say when to retry."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._deadlines: dict[int, float] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._deadlines)

    def acquire(self, deadline: float) -> int | None:
        if len(self._deadlines) >= self.limit:
            return None
        self._next += 1
        self._deadlines[self._next] = deadline
        return self._next

    def update(self, slot: int, deadline: float) -> None:
        if slot in self._deadlines:
            self._deadlines[slot] = deadline

    def release(self, slot: int) -> None:
        self._deadlines.pop(slot, None)

    def retry_after(self) -> int:
        """Whole seconds until the first slot is free at the latest (at least 1)."""
        soonest = min(self._deadlines.values(), default=time.monotonic())
        return max(1, math.ceil(soonest - time.monotonic()))


@dataclass
class ServerState:
    guard: Any
    limits: Limits
    model_name: str
    api_key: str | None
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))
    slots: StreamSlots = field(init=False)
    # Judging runs here, off the event loop: parsing and windowing a large request takes a while
    # and must not stall the other requests.
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(64, thread_name_prefix="qwen3guard-serve")
    )

    def __post_init__(self) -> None:
        self.slots = StreamSlots(self.limits.max_stream_sessions)

    def authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.api_key.encode())
