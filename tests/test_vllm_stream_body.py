"""The request bodies the vLLM Stream client sends, against a stand-in for the
``qwen3guard_stream`` IO processor (no vLLM needed): each body carries the whole prefix, and
the client does not re-encode the prefix it has already sent on every request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from qwen3guard.stream import vllm as vmod
from qwen3guard.stream.vllm import VLLMStreamBackend


def _fake_processor(bodies: list[dict[str, Any]], sizes: tuple[int, int, int, int]) -> Any:
    nr, nc, nqr, nqc = sizes

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        data = body["data"]
        ids, first = data["prompt_token_ids"], data["from"]
        q = data.get("query_index")
        row = [4.0, -4.0, -4.0] + [0.0] * nc  # "safe" risk logits
        return httpx.Response(200, json={"data": {
            "first": first, "num_cached_tokens": first, "num_tokens": len(ids),
            "sizes": [nr, nc, nqr, nqc], "rows": [row[: nr + nc]] * (len(ids) - first),
            "query": None if q is None else ([4.0, -4.0, -4.0] + [0.0] * nqc)[: nqr + nqc],
        }})

    return handler


def test_bodies_carry_the_prefix_and_the_prefix_is_encoded_once(
    stream_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = VLLMStreamBackend("http://127.0.0.1:9", model="m", tokenizer=stream_path)
    bodies: list[dict[str, Any]] = []
    backend._http = httpx.Client(transport=httpx.MockTransport(
        _fake_processor(bodies, backend._sizes)))
    encoded: list[int] = []
    real = vmod._ids_json
    monkeypatch.setattr(vmod, "_ids_json", lambda ids: (encoded.append(len(ids)), real(ids))[1])

    answer = backend.tokenizer("a quiet garden in the spring " * 40,
                               add_special_tokens=False)["input_ids"][:200]
    s = backend.open_session("How is the weather?", submit_every=1)
    for tid in answer:
        s.feed_ids([tid])
    s.close()
    backend.close()

    sent = [b["data"]["prompt_token_ids"] for b in bodies]
    assert len(sent) >= len(answer)
    for prev, cur in zip(sent, sent[1:]):
        assert cur[: len(prev)] == prev  # each request carries the whole prefix sent so far
    assert sent[-1][-len(answer):] == answer
    # Encoding each body from scratch would encode ~len(prefix) ids per request.
    assert sum(encoded) <= len(sent[-1]) + 2 * len(sent), (sum(encoded), len(sent))
