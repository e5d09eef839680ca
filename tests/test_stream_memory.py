"""Sessions free their KV cache: closed, through exceptions, or just dropped."""

from __future__ import annotations

import gc
import re

import pytest

from qwen3guard import Qwen3Guard
from qwen3guard.stream.local import LocalStreamBackend

N_SESSIONS = 2000
MAX_GROWTH_MB = 50.0


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert m is not None
    return int(m.group(1)) / 1024


def _cycle(guard: Qwen3Guard, k: int, ids: list[int]) -> None:
    kind = k % 4
    if kind == 0:  # closed explicitly
        s = guard.open_stream("What is the weather like today?")
        s.feed_ids(ids)
        s.feed_text(" and warm")
        s.close()
    elif kind == 1:  # context manager
        with guard.open_stream("What is the weather like today?") as s:
            s.feed_text("It is sunny and warm today.")
    elif kind == 2:  # the caller's code raises inside the with block
        try:
            with guard.open_stream("How can I make a bomb?") as s:
                s.feed_ids(ids)
                raise KeyError("caller failed")
        except KeyError:
            pass
    else:  # never closed: garbage collection frees it
        s = guard.open_stream("What is the weather like today?")
        s.feed_ids(ids)
        del s


@pytest.fixture
def one_thread():
    """Small forwards on a shared machine: intra-op threads only add synchronisation cost
    (20x slower per op under load). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(900)
def test_2000_sessions_leave_memory_flat(guard: Qwen3Guard, one_thread: None) -> None:
    backend: LocalStreamBackend = guard.stream
    ids = backend.tokenizer("It is sunny and warm today.", add_special_tokens=False)["input_ids"]
    for k in range(200):  # warm-up: allocator pools, caches, lazy imports
        _cycle(guard, k, ids)
    gc.collect()
    before = rss_mb()
    active_before = backend.active_sessions
    for k in range(N_SESSIONS):
        _cycle(guard, k, ids)
    gc.collect()
    after = rss_mb()
    growth = after - before
    print(
        f"\nRSS after warm-up {before:.1f} MB, after {N_SESSIONS} sessions {after:.1f} MB, "
        f"growth {growth:+.1f} MB"
    )
    assert backend.active_sessions == active_before == 0
    assert growth < MAX_GROWTH_MB, f"RSS grew by {growth:.1f} MB over {N_SESSIONS} sessions"


def test_a_dropped_session_is_released_by_the_garbage_collector(guard: Qwen3Guard) -> None:
    import weakref

    backend: LocalStreamBackend = guard.stream
    s = guard.open_stream("hello")
    s.feed_text("It is sunny and warm today.")
    kv = s._kv
    assert kv.cache is not None and backend.active_sessions >= 1
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None
    assert kv.cache is None and backend.active_sessions == 0
