"""Qwen3Guard-Stream on vLLM, restarted mid-stream (issue 14): the cache is gone, the session
goes on with the same verdicts (its next request carries the whole prefix and recomputes it
once), and later requests read the new server's cache again. The same holds for a request
that lands on another replica: any server can answer any request.

Restarts the session's shared server once (``tests/vllm_stream_fixtures.py``); this module
sorts after ``test_vllm_stream.py`` so the other tests do not wait for it.
"""

from __future__ import annotations

import pytest

from qwen3guard import Qwen3Guard
from qwen3guard.stream.vllm import VLLMStreamBackend
from tests import vllm_stream_fixtures as fx

pytest_plugins = ["tests.vllm_stream_fixtures"]  # one server for all modules

pytestmark = pytest.mark.vllm

PROMPT = (
    "Please tell me, in a few sentences and without any lists, what the weather is usually "
    "like in a quiet garden during a sunny spring afternoon."
)
ANSWER = (
    "It is a sunny day and the garden is quiet. " * 6
    + "Here is how: mix the explosive powder to build a bomb, then add a timer. "
    + "The birds sing in the warm light. " * 4
)


def test_a_restart_mid_stream_keeps_the_verdicts(
    guard: Qwen3Guard, vllm_stream: fx.StreamServer, stream_path: str
) -> None:
    import torch

    backend = VLLMStreamBackend(vllm_stream.base_url, tokenizer=stream_path, timeout=120)
    local = guard.stream.open_session(PROMPT, record_logits=True)
    remote = backend.open_session(PROMPT, record_logits=True)
    chunks = [ANSWER[k : k + 7] for k in range(0, len(ANSWER), 7)]
    half = len(chunks) // 3  # before the unsafe sentence
    for c in chunks[:half]:
        a, b = local.feed_text(c), remote.feed_text(c)
        assert (a.flagged, a.settled_offset) == (b.flagged, b.settled_offset)
    assert not remote.flagged

    vllm_stream.restart()  # the prefix cache is gone
    n0 = len(backend.requests)
    for c in chunks[half:]:
        a, b = local.feed_text(c), remote.feed_text(c)
        assert (a.flagged, a.flag_offset, a.settled_offset, a.tokens_seen) == (
            b.flagged, b.flag_offset, b.settled_offset, b.tokens_seen
        )
    a, b = local.close(), remote.close()
    assert (a.flagged, a.flag_offset, a.verdict.risk) == (b.flagged, b.flag_offset, b.verdict.risk)
    assert b.flagged  # the unsafe sentence after the restart was caught

    after = list(backend.requests)[n0:]
    first = after[0]
    assert first.computed > first.num_tokens - first.wanted_from + fx.BLOCK_SIZE  # recomputed
    assert all(r.num_cached_tokens > 0 for r in after[1:])  # then read the new cache again
    ids_l, risk_l, cat_l = local._logits_trace()
    ids_v, risk_v, cat_v = remote._logits_trace()
    assert ids_l == ids_v
    assert (torch.softmax(risk_v, -1) - torch.softmax(risk_l, -1)).abs().max() <= 1e-4
    assert (torch.softmax(cat_v, -1) - torch.softmax(cat_l, -1)).abs().max() <= 1e-4
    backend.close()
