"""Review findings on ``Qwen3GuardChatModel`` (2026-11-30):

- ``with_structured_output``: a structured chain that calls the wrapped (raw) model from a
  place the swap cannot see (a ``with_fallbacks`` whose fallback is a lambda calling the raw
  model: the shape of a re-ask on a parse error) returned that model's unjudged answer, and
  the caller's callbacks saw it. The final structured result is now always judged as the
  answer, and a chain that may still hold the raw model runs outside the caller's callbacks.
- the LLM-cache key of a model guarded by the default guard (``guard=None``) did not say which
  guard that is (its models, its policy), so a persistent cache shared answers between
  configurations (``QWEN3GUARD_POLICY``, ``QWEN3GUARD_*MODEL``, ``set_default_guard``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import JsonOutputParser
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_qwen3guard import Qwen3GuardChatModel
from lc_fakes import SAFE_ANSWER, UNSAFE_ANSWER, ScriptedChatModel
from standard_fake import ChatStandardFake

from qwen3guard import (
    Policy,
    Qwen3Guard,
    Qwen3GuardViolation,
    get_default_guard,
    set_default_guard,
)

QUESTION = "What is the weather like today?"
SCHEMA = {"title": "A", "type": "object", "properties": {"text": {"type": "string"}}}
PROSE = "Sorry, I can only answer in prose."


class ReaskOnParseError(ScriptedChatModel):
    """Structured output = model | parser, with a parse-error fallback that asks the *raw*
    model again from a lambda (the shape of OutputFixingParser-style retries)."""

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Runnable[Any, Any]:
        reask = RunnableLambda(lambda _: self.invoke("Answer as JSON")) | JsonOutputParser()
        return self.bind(stop=None) | JsonOutputParser().with_fallbacks([reask])


class Seen(BaseCallbackHandler):
    """Everything a caller's callbacks are shown (outputs, tokens, chat-model inputs)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.texts.append(repr(response))

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: Any = None,
                         **kwargs: Any) -> None:
        self.texts.append(repr(token) + repr(chunk))

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.texts.append(repr(outputs))

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.texts.append(repr(messages))

    def leaked(self) -> bool:
        return any("explosive" in t for t in self.texts)


def _reasking(answer: str) -> ReaskOnParseError:
    return ReaskOnParseError(script=[PROSE, json.dumps({"text": answer})])


def test_a_raw_model_called_from_a_fallback_is_judged(guard: Qwen3Guard) -> None:
    chain = Qwen3GuardChatModel(llm=_reasking(UNSAFE_ANSWER), guard=guard).with_structured_output(
        SCHEMA)
    seen = Seen()
    with pytest.raises(Qwen3GuardViolation) as info:
        chain.invoke(QUESTION, config={"callbacks": [seen]})
    assert info.value.stage == "output"
    assert not seen.leaked(), seen.texts


async def test_a_raw_model_called_from_a_fallback_is_judged_async(guard: Qwen3Guard) -> None:
    chain = Qwen3GuardChatModel(llm=_reasking(UNSAFE_ANSWER), guard=guard).with_structured_output(
        SCHEMA)
    events: list[Any] = []
    with pytest.raises(Qwen3GuardViolation) as info:
        async for event in chain.astream_events(QUESTION, version="v2"):
            events.append(event)
    assert info.value.stage == "output"
    assert [e["event"] for e in events if "explosive" in repr(e.get("data"))] == []
    seen = Seen()
    with pytest.raises(Qwen3GuardViolation):
        await chain.ainvoke(QUESTION, config={"callbacks": [seen]})
    assert not seen.leaked(), seen.texts


def test_a_safe_answer_from_the_fallback_comes_back(guard: Qwen3Guard) -> None:
    chain = Qwen3GuardChatModel(llm=_reasking(SAFE_ANSWER), guard=guard).with_structured_output(
        SCHEMA)
    assert chain.invoke(QUESTION) == {"text": SAFE_ANSWER}


# -- the LLM-cache key of the default guard ---------------------------------------------------


@pytest.fixture
def no_default_guard() -> Iterator[None]:
    set_default_guard(None)
    try:
        yield
    finally:
        set_default_guard(None)


def _default_key(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The cache key of a model guarded by the default guard built from ``env``."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    set_default_guard(None)
    try:
        return Qwen3GuardChatModel(llm=ChatStandardFake())._get_llm_string()
    finally:
        get_default_guard().close()
        set_default_guard(None)


def test_the_cache_key_names_the_default_guard_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, no_default_guard: None, gen_path: str, stream_path: str
) -> None:
    monkeypatch.delenv("QWEN3GUARD_ENDPOINT", raising=False)
    gen_only = {"QWEN3GUARD_MODEL": gen_path, "QWEN3GUARD_STREAM_MODEL": "none"}
    strict = _default_key(monkeypatch, **gen_only, QWEN3GUARD_POLICY="strict")
    loose = _default_key(monkeypatch, **gen_only, QWEN3GUARD_POLICY="loose")
    assert strict != loose
    assert _default_key(monkeypatch, **gen_only, QWEN3GUARD_POLICY="strict") == strict
    with_stream = _default_key(monkeypatch, QWEN3GUARD_MODEL=gen_path,
                               QWEN3GUARD_STREAM_MODEL=stream_path, QWEN3GUARD_POLICY="strict")
    assert with_stream != strict


def test_the_cache_key_names_the_guard_set_as_default(
    guard: Qwen3Guard, no_default_guard: None
) -> None:
    model = Qwen3GuardChatModel(llm=ChatStandardFake())
    keys = []
    for mode in ("strict", "loose"):
        set_default_guard(Qwen3Guard(guard.gen, stream=guard.stream, policy=Policy(mode=mode)))
        keys.append(model._get_llm_string())
    assert keys[0] != keys[1]
    # the same guard, given or set as the default: the same guard in the key
    explicit = Qwen3GuardChatModel(llm=ChatStandardFake(), guard=get_default_guard())
    assert json.dumps(explicit._identifying_params["guard"]["policy"]) == json.dumps(
        model._identifying_params["guard"]["policy"])


@pytest.mark.parametrize(
    ("method", "include_raw"),
    [("function_calling", False), ("function_calling", True), ("json_mode", True)],
)
async def test_standard_structured_chains_keep_the_guarded_run_visible(
    guard: Qwen3Guard, method: str, include_raw: bool
) -> None:
    """LangChain core's structured chains (parsers, ``itemgetter``, ``lambda _: None``
    fallbacks) hold no other model: the guarded model runs inside the caller's callbacks."""
    model = Qwen3GuardChatModel(llm=ChatStandardFake(), guard=guard)
    chain = model.with_structured_output(SCHEMA, method=method, include_raw=include_raw)
    starts = [e["name"] async for e in chain.astream_events(QUESTION, version="v2")
              if e["event"] == "on_chat_model_start"]
    assert starts == ["Qwen3GuardChatModel"]
