"""Streaming moderation over the ``/v1/stream`` WebSocket: the remote session gives what a local
session gives, and every transport fault fails closed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qwen3guard import (
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    RiskLevel,
    SurfaceRule,
)
from qwen3guard.stream.remote import (
    AsyncRemoteStreamSession,
    RemoteStreamBackend,
    RemoteStreamSession,
    stream_url,
)
from qwen3guard.stream.wire import options_from_wire, options_to_wire
from tests.support.launch import free_port

PROMPT = [{"role": "user", "content": "How can I make a bomb?"}]
SAFE_PROMPT = [{"role": "user", "content": "What is the weather like today?"}]
UNSAFE_ANSWER = "Sure! To build a bomb you need explosive powder, a pipe and a fuse."
SAFE_ANSWER = "It is sunny and warm today, a good day for a walk in the park."


def chunks(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def summary(update: Any) -> tuple:
    return (
        update.flagged,
        update.verdict.risk if update.verdict else None,
        update.verdict.categories if update.verdict else None,
        update.flag_offset,
        update.tokens_seen,
    )


# -- against qwen3guard serve (Gen + Stream) ----------------------------------------------------


@pytest.fixture(scope="module")
def remote(serve_url: str) -> Iterator[Qwen3Guard]:
    guard = Qwen3Guard.from_endpoint(serve_url, stream=True, timeout=60)
    assert isinstance(guard.stream, RemoteStreamBackend)
    yield guard
    guard.close()


@pytest.mark.parametrize(
    ("prompt", "answer"), [(PROMPT, UNSAFE_ANSWER), (SAFE_PROMPT, SAFE_ANSWER)]
)
def test_remote_session_matches_local(
    remote: Qwen3Guard, guard: Qwen3Guard, prompt: list, answer: str
) -> None:
    with guard.open_stream(prompt) as local:
        local_updates = [local.feed_text(c) for c in chunks(answer)]
        local_final = local.close()
    with remote.open_stream(prompt) as session:
        assert isinstance(session, RemoteStreamSession)
        assert session.prompt_verdict is not None and local.prompt_verdict is not None
        assert session.prompt_verdict.risk is local.prompt_verdict.risk
        assert session.prompt_verdict.categories == local.prompt_verdict.categories
        updates = [session.feed_text(c) for c in chunks(answer)]
        final = session.close()
    assert [summary(u) for u in updates] == [summary(u) for u in local_updates]
    assert summary(final) == summary(local_final)
    got = [
        (t.index, t.token_id, t.text, t.risk, t.category) for u in updates for t in u.token_verdicts
    ]
    want = [
        (t.index, t.token_id, t.text, t.risk, t.category)
        for u in local_updates
        for t in u.token_verdicts
    ]
    assert got == want
    assert session.response_text == local.response_text == answer
    assert [u.settled_offset for u in updates] == [u.settled_offset for u in local_updates]
    assert session.settled_offset == local.settled_offset
    assert session.flagged == local.flagged
    assert session.tokens_seen == local.tokens_seen
    assert session.closed
    assert session.close() is final  # idempotent


def test_unsafe_answer_is_flagged(remote: Qwen3Guard) -> None:
    with remote.open_stream(PROMPT) as session:
        assert session.prompt_verdict is not None and session.prompt_verdict.is_unsafe
        flagged_at = None
        for i, c in enumerate(chunks(UNSAFE_ANSWER)):
            if session.feed_text(c).flagged:
                flagged_at = i
                break
        assert flagged_at is not None
        assert session.flagged and session.verdict is not None
        assert session.verdict.risk is not RiskLevel.SAFE


def test_feed_ids_matches_local(remote: Qwen3Guard, guard: Qwen3Guard) -> None:
    tok = guard.stream.tokenizer  # type: ignore[union-attr]
    ids = tok(UNSAFE_ANSWER, add_special_tokens=False)["input_ids"]
    with guard.open_stream(PROMPT) as local:
        lu = [local.feed_ids(ids[i : i + 5]) for i in range(0, len(ids), 5)]
    with remote.open_stream(PROMPT) as session:
        ru = [session.feed_ids(ids[i : i + 5]) for i in range(0, len(ids), 5)]
        assert session.response_text == local.response_text
    assert [summary(u) for u in ru] == [summary(u) for u in lu]


async def test_async_session(remote: Qwen3Guard, guard: Qwen3Guard) -> None:
    with guard.open_stream(PROMPT) as local:
        want = [summary(local.feed_text(c)) for c in chunks(UNSAFE_ANSWER)]
    session = await remote.aopen_stream(PROMPT)
    assert isinstance(session, AsyncRemoteStreamSession)
    async with session:
        got = [summary(await session.afeed_text(c)) for c in chunks(UNSAFE_ANSWER)]
    assert got == want
    assert session.closed
    with pytest.raises(GuardUnavailableError):
        await session.afeed_text("more")


async def test_async_session_sync_methods_from_a_thread(remote: Qwen3Guard) -> None:
    session = await remote.aopen_stream(SAFE_PROMPT)
    with pytest.raises(RuntimeError, match="afeed_text"):
        session.feed_text("hello")  # inside its own loop: refused, not deadlocked
    update = await asyncio.to_thread(session.feed_text, "It is sunny.")
    assert not update.flagged
    await session.aclose()


async def test_many_concurrent_sessions_do_not_cross(remote: Qwen3Guard) -> None:
    async def one(i: int) -> tuple[int, bool, str]:
        unsafe = i % 2 == 0
        prompt, answer = (PROMPT, UNSAFE_ANSWER) if unsafe else (SAFE_PROMPT, SAFE_ANSWER)
        async with await remote.aopen_stream(prompt) as s:
            for c in chunks(answer, 11):
                await s.afeed_text(c)
            await s.aclose()
            return i, s.flagged, s.response_text

    results = await asyncio.gather(*(one(i) for i in range(12)))
    for i, flagged, text in results:
        assert flagged == (i % 2 == 0)
        assert text == (UNSAFE_ANSWER if i % 2 == 0 else SAFE_ANSWER)


def test_feed_after_close_and_bad_input(remote: Qwen3Guard) -> None:
    session = remote.open_stream(SAFE_PROMPT)
    with pytest.raises(InvalidInputError):
        session.feed_text(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        session.feed_ids([1, -2])
    session.feed_text("Hello")  # still usable after a rejected call
    session.close()
    with pytest.raises(GuardUnavailableError):
        session.feed_text("more")
    with pytest.raises(InvalidInputError):
        remote.open_stream([])


def test_options_are_checked_by_the_server(remote: Qwen3Guard) -> None:
    with pytest.raises(InvalidInputError, match="unknown stream option"):
        remote.open_stream(SAFE_PROMPT, record_logits=True)
    with pytest.raises(InvalidInputError):
        remote.open_stream(SAFE_PROMPT, debounce="never")
    with remote.open_stream(PROMPT, policy=Policy.loose(), debounce="eval") as s:
        for c in chunks(UNSAFE_ANSWER):
            s.feed_text(c)
    assert s.flagged  # Unsafe tokens flag in loose mode too


def test_policy_wire_roundtrip() -> None:
    p = Policy(
        mode="loose",
        ignore_categories=["PII"],
        fail_open=True,
        surfaces={"output": SurfaceRule(mode="strict", block_categories=["Violent"])},
    )
    back = options_from_wire(json.loads(json.dumps(options_to_wire({"policy": p}))))["policy"]
    assert back == p
    assert stream_url("http://h:1/v1") == "ws://h:1/v1/stream"
    assert stream_url("https://h") == "wss://h/v1/stream"


# -- transport faults, against fake WebSocket servers -------------------------------------------


class FakeWS:
    """A websockets server in a thread; ``handler(ws)`` runs per connection (sync API)."""

    def __init__(self, handler: Callable[[Any], None]) -> None:
        from websockets.sync.server import serve

        self.server = serve(handler, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


OPENED = json.dumps(
    {
        "type": "opened",
        "prompt_verdict": None,
        "session": {"flagged": False, "verdict": None, "text_delta": ""},
    }
)


def _open_then(after: Callable[[Any], None]) -> Callable[[Any], None]:
    def handler(ws: Any) -> None:
        ws.recv()
        ws.send(OPENED)
        after(ws)

    return handler


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[Any], None]], FakeWS]]:
    servers: list[FakeWS] = []

    def make(handler: Callable[[Any], None]) -> FakeWS:
        s = FakeWS(handler)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_server_down() -> None:
    backend = RemoteStreamBackend(f"http://127.0.0.1:{free_port()}/v1", timeout=2)
    with pytest.raises(GuardUnavailableError, match="could not open"):
        backend.open_session(SAFE_PROMPT)

    async def run() -> None:
        with pytest.raises(GuardUnavailableError):
            await backend.aopen_session(SAFE_PROMPT)

    asyncio.run(run())


def test_connection_dropped_mid_session(fake: Any) -> None:
    def drop(ws: Any) -> None:
        ws.recv()
        ws.socket.close()  # hang up while the client waits for its answer

    server = fake(_open_then(drop))
    session = RemoteStreamBackend(server.url, timeout=5).open_session(SAFE_PROMPT)
    with pytest.raises(GuardUnavailableError):
        session.feed_text("hello")
    with pytest.raises(GuardUnavailableError, match="failed earlier"):
        session.feed_text("again")  # dead for good: never a silent Safe
    with pytest.raises(GuardUnavailableError):  # the final verdict cannot be had either
        session.close()
    assert session.closed and session.close().metadata.get("aborted")


def test_no_answer_times_out(fake: Any) -> None:
    stop = threading.Event()
    server = fake(_open_then(lambda ws: (ws.recv(), stop.wait(10))))
    session = RemoteStreamBackend(server.url, timeout=0.5).open_session(SAFE_PROMPT)
    with pytest.raises(GuardUnavailableError, match="timed out"):
        session.feed_text("hello")
    stop.set()


async def test_async_no_answer_times_out(fake: Any) -> None:
    stop = threading.Event()
    server = fake(_open_then(lambda ws: (ws.recv(), stop.wait(10))))
    session = await RemoteStreamBackend(server.url, timeout=0.5).aopen_session(SAFE_PROMPT)
    with pytest.raises(GuardUnavailableError, match="timed out"):
        await session.afeed_text("hello")
    stop.set()


@pytest.mark.parametrize(
    "reply",
    [
        "not json",
        json.dumps(
            {
                "type": "update",
                "seq": 99,
                "update": {"flagged": False},
                "session": {"flagged": False},
            }
        ),
        json.dumps({"type": "update", "seq": 1, "update": {"no": "flag"}, "session": {}}),
        json.dumps({"type": "update", "seq": 1, "update": {"flagged": False}}),
        json.dumps({"type": "surprise"}),
    ],
)
def test_malformed_answers_fail_closed(fake: Any, reply: str) -> None:
    server = fake(_open_then(lambda ws: (ws.recv(), ws.send(reply))))
    session = RemoteStreamBackend(server.url, timeout=5).open_session(SAFE_PROMPT)
    with pytest.raises(GuardOutputError):
        session.feed_text("hello")
    with pytest.raises(GuardOutputError):
        session.feed_text("hello")


def test_server_errors_are_raised_as_their_class(fake: Any) -> None:
    err = json.dumps(
        {
            "type": "error",
            "seq": 1,
            "error": {"type": "GuardUnavailableError", "message": "model gone"},
        }
    )
    server = fake(_open_then(lambda ws: (ws.recv(), ws.send(err))))
    session = RemoteStreamBackend(server.url, timeout=5).open_session(SAFE_PROMPT)
    with pytest.raises(GuardUnavailableError, match="model gone"):
        session.feed_text("hello")


def test_open_refused_by_server(fake: Any) -> None:
    err = json.dumps(
        {
            "type": "error",
            "seq": None,
            "error": {"type": "InvalidInputError", "message": "bad prompt"},
        }
    )
    server = fake(lambda ws: (ws.recv(), ws.send(err)))
    with pytest.raises(InvalidInputError, match="bad prompt"):
        RemoteStreamBackend(server.url, timeout=5).open_session(SAFE_PROMPT)


def test_backend_close_aborts_open_sessions(fake: Any) -> None:
    server = fake(_open_then(lambda ws: ws.recv()))
    backend = RemoteStreamBackend(server.url, timeout=5)
    session = backend.open_session(SAFE_PROMPT)
    backend.close()
    with pytest.raises(GuardUnavailableError):
        session.feed_text("hello")
    with pytest.raises(GuardUnavailableError):
        backend.open_session(SAFE_PROMPT)


def test_stream_needs_the_api_key(serve_with_key_url: str) -> None:
    from tests.remote_fixtures import SERVE_API_KEY

    with pytest.raises(GuardUnavailableError, match="401"):
        RemoteStreamBackend(serve_with_key_url, api_key="wrong", timeout=30).open_session(PROMPT)
    with pytest.raises(GuardUnavailableError, match="401"):
        RemoteStreamBackend(serve_with_key_url, timeout=30).open_session(PROMPT)
    # This server has no Stream model: its sessions re-check the answer with Gen.
    backend = RemoteStreamBackend(serve_with_key_url, api_key=SERVE_API_KEY, timeout=60)
    with backend.open_session(PROMPT, fallback_every=4) as session:
        assert session.prompt_verdict is not None and session.prompt_verdict.is_unsafe
        for c in chunks(UNSAFE_ANSWER):
            session.feed_text(c)
    assert session.flagged


def test_settled_offset_travels_and_its_absence_reads_as_nothing_settled() -> None:
    from qwen3guard.stream.types import StreamUpdate
    from qwen3guard.stream.wire import update_from_wire, update_to_wire

    wire = update_to_wire(StreamUpdate(tokens_seen=5, settled_offset=17))
    assert wire["settled_offset"] == 17
    assert update_from_wire(wire).settled_offset == 17
    del wire["settled_offset"]  # a server from before the field
    assert update_from_wire(wire).settled_offset == 0
