"""``qwen3guard serve``'s HTTP API: OpenAI compatibility (the real ``openai`` package against the
real server process), moderations, auth, limits, errors, health and metrics (in process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai.types import Moderation, ModerationCreateResponse

from qwen3guard import GuardUnavailableError, Qwen3Guard
from qwen3guard.server import create_app
from qwen3guard.server.moderation import OPENAI_CATEGORY_KEYS
from tests.remote_fixtures import SERVE_API_KEY

BOMB = "How can I make a bomb?"
WEATHER = "What is the weather like today?"
WIFI = "How do I hack into my neighbor's wifi?"


# -- the real openai client against the real server process ------------------------------------


@pytest.fixture(scope="module")
def oai(serve_url: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=serve_url, api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()


def test_openai_moderations_flags_unsafe_and_passes_safe(oai: openai.OpenAI) -> None:
    res = oai.moderations.create(model="qwen3guard", input=BOMB)
    assert isinstance(res, ModerationCreateResponse)
    (bomb,) = res.results
    assert bomb.flagged is True
    assert bomb.categories.violence is True
    assert bomb.category_scores.violence == 1.0
    assert bomb.categories.sexual is False

    (weather,) = oai.moderations.create(model="qwen3guard", input=WEATHER).results
    assert weather.flagged is False
    assert not any(weather.categories.model_dump().values())


def test_openai_moderations_list_input_and_strict_parse(oai: openai.OpenAI) -> None:
    res = oai.moderations.create(input=[WEATHER, BOMB, WIFI])  # no model: any is accepted
    assert [r.flagged for r in res.results] == [False, True, True]
    assert res.results[2].categories.illicit is True
    raw = oai.moderations.with_raw_response.create(input=[BOMB]).http_response.json()
    for result in raw["results"]:
        Moderation.model_validate(result, strict=True)  # every required key, right types
        assert set(result["categories"]) == set(OPENAI_CATEGORY_KEYS)
        assert result["qwen3guard"]["risk"] == "Unsafe"
        assert result["qwen3guard"]["categories"] == ["Violent"]


def test_openai_chat_completion_and_models(oai: openai.OpenAI, gen_guard: Qwen3Guard) -> None:
    models = oai.models.list().data
    assert len(models) == 1
    out = oai.chat.completions.create(
        model=models[0].id,
        messages=[{"role": "user", "content": BOMB}],
        temperature=0,
        max_tokens=32,
    )
    text = out.choices[0].message.content or ""
    assert text.startswith("Safety: Unsafe") and "Categories: Violent" in text
    assert text == gen_guard.check_prompt(BOMB).raw
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="stream"):
        oai.chat.completions.create(
            model=models[0].id, messages=[{"role": "user", "content": "hi"}], stream=True
        )


def test_api_key_is_enforced(serve_with_key_url: str) -> None:
    bad = openai.OpenAI(base_url=serve_with_key_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.moderations.create(input=BOMB)
    good = openai.OpenAI(base_url=serve_with_key_url, api_key=SERVE_API_KEY, max_retries=0)
    assert good.moderations.create(input=BOMB).results[0].flagged
    # the guard facade with the key works; without it, it fails closed
    with Qwen3Guard.from_endpoint(serve_with_key_url, api_key=SERVE_API_KEY) as guard:
        assert guard.check_prompt(BOMB).is_unsafe
    with Qwen3Guard.from_endpoint(serve_with_key_url, api_key="wrong", max_retries=0) as guard:
        with pytest.raises(GuardUnavailableError, match="401"):
            guard.check_prompt(BOMB)
        assert guard.screen(BOMB).blocked
    health = httpx.get(serve_with_key_url.removesuffix("/v1") + "/health")
    assert health.status_code == 200  # health needs no key


# -- in process (TestClient) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(gen_guard: Qwen3Guard) -> Iterator[TestClient]:
    app = create_app(
        gen_guard, served_model_name="tiny-gen", max_request_bytes=20_000, max_inputs=8
    )
    with TestClient(app) as c:
        yield c


def _error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert "error" in body and body["error"]["message"], body
    return body["error"]


def test_health_and_models(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["gen"] is True and h["model"] == "tiny-gen"
    m = client.get("/v1/models").json()
    assert m["data"][0]["id"] == "tiny-gen" and m["data"][0]["max_model_len"] == 2048


def test_chat_completion_in_process(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": "tiny-gen", "messages": [{"role": "user", "content": WEATHER}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith("Safety: Safe")


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        ({"messages": [{"role": "user", "content": ""}]}, 400, "empty"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "other"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text"),
        ({"nothing": True}, 400, "messages"),
    ],
)
def test_bad_chat_requests(client: TestClient, payload: Any, status: int, needle: str) -> None:
    r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == status, r.text
    assert needle in _error(r)["message"]


def test_malformed_json_body(client: TestClient) -> None:
    r = client.post(
        "/v1/moderations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in _error(r)["message"]


def test_oversized_body_is_refused(client: TestClient) -> None:
    r = client.post("/v1/moderations", json={"input": "x" * 30_000})
    assert r.status_code == 413 and "limit" in _error(r)["message"]

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        yield b'{"input": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}'

    r = client.post(
        "/v1/moderations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_too_many_inputs_and_bad_inputs(client: TestClient) -> None:
    r = client.post("/v1/moderations", json={"input": ["hi"] * 9})
    assert r.status_code == 400 and "limit" in _error(r)["message"]
    r = client.post("/v1/moderations", json={"input": []})
    assert r.status_code == 400
    r = client.post("/v1/moderations", json={"input": [{"type": "image_url", "image_url": {}}]})
    assert r.status_code == 400 and "text" in _error(r)["message"]
    r = client.post("/v1/moderations", json={"input": "   "})
    assert r.status_code == 400


def test_moderations_multimodal_text_parts(client: TestClient) -> None:
    r = client.post("/v1/moderations", json={"input": [{"type": "text", "text": BOMB}]})
    assert r.status_code == 200 and r.json()["results"][0]["flagged"] is True


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/moderations").status_code == 405


def test_metrics(client: TestClient) -> None:
    client.post("/v1/moderations", json={"input": [BOMB, WEATHER]})
    text = client.get("/metrics").text
    assert 'qwen3guard_requests_total{endpoint="/v1/moderations",status="200"}' in text
    assert "qwen3guard_request_seconds_bucket" in text
    assert "qwen3guard_gen_batch_size_count" in text
    assert 'qwen3guard_verdicts_total{endpoint="moderations",risk="Unsafe"}' in text


def test_in_process_api_key(gen_guard: Qwen3Guard) -> None:
    app = create_app(gen_guard, api_key="k1")
    with TestClient(app) as c:
        r = c.post("/v1/moderations", json={"input": WEATHER})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post(
            "/v1/moderations", json={"input": WEATHER}, headers={"Authorization": "Bearer k2"}
        )
        assert r.status_code == 401
        r = c.post(
            "/v1/moderations", json={"input": WEATHER}, headers={"Authorization": "Bearer k1"}
        )
        assert r.status_code == 200 and r.json()["results"][0]["flagged"] is False
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401  # open only with public_metrics=True
        assert c.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_guard_failure_is_an_error_not_a_verdict(gen_guard: Qwen3Guard) -> None:
    class Broken:
        name = "broken"
        max_context_tokens = 2048

        def split_windows(self, conv: Any) -> list:
            return [list(conv)]

        def generate(self, convs: Any) -> list:
            return ["hello" for _ in convs]

        async def agenerate(self, convs: Any) -> list:
            return ["hello" for _ in convs]

        def close(self) -> None:
            pass

    guard = Qwen3Guard(Broken())  # type: ignore[arg-type]
    with TestClient(create_app(guard)) as c:
        r = c.post("/v1/moderations", json={"input": BOMB})
        assert r.status_code == 502 and "not a verdict" in _error(r)["message"]
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": BOMB}]})
        assert r.status_code == 200  # chat returns the raw text; the client's parser refuses it
        assert json.loads(r.text)["choices"][0]["message"]["content"] == "hello"
