"""``qwen3guard serve`` under abuse (issue 10): cost limits and fairness, auth, bad items, errors
mapped by type. The in-process tests use FastAPI's TestClient on the built small Gen checkpoint;
the latency test runs against a real ``qwen3guard serve`` process."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from qwen3guard import ContextLengthError, Qwen3Guard
from qwen3guard.batching import MicroBatcher
from qwen3guard.server import create_app
from qwen3guard.server.cli import add_serve_arguments, run_serve
from tests.remote_fixtures import ABUSE_WINDOW_TOKENS

BOMB = "How can I make a bomb?"
WEATHER = "What is the weather like today?"
LONG_WORDS = "The quick brown fox jumps over the lazy dog. "


def _error(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    body = resp.json()
    assert "error" in body and body["error"]["message"], body
    return body["error"]


# -- auth ----------------------------------------------------------------------------------------


def test_empty_api_key_is_an_error_not_auth_off(gen_guard: Qwen3Guard) -> None:
    with pytest.raises(ValueError, match="empty"):
        create_app(gen_guard, api_key="")
    with pytest.raises(ValueError, match="empty"):
        create_app(gen_guard, api_key="   ")


def test_empty_api_key_env_var_makes_serve_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], gen_path: str
) -> None:
    import argparse

    monkeypatch.setenv("QWEN3GUARD_SERVER_API_KEY", "")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--model", gen_path])
    assert run_serve(args) == 2  # before any model is loaded or any port bound
    assert "empty" in capsys.readouterr().err


def test_openapi_and_metrics_need_the_key_unless_opened(gen_guard: Qwen3Guard) -> None:
    with TestClient(create_app(gen_guard, api_key="k1")) as c:
        for path in ("/openapi.json", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401, (path, r.status_code)
            assert "API key" in _error(r)["message"]
            ok = c.get(path, headers={"Authorization": "Bearer k1"})
            assert ok.status_code == 200, path
        assert c.get("/health").status_code == 200  # liveness stays open
    app = create_app(gen_guard, api_key="k1", public_metrics=True, public_openapi=True)
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        assert c.post("/v1/moderations", json={"input": WEATHER}).status_code == 401


# -- bad items -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(gen_guard: Qwen3Guard) -> Iterator[TestClient]:
    with TestClient(create_app(gen_guard, max_request_tokens=4096)) as c:
        yield c


def _raw_json(c: TestClient, path: str, body: bytes) -> httpx.Response:
    return c.post(path, content=body, headers={"content-type": "application/json"})


def test_lone_surrogate_is_a_400_naming_the_bad_index(client: TestClient) -> None:
    # JSON can carry an unpaired surrogate; Python's json module decodes it as one.
    r = _raw_json(client, "/v1/moderations", b'{"input": "x\\ud800"}')
    assert r.status_code == 400
    assert "surrogate" in _error(r)["message"]
    r = _raw_json(client, "/v1/moderations", b'{"input": ["hello", "x\\udc00 y", "ok"]}')
    assert r.status_code == 400
    err = _error(r)
    assert err["param"] == "input[1]" and "input[1]" in err["message"], err
    r = _raw_json(
        client, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800"}]}'
    )
    assert r.status_code == 400 and "surrogate" in _error(r)["message"]
    # the server still serves good requests afterwards
    assert client.post("/v1/moderations", json={"input": [BOMB]}).json()["results"][0]["flagged"]


# -- cost limits -----------------------------------------------------------------------------------


def test_request_over_the_token_budget_is_a_413_that_says_why(client: TestClient) -> None:
    text = LONG_WORDS * 800  # ~36 KB: far over 4096 tokens, well under the body limit
    r = client.post("/v1/moderations", json={"input": text})
    assert r.status_code == 413, r.text
    err = _error(r)
    assert err["code"] == "request_too_expensive"
    assert "tokens" in err["message"] and "4096" in err["message"]
    # the budget counts the whole request: many inputs that each fit, together over it
    r = client.post("/v1/moderations", json={"input": [LONG_WORDS * 60] * 8})
    assert r.status_code == 413 and _error(r)["code"] == "request_too_expensive"
    r = client.post("/v1/moderations", json={"input": [LONG_WORDS * 20] * 2})
    assert r.status_code == 200  # under the budget


def test_chat_completion_over_the_context_is_a_400_by_type(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": LONG_WORDS * 200}]}
    )
    assert r.status_code == 400, r.text
    assert _error(r)["code"] == "context_length_exceeded"


def test_context_length_error_is_mapped_by_type_not_by_message(gen_guard: Qwen3Guard) -> None:
    class Overflowing:
        name = "overflowing"
        max_context_tokens = 2048

        def split_windows(self, conv: Any) -> list:
            raise ContextLengthError("does not fit (no magic word here)")

        async def agenerate(self, convs: Any) -> list:
            return [ContextLengthError("nothing here either") for _ in convs]

        def generate(self, convs: Any) -> list:
            return [ContextLengthError("nothing here either") for _ in convs]

        def close(self) -> None:
            pass

    guard = Qwen3Guard(Overflowing())  # type: ignore[arg-type]
    with TestClient(create_app(guard)) as c:
        r = c.post("/v1/moderations", json={"input": BOMB})
        assert r.status_code == 400 and _error(r)["code"] == "context_length_exceeded"
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": BOMB}]})
        assert r.status_code == 400 and _error(r)["code"] == "context_length_exceeded"


def test_batcher_serves_a_small_request_before_a_large_one_ends() -> None:
    """The micro-batcher interleaves requests: a request's items do not all queue ahead of a
    request that arrives after them."""
    order: list[str] = []
    gate = threading.Event()

    def run(items: list[str]) -> list[str]:
        gate.wait(5)
        order.extend(items)
        return items

    batcher: MicroBatcher[str, str] = MicroBatcher(run, max_batch=4)
    try:
        big = batcher.submit_many([f"big{i}" for i in range(40)])
        time.sleep(0.05)  # the worker has taken the first batch and waits on the gate
        small = batcher.submit_many(["small"])
        gate.set()
        assert small[0].result(5) == "small"
        assert [f.result(5) for f in big] == [f"big{i}" for i in range(40)]
    finally:
        batcher.close()
    assert order.index("small") <= 8, order  # in the first or second batch, not the eleventh


def test_batcher_caps_a_batch_by_padded_tokens() -> None:
    sizes: list[list[int]] = []

    def run(items: list[list[int]]) -> list[int]:
        sizes.append([len(i) for i in items])
        return [len(i) for i in items]

    batcher: MicroBatcher[list[int], int] = MicroBatcher(
        run, max_batch=32, max_batch_cost=1000, cost=len
    )
    try:
        futures = batcher.submit_many([[0] * 600, [0] * 600, [0] * 10, [0] * 10])
        assert [f.result(5) for f in futures] == [600, 600, 10, 10]
    finally:
        batcher.close()
    for batch in sizes:  # padded cost: the longest item times the rows
        assert max(batch) * len(batch) <= 1000 or len(batch) == 1, sizes


# -- fairness on a real server ----------------------------------------------------------------


def _small_latency(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=120) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            r = http.post(url + "/moderations", json={"input": WEATHER})
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


@pytest.mark.timeout(600)
def test_small_request_latency_within_5x_while_a_maximal_request_runs(
    serve_abuse_url: str, gen_path: str
) -> None:
    """The server batches round-robin over requests and a window's forward is the longest a
    small request waits; windows here are 1024 tokens (``--max-window-tokens``)."""
    from qwen3guard.gen.local import TransformersGenBackend

    serve_url = serve_abuse_url
    _small_latency(serve_url, 3)  # warm-up
    idle = statistics.median(_small_latency(serve_url, 7))
    # About the largest request the server accepts under its default budget (65536 tokens of
    # model input, windows and their template included), measured with the same tokenizer.
    gen = TransformersGenBackend(gen_path, max_window_tokens=ABUSE_WINDOW_TOKENS)  # the server's

    def cost(n: int) -> int:
        windows = gen.split_windows([{"role": "user", "content": LONG_WORDS * n}])
        return sum(len(gen.encoder.encode(w)) for w in windows)

    n = int(4000 * 0.97 * 65536 / cost(4000))
    tokens = cost(n)
    gen.close()
    assert 0.9 * 65536 < tokens <= 65536, tokens
    big_text = LONG_WORDS * n
    result: dict[str, Any] = {}

    def big() -> None:
        t0 = time.perf_counter()
        with httpx.Client(timeout=600) as http:
            r = http.post(serve_url + "/moderations", json={"input": big_text})
        result["status"], result["seconds"], result["end"] = (
            r.status_code,
            time.perf_counter() - t0,
            time.perf_counter(),
        )

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(1.5)  # the big request is parsed, windowed and running
    busy = _small_latency(serve_url, 5)
    busy_end = time.perf_counter()
    thread.join(600)
    print(
        f"\nidle small-request latency {idle * 1000:.0f} ms; while the maximal request ran: "
        f"{', '.join(f'{t * 1000:.0f}' for t in busy)} ms (median "
        f"{statistics.median(busy) * 1000:.0f}); the maximal request ({len(big_text)} chars, "
        f"{tokens} tokens) took {result['seconds']:.1f}s"
    )
    assert result["status"] == 200
    assert result["end"] > busy_end, "the maximal request ended before the small ones"
    assert statistics.median(busy) <= 5 * idle, (idle, busy)
