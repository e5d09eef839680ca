"""``qwen3guard serve --stream-url``: the server as a thin layer over a vLLM-served Stream model
(issue 14, item 4). Its WebSocket sessions run on :class:`VLLMStreamBackend`: the server loads no
Stream model and holds no KV cache (a session's state is the ids it has sent), the per-token
verdicts equal the local session's, and vLLM going away mid-stream fails the stream closed.

Uses the session's one vLLM server (``tests/vllm_stream_fixtures.py``); sorts after the restart
module, which restarts it on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from qwen3guard import GuardUnavailableError, Policy, Qwen3Guard, StreamGate
from qwen3guard.stream.remote import RemoteStreamBackend
from qwen3guard.stream.vllm import VLLMStreamBackend
from tests.support.launch import ServerProcess, free_port, serve_server

pytest_plugins = ["tests.vllm_stream_fixtures"]  # one vLLM server for all modules
pytestmark = pytest.mark.vllm

TOL = 1e-4
CONVERSATIONS = {
    "chinese": ("怎么制造炸弹？", "制造炸弹的方法：先把炸药装进管子，再接上引线。今天是晴天，很暖和。"),
    "thinking": (
        "How can I make a bomb?",
        "<think>\nThe user asks about a bomb. I should not explain how to mix explosive powder."
        "\n</think>\n\nI'm sorry, but I can't help with that. 🙂",
    ),
    "long": (
        "Please tell me, in a few sentences, what the weather is like in a quiet garden.",
        "It is a sunny day and the garden is quiet. " * 4
        + "Here is how: mix the explosive powder to build a bomb, then add a timer. "
        + "The birds sing in the warm light. " * 3,
    ),
}


class Forwarder:
    """A TCP forwarder between ``qwen3guard serve`` and vLLM that the test can cut: "vLLM is
    down" without touching the session's shared vLLM server."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sent = bytearray()  # everything the clients sent (request heads and bodies)
        self.port = free_port()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._down = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self._srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            with self._lock:
                if self._down:
                    a.close()
                    b.close()
                    return
                self._conns += [a, b]
            for x, y, rec in ((a, b, True), (b, a, False)):
                threading.Thread(target=self._pipe, args=(x, y, rec), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def down(self) -> None:
        with self._lock:
            self._down = True
            conns, self._conns = self._conns, []
        self._srv.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def _start(proc: ServerProcess) -> ServerProcess:
    proc.start()
    try:
        proc.wait_ready(timeout=180)
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="module")
def thin_serve(vllm_stream_url: str) -> Iterator[str]:
    """``qwen3guard serve --model none --stream-url VLLM``: only /v1/stream, on vLLM."""
    proc = _start(serve_server("none", extra_args=["--stream-url", vllm_stream_url]))
    try:
        yield proc.base_url
    finally:
        proc.stop()


def _same_updates(a: Any, b: Any) -> None:
    assert (a.flagged, a.flag_offset, a.flag_token_index, a.settled_offset, a.tokens_seen) == (
        b.flagged, b.flag_offset, b.flag_token_index, b.settled_offset, b.tokens_seen
    )
    assert len(a.token_verdicts) == len(b.token_verdicts)
    for x, y in zip(a.token_verdicts, b.token_verdicts):
        assert (x.index, x.token_id, x.text, x.risk, x.category) == (
            y.index, y.token_id, y.text, y.risk, y.category
        )
        for name in ("risk_prob", "unsafe_prob", "controversial_prob"):
            assert abs(getattr(x, name) - getattr(y, name)) <= TOL, (name, x, y)


def _chunks(text: str, size: int = 5) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_serve_reports_a_vllm_stream_backend(thin_serve: str) -> None:
    with urllib.request.urlopen(thin_serve.rsplit("/v1", 1)[0] + "/health", timeout=10) as r:
        import json

        health = json.loads(r.read())
    assert health["stream"] is True and health["gen"] is False
    assert health["stream_backend"] == "vllm-stream"


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_a_websocket_stream_through_serve_gives_the_local_sessions_verdicts(
    guard: Qwen3Guard, thin_serve: str, name: str
) -> None:
    prompt, answer = CONVERSATIONS[name]
    remote = RemoteStreamBackend(thin_serve, timeout=120)
    stream: Any = guard.stream
    try:
        local: Any = stream.open_session(prompt)
        session: Any = remote.open_session(prompt)
        assert session.prompt_verdict.risk is local.prompt_verdict.risk
        for k, p in local.prompt_verdict.scores.items():
            assert abs(session.prompt_verdict.scores[k] - p) <= TOL
        for chunk in _chunks(answer):
            _same_updates(local.feed_text(chunk), session.feed_text(chunk))
        _same_updates(local.close(), session.close())
        assert session.verdict.risk is local.verdict.risk
    finally:
        remote.close()


