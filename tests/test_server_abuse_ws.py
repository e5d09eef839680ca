"""``/v1/stream`` under abuse (issue 10): idle and half-open clients cannot hold every slot, a
full server says so with 503 + Retry-After, trivial messages do not keep a session alive, one
streamed answer has bounded size, and browsers from other origins are refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from qwen3guard import GuardUnavailableError, Qwen3Guard
from qwen3guard.server import create_app
from qwen3guard.stream.remote import stream_url
from tests.remote_fixtures import ABUSE_IDLE_S, ABUSE_MAX_SESSIONS

HELLO = {"messages": [{"role": "user", "content": "Tell me a story"}]}


# -- in process ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(guard: Qwen3Guard) -> Iterator[TestClient]:
    app = create_app(
        guard,
        max_stream_chunk_chars=2000,
        max_stream_answer_chars=5000,
        stream_idle_timeout_s=1.5,
        allowed_origins=("https://app.example",),
    )
    with TestClient(app) as c:
        yield c


def _open(c: TestClient, headers: dict[str, str] | None = None) -> Any:
    ws = c.websocket_connect("/v1/stream", headers=dict(headers or {}))
    return ws


def test_one_oversized_chunk_is_refused_with_a_reason(client: TestClient) -> None:
    with _open(client) as ws:
        ws.send_json(HELLO)
        assert ws.receive_json()["type"] == "opened"
        ws.send_json({"seq": 1, "text": "word " * 1000})  # 5000 chars, over 2000
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["seq"] == 1
        assert msg["error"]["code"] == "chunk_too_large"
        assert "2000" in msg["error"]["message"]


def test_the_whole_answer_is_bounded(client: TestClient) -> None:
    with _open(client) as ws:
        ws.send_json(HELLO)
        ws.receive_json()
        seq = 0
        while True:
            seq += 1
            ws.send_json({"seq": seq, "text": "It is sunny and warm. " * 80})  # 1760 chars
            msg = ws.receive_json()
            if msg["type"] == "error":
                break
            assert seq < 10
        assert msg["error"]["code"] == "answer_too_large" and "5000" in msg["error"]["message"]
        assert seq == 3  # 3 x 1760 > 5000


def test_trivial_messages_do_not_keep_a_session_alive(client: TestClient) -> None:
    with _open(client) as ws:
        ws.send_json(HELLO)
        ws.receive_json()
        t0 = time.monotonic()
        seq = 0
        msg: dict[str, Any] = {}
        while time.monotonic() - t0 < 10:
            seq += 1
            ws.send_json({"seq": seq, "text": ""})  # nothing to judge: not activity
            msg = ws.receive_json()
            if msg["type"] == "error":
                break
            time.sleep(0.3)
        assert msg.get("type") == "error", "the session outlived its idle timeout"
        assert msg["error"]["code"] == "idle_timeout"
        assert time.monotonic() - t0 < 4


def test_cross_origin_browser_opens_are_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as info:
        _open(client, {"origin": "https://evil.example"}).__enter__()
    assert info.value.status_code == 403
    assert "origin" in info.value.json()["error"]["message"].lower()
    for ok in ({"origin": "https://app.example"}, None):  # allowed, or not a browser
        with _open(client, ok) as ws:
            ws.send_json(HELLO)
            assert ws.receive_json()["type"] == "opened"


def test_same_origin_page_is_allowed(guard: Qwen3Guard) -> None:
    with TestClient(create_app(guard)) as c:  # TestClient's host is "testserver"
        with c.websocket_connect("/v1/stream", headers={"origin": "http://testserver"}) as ws:
            ws.send_json(HELLO)
            assert ws.receive_json()["type"] == "opened"
        with pytest.raises((WebSocketDenialResponse, WebSocketDisconnect)):
            c.websocket_connect("/v1/stream", headers={"origin": "http://other"}).__enter__()


# -- a real server: 200 idle clients -----------------------------------------------------------


@pytest.mark.timeout(300)
def test_200_idle_clients_cannot_lock_out_a_new_one(serve_abuse_url: str) -> None:
    """200 clients open a WebSocket and say nothing. The server keeps at most its session cap of
    them, answers the rest 503 with Retry-After, and drops the idle ones after the idle timeout:
    a new client gets a session, or a 503 with Retry-After, and a session once they are gone."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    url = stream_url(serve_abuse_url)

    async def run() -> dict[str, Any]:
        held: list[Any] = []
        refused: list[tuple[int, str | None]] = []
        for _ in range(200):  # bounded, on loopback only
            try:
                held.append(await connect(url, open_timeout=10))
            except InvalidStatus as exc:
                refused.append((exc.response.status_code, exc.response.headers.get("Retry-After")))
        newcomer: Any
        try:
            ws = await connect(url, open_timeout=10)
            await ws.send(json.dumps(HELLO))
            newcomer = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
            await ws.close()
        except InvalidStatus as exc:
            newcomer = (exc.response.status_code, exc.response.headers.get("Retry-After"))
        await asyncio.sleep(ABUSE_IDLE_S + 2)  # the idle ones time out
        async with connect(url, open_timeout=10) as ws:
            await ws.send(json.dumps(HELLO))
            later = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
        dropped = 0
        for ws in held:  # each was told why, then closed
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                dropped += msg["error"]["code"] == "idle_timeout"
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed:
                pass
            await ws.close()
        return {
            "held": len(held),
            "refused": refused,
            "newcomer": newcomer,
            "later": later,
            "dropped": dropped,
        }

    out = asyncio.run(run())
    print(
        f"\nheld {out['held']}, refused {len(out['refused'])} (first {out['refused'][:1]}), "
        f"newcomer {out['newcomer']}, after the idle timeout {out['later']}"
    )
    assert out["held"] <= ABUSE_MAX_SESSIONS
    assert len(out["refused"]) == 200 - out["held"]
    assert all(status == 503 and after and int(after) >= 1 for status, after in out["refused"])
    newcomer = out["newcomer"]
    assert newcomer == "opened" or (newcomer[0] == 503 and int(newcomer[1]) >= 1), newcomer
    assert out["later"] == "opened"
    assert out["dropped"] == out["held"]


def test_remote_client_sees_a_full_server_as_unavailable(serve_abuse_url: str) -> None:
    from websockets.sync.client import connect

    url = stream_url(serve_abuse_url)
    held = []
    try:
        for _ in range(ABUSE_MAX_SESSIONS):
            held.append(connect(url, open_timeout=10))
        remote = Qwen3Guard.from_endpoint(serve_abuse_url, stream=True, timeout=30)
        with pytest.raises(GuardUnavailableError, match="503"):
            remote.open_stream("hello")
        remote.close()
    finally:
        for ws in held:
            ws.close()
