"""Roll back a remote (``qwen3guard serve``) stream session (issue 13): the same per-token
verdicts as a fresh remote session fed the kept prefix, ``end()`` keeps the socket, the
intervention loop works over a remote guard, and the server checks what it is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from qwen3guard import InvalidInputError, Qwen3Guard
from qwen3guard.stream.intervene import Intervention, aintervene, intervene
from qwen3guard.stream.remote import (
    AsyncRemoteStreamSession,
    RemoteStreamBackend,
    RemoteStreamSession,
)
from tests.test_stream_intervene import PROMPT, REPAIR, SAFE, UNSAFE, ScriptedLLM, words

ANSWER = SAFE + UNSAFE + REPAIR
OFFSETS = {"sentence": len(SAFE), "mid-word": len(SAFE) + 9, "zero": 0, "all": len(ANSWER)}
TOL = 1e-4


@pytest.fixture(scope="module")
def remote(serve_url: str) -> Iterator[Qwen3Guard]:
    guard = Qwen3Guard.from_endpoint(serve_url, stream=True, timeout=60)
    assert isinstance(guard.stream, RemoteStreamBackend)
    yield guard
    guard.close()


def _tokens(updates: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            t.index,
            t.token_id,
            t.text,
            t.risk,
            t.category,
            t.risk_prob,
            t.unsafe_prob,
            t.controversial_prob,
        )
        for u in updates
        for t in u.token_verdicts
    ]


def _assert_same_tokens(got: list[Any], want: list[Any]) -> float:
    g, w = _tokens(got), _tokens(want)
    assert [t[:5] for t in g] == [t[:5] for t in w]
    worst = max(
        (abs(a - b) for x, y in zip(g, w, strict=True) for a, b in zip(x[5:], y[5:], strict=True)),
        default=0.0,
    )
    assert worst <= TOL
    return worst


def _summary(u: Any) -> tuple[Any, ...]:
    return (
        u.flagged,
        u.verdict.risk if u.verdict else None,
        u.flag_offset,
        u.tokens_seen,
        u.settled_offset,
    )


@pytest.mark.parametrize("offset_in", list(OFFSETS))
def test_a_rolled_back_remote_session_equals_a_fresh_one(
    remote: Qwen3Guard, offset_in: str
) -> None:
    offset = OFFSETS[offset_in]
    rolled = remote.open_stream(PROMPT)
    assert isinstance(rolled, RemoteStreamSession)
    for w in words(ANSWER):
        rolled.feed_text(w)
    assert rolled.flagged
    ru = rolled.rollback(offset)
    fresh = remote.open_stream(PROMPT)
    fu = [fresh.feed_text(ANSWER[:offset])] if offset else []
    assert rolled.response_text == fresh.response_text == ANSWER[:offset]
    assert rolled.flagged == fresh.flagged
    assert rolled.tokens_seen == fresh.tokens_seen
    if fu:
        assert _summary(ru) == _summary(fu[0])
    rolled_updates = [ru] + [rolled.feed_text(w) for w in words(REPAIR)]
    fresh_updates = fu + [fresh.feed_text(w) for w in words(REPAIR)]
    fr, fc = rolled.close(), fresh.close()
    rolled_updates.append(fr)
    fresh_updates.append(fc)
    worst = _assert_same_tokens(rolled_updates, fresh_updates)
    print(f"remote rollback({offset}): {len(_tokens(rolled_updates))} tokens, max |dp| {worst:.2e}")
    assert _summary(fr) == _summary(fc)
    assert rolled.response_text == fresh.response_text == ANSWER[:offset] + REPAIR


@pytest.mark.parametrize("offset_in", ["sentence", "mid-word"])
async def test_async_remote_rollback_equals_a_fresh_session(
    remote: Qwen3Guard, offset_in: str
) -> None:
    offset = OFFSETS[offset_in]
    rolled = await remote.aopen_stream(PROMPT)
    assert isinstance(rolled, AsyncRemoteStreamSession)
    for w in words(ANSWER):
        await rolled.afeed_text(w)
    assert rolled.flagged
    ru = await rolled.arollback(offset)
    assert not ru.flagged and not rolled.flagged
    fresh = await remote.aopen_stream(PROMPT)
    fu = await fresh.afeed_text(ANSWER[:offset])
    assert _summary(ru) == _summary(fu)
    assert (rolled.tokens_seen, rolled.flagged) == (fresh.tokens_seen, fresh.flagged)
    rolled_updates = [ru] + [await rolled.afeed_text(w) for w in words(REPAIR)]
    fresh_updates = [fu] + [await fresh.afeed_text(w) for w in words(REPAIR)]
    rolled_updates.append(await rolled.aclose())
    fresh_updates.append(await fresh.aclose())
    worst = _assert_same_tokens(rolled_updates, fresh_updates)
    print(f"remote rollback({offset}): {len(_tokens(rolled_updates))} tokens, max |dp| {worst:.2e}")
    assert rolled.response_text == fresh.response_text == ANSWER[:offset] + REPAIR


def test_remote_end_keeps_the_session_for_a_rollback(remote: Qwen3Guard) -> None:
    s = remote.open_stream(PROMPT)
    s.feed_text("Here is how to make a bomb")
    ended = s.end()
    assert ended.flagged and not s.closed
    assert s.end() is ended  # idempotent
    with pytest.raises(InvalidInputError):
        s.feed_text(" more")  # ended: roll back first (refused before it is sent)
    with pytest.raises(InvalidInputError):
        s.rollback(10_000)
    u = s.rollback(0)
    assert not u.flagged and s.response_text == "" and s.tokens_seen == 0
    s.feed_text("It is sunny.")
    final = s.close()
    assert not final.flagged and s.closed


async def test_async_remote_end_then_rollback(remote: Qwen3Guard) -> None:
    s = await remote.aopen_stream(PROMPT)
    for w in words(SAFE + UNSAFE):
        await s.afeed_text(w)
    ended = await s.aend()
    assert ended.flagged and not s.closed
    with pytest.raises(InvalidInputError):
        await s.afeed_text(" more")
    u = await s.arollback(len(SAFE))
    assert not u.flagged and s.response_text == SAFE
    for w in words(REPAIR):
        await s.afeed_text(w)
    assert not (await s.aclose()).flagged


async def test_async_session_sync_rollback_from_a_thread(remote: Qwen3Guard) -> None:
    s = await remote.aopen_stream(PROMPT)
    await s.afeed_text(SAFE + UNSAFE)
    assert s.flagged
    u = await asyncio.to_thread(s.rollback, len(SAFE))
    assert not u.flagged and s.response_text == SAFE
    await s.aclose()


# -- the intervention loop over a remote guard ---------------------------------------------------


def test_intervene_over_a_remote_guard_gives_one_clean_answer(remote: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE + "More words follow here. ", REPAIR])
    record = Intervention()
    shown = "".join(intervene(remote, PROMPT, llm.stream(0), llm.regenerate, record=record))
    assert shown == SAFE + REPAIR
    assert "bomb" not in shown and record.retries == 1 and not record.refused
    assert llm.calls[0][0] == SAFE
    assert record.attempts[0].flagged and not record.attempts[1].flagged


async def test_async_intervene_over_a_remote_guard(remote: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE + "More words follow here. ", REPAIR])
    record = Intervention()
    shown = ""
    async for text in aintervene(remote, PROMPT, llm.astream(0), llm.aregenerate, record=record):
        shown += text
    assert shown == SAFE + REPAIR and record.retries == 1 and llm.closed[0]


# -- the server checks a rollback request ----------------------------------------------------------


def _raw(serve_url: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from websockets.sync.client import connect

    from qwen3guard.stream.remote import stream_url

    out = []
    with connect(stream_url(serve_url)) as ws:
        ws.send(json.dumps({"messages": PROMPT}))
        out.append(json.loads(ws.recv(timeout=60)))
        for r in requests:
            ws.send(json.dumps(r))
            out.append(json.loads(ws.recv(timeout=60)))
            if out[-1]["type"] == "error":
                break
    return out


@pytest.mark.parametrize("bad", [999, -1, True, "3", None])
def test_server_refuses_a_bad_rollback_offset(serve_url: str, bad: Any) -> None:
    answers = _raw(serve_url, [{"seq": 1, "text": "Hello there."}, {"seq": 2, "rollback": bad}])
    assert answers[1]["type"] == "update"
    assert answers[2]["type"] == "error" and answers[2]["seq"] == 2
    assert answers[2]["error"]["type"] == "InvalidInputError"


def test_server_rollback_answer_carries_the_kept_length(serve_url: str) -> None:
    answers = _raw(
        serve_url,
        [
            {"seq": 1, "text": "Hello there. And more."},
            {"seq": 2, "rollback": 6},
            {"seq": 3, "end": True},
            {"seq": 4, "rollback": 0},
            {"seq": 5, "close": True},
        ],
    )
    assert [a["type"] for a in answers] == [
        "opened",
        "update",
        "update",
        "update",
        "update",
        "closed",
    ]
    assert answers[2]["session"]["text_len"] == 6 and answers[2]["session"]["text_delta"] == ""
    assert answers[4]["session"]["text_len"] == 0


# -- the server's answer caps with rollbacks (in process) ----------------------------------------


def _ws_steps(guard: Qwen3Guard, requests: list[dict[str, Any]], **limits: Any) -> list[Any]:
    from fastapi.testclient import TestClient

    from qwen3guard.server import create_app

    out: list[Any] = []
    with TestClient(create_app(guard, **limits)) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"messages": PROMPT}))
        out.append(ws.receive_json())
        for r in requests:
            ws.send_text(json.dumps(r))
            out.append(ws.receive_json())
            if out[-1]["type"] == "error":
                break
    return out


def test_the_answer_cap_counts_from_the_kept_prefix(guard: Qwen3Guard) -> None:
    chunk = "It is sunny and warm today ok."  # 30 characters; two would pass the cap of 40
    answers = _ws_steps(
        guard,
        [{"seq": 1, "text": chunk}, {"seq": 2, "rollback": 5}, {"seq": 3, "text": chunk}],
        max_stream_answer_chars=40,
    )
    assert [a["type"] for a in answers] == ["opened", "update", "update", "update"]
    assert answers[3]["session"]["text_len"] == 5 + len(chunk)


def test_rollbacks_count_as_work(guard: Qwen3Guard) -> None:
    from qwen3guard.server.ws import WORK_FACTOR

    chunk = "It is sunny and warm today ok."
    cap = 40
    rollbacks = [{"seq": 2 + i, "rollback": len(chunk)} for i in range(WORK_FACTOR * 2)]
    answers = _ws_steps(guard, [{"seq": 1, "text": chunk}, *rollbacks], max_stream_answer_chars=cap)
    last = answers[-1]
    assert last["type"] == "error" and last["error"]["code"] == "work_too_large"
    judged = len(chunk) * (len(answers) - 2)  # the feed and each rollback that was answered
    assert judged <= WORK_FACTOR * cap < judged + len(chunk)