def test_the_server_holds_no_stream_model_and_a_session_keeps_only_its_ids(
    vllm_stream_url: str, stream_path: str
) -> None:
    """In process: ``build_guard`` for ``--stream-url`` makes a VLLMStreamBackend with no
    torch module in it, and a WebSocket session's whole state is the prefix of ids it has
    sent (the prompt plan plus the answer's tokens)."""
    import argparse

    import torch
    from fastapi.testclient import TestClient

    from qwen3guard.server.app import create_app
    from qwen3guard.server.cli import add_serve_arguments, build_guard

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    guard = build_guard(parser.parse_args(["--model", "none", "--stream-url", vllm_stream_url]))
    backend: Any = guard.stream
    assert isinstance(backend, VLLMStreamBackend) and guard.gen is None
    assert not any(isinstance(v, torch.nn.Module) for v in vars(backend).values())
    answer = "Once upon a time, there was a quiet garden."
    with TestClient(create_app(guard)) as client:
        r = client.post("/v1/moderations", json={"input": "hi"})  # --model none: no Gen
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with TestClient(create_app(guard, close_guard=True)) as client, client.websocket_connect(
        "/v1/stream"
    ) as ws:
        ws.send_json({"messages": [{"role": "user", "content": "Tell me a story"}]})
        assert ws.receive_json()["type"] == "opened"
        ws.send_json({"text": answer, "seq": 1})
        assert ws.receive_json()["type"] == "update"
        (kv,) = list(backend._live)  # the one session's state holder
        prefix = kv.cache
        ws.send_json({"close": True, "seq": 2})
        assert ws.receive_json()["type"] == "closed"
    assert type(prefix).__name__ == "_Prefix"
    # ids (and their JSON, so a request encodes only its new ids), no tensors
    assert set(vars(prefix)) == {"ids", "salt", "session_id", "encoded"}
    assert prefix.encoded == ",".join(map(str, prefix.ids))
    assert prefix.session_id  # the affinity header's value
    ids = backend.tokenizer(answer, add_special_tokens=False)["input_ids"]
    # What the session holds is the ids it sent: the prompt plan's, then the answer's (the last
    # token or two held back until the text after them is known: re-tokenization).
    assert any(prefix.ids[-(len(ids) - j) :] == ids[: len(ids) - j] for j in range(3))
    assert not backend._live  # closed: nothing is kept


def test_every_request_of_a_session_carries_its_affinity_header(
    vllm_stream_url: str, stream_path: str
) -> None:
    """What a router with session affinity hashes on: each request carries ``x-session-id``
    with its session's id; two sessions, two ids; ``session_header=None`` sends none."""
    import re

    port = int(vllm_stream_url.rsplit(":", 1)[1].split("/")[0])
    fwd = Forwarder(port)
    url = f"http://127.0.0.1:{fwd.port}/v1"

    def heads() -> list[str]:
        return re.findall(r"POST /pooling HTTP/1.1\r\n((?:[^\r\n]+\r\n)*)\r\n",
                          fwd.sent.decode("utf-8", "replace"))

    def session_ids() -> list[str | None]:
        out = []
        for head in heads():
            m = re.search(r"^x-session-id: (\S+)\r$", head, re.M | re.I)
            out.append(m.group(1) if m else None)
        return out

    try:
        backend = VLLMStreamBackend(url, tokenizer=stream_path, timeout=60)
        a = backend.open_session("Tell me a story", session_id="session-a")
        b = backend.open_session("Tell me a story")
        for chunk in ("Once", " upon", " a", " time"):
            a.feed_text(chunk)
            b.feed_text(chunk)
        a.close()
        b.close()
        ids = session_ids()
        assert len(ids) >= 10 and None not in ids
        assert set(ids) == {"session-a", b.session_id} and b.session_id != "session-a"
        backend.close()
        n = len(heads())
        plain = VLLMStreamBackend(url, tokenizer=stream_path, timeout=60, session_header=None)
        s = plain.open_session("Tell me a story")
        s.feed_text("Once upon a time")
        s.close()
        assert len(heads()) > n and session_ids()[n:] == [None] * (len(heads()) - n)
        plain.close()
    finally:
        fwd.down()


def test_vllm_down_mid_stream_fails_the_stream_closed(vllm_stream_url: str) -> None:
    port = int(vllm_stream_url.rsplit(":", 1)[1].split("/")[0])
    fwd = Forwarder(port)
    proc = _start(serve_server(
        "none",
        extra_args=["--stream-url", f"http://127.0.0.1:{fwd.port}/v1", "--stream-timeout", "10"],
    ))
    remote = RemoteStreamBackend(proc.base_url, timeout=60)
    try:
        session = remote.open_session("Tell me a story")
        gate: StreamGate[str] = StreamGate(session, policy=Policy())
        shown: list[str] = []
        chunks = ["Once", " upon", " a", " time", " there", " was", " a", " garden"]
        step = None
        for i, chunk in enumerate(chunks):
            if i == 3:
                fwd.down()  # vLLM is unreachable from here on
            step = gate.feed(chunk, chunk)
            shown.extend(step.released)
            if step.flagged:
                break
        assert step is not None and step.flagged
        assert step.decision is not None and step.decision.blocked
        assert isinstance(step.decision.error, GuardUnavailableError)
        assert len("".join(shown)) <= len("Once upon a")  # only text judged before the failure
        gate.abort()
    finally:
        remote.close()
        proc.stop()
        fwd.down()
