"""Streaming moderation without a Stream model: the session re-checks the answer with Gen."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from qwen3guard import (
    GuardUnavailableError,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    RiskLevel,
    Role,
)
from qwen3guard.gen.base import GenBackend
from qwen3guard.stream.fallback import FallbackSession

UNSAFE_ANSWER = (
    "It is a sunny day and the garden looks lovely in the morning light. "
    "Here is how: mix the explosive powder to build a bomb, then add a timer."
)
SAFE_ANSWER = (
    "It is sunny and warm today. The garden is quiet and the river is calm, "
    "so it is a good day for a walk in the park with a friend."
)


class FakeGen(GenBackend):
    """Answers like Gen: Unsafe when the judged turn mentions a bomb, Controversial when it
    mentions the death penalty; counts the calls."""

    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.lock = threading.Lock()

    def generate(self, conversations: Sequence[Sequence[dict]]) -> list[str | BaseException]:
        out: list[str | BaseException] = []
        for conv in conversations:
            last = conv[-1]
            with self.lock:
                self.calls.append(last["content"])
            if self.fail:
                out.append(GuardUnavailableError("server down"))
                continue
            text = last["content"]
            if "bomb" in text:
                head = "Safety: Unsafe\nCategories: Violent"
            elif "death penalty" in text:
                head = "Safety: Controversial\nCategories: Politically Sensitive Topics"
            else:
                head = "Safety: Safe\nCategories: None"
            out.append(head + ("\nRefusal: No" if last["role"] == "assistant" else ""))
        return out


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


def test_opens_a_fallback_session_and_judges_the_prompt_with_gen() -> None:
    gen = FakeGen()
    guard = Qwen3Guard(gen, stream_fallback_every=8)
    s = guard.open_stream("How can I make a bomb?")
    assert isinstance(s, FallbackSession)
    assert s.prompt_verdict is not None and s.prompt_verdict.risk is RiskLevel.UNSAFE
    assert s.prompt_verdict.role is Role.PROMPT
    assert s.every == 8
    s.close()


def test_rechecks_every_n_tokens_and_flags_an_unsafe_answer() -> None:
    gen = FakeGen()
    guard = Qwen3Guard(gen, stream_fallback_every=8)
    s = guard.open_stream("Tell me about the weather")
    gen.calls.clear()
    updates = [s.feed_text(w) for w in _words(UNSAFE_ANSWER)]
    flagged_at = next(i for i, u in enumerate(updates) if u.flagged)
    # Not flagged before the word 'bomb' has been fed, flagged within the next N tokens.
    words = _words(UNSAFE_ANSWER)
    bomb_word = next(i for i, w in enumerate(words) if "bomb" in w)
    assert bomb_word <= flagged_at
    assert updates[flagged_at].tokens_seen - sum(1 for _ in words[: bomb_word + 1]) <= 8 * 2
    final = s.close()
    assert final.flagged and all(u.flagged for u in updates[flagged_at:])
    assert final.verdict is not None and final.verdict.risk is RiskLevel.UNSAFE
    assert final.verdict.role is Role.RESPONSE
    # The flagged span starts after the part a passing check had judged, before the bomb.
    assert final.flag_offset is not None
    assert final.flag_offset <= UNSAFE_ANSWER.index("bomb")
    # Every check judged the accumulated answer, a growing prefix; none after the flag.
    assert all(UNSAFE_ANSWER.startswith(c) for c in gen.calls)
    assert len(gen.calls) == s.checks_run
    assert s.checks_run <= s.tokens_seen // 8 + 1


def test_safe_answer_is_not_flagged_and_close_checks_the_rest() -> None:
    gen = FakeGen()
    guard = Qwen3Guard(gen, stream_fallback_every=1000)
    s = guard.open_stream("What is the weather like today?")
    gen.calls.clear()
    for w in _words(SAFE_ANSWER):
        assert not s.feed_text(w).flagged
    assert gen.calls == []  # fewer than N tokens: no check yet
    final = s.close()
    assert not final.flagged and final.verdict is not None and final.verdict.is_safe
    assert gen.calls == [SAFE_ANSWER]  # the whole answer, once, on close
    assert s.close() is final  # idempotent
    with pytest.raises(GuardUnavailableError):
        s.feed_text("more")


def test_fallback_every_can_be_set_per_session() -> None:
    gen = FakeGen()
    guard = Qwen3Guard(gen, stream_fallback_every=1000)
    s = guard.open_stream("hi", fallback_every=2)
    gen.calls.clear()
    for w in _words(SAFE_ANSWER):
        s.feed_text(w)
    assert len(gen.calls) >= 5
    s.close()
    with pytest.raises(ValueError):
        guard.open_stream("hi", fallback_every=0)


def test_loose_policy_does_not_flag_controversial() -> None:
    answer = "I think the death penalty is wrong and should be abolished."
    strict = Qwen3Guard(FakeGen(), stream_fallback_every=4)
    loose = Qwen3Guard(FakeGen(), policy=Policy.loose(), stream_fallback_every=4)
    for guard, expected in ((strict, True), (loose, False)):
        with guard.open_stream("What do you think?") as s:
            for w in _words(answer):
                s.feed_text(w)
        assert s.close().flagged is expected
        assert s.verdict is not None and s.verdict.risk is RiskLevel.CONTROVERSIAL


def test_a_failing_gen_flags_under_fail_closed_and_warns_under_fail_open() -> None:
    ok = FakeGen()
    guard = Qwen3Guard(ok, stream_fallback_every=4)
    s = guard.open_stream("hi")
    ok.fail = True
    ups = [s.feed_text(w) for w in _words(SAFE_ANSWER)]
    assert ups[-1].flagged and ups[-1].verdict is None
    assert "GuardUnavailableError" in ups[-1].metadata.get("error", "") + ups[-1].metadata.get(
        "last_error", ""
    )
    s.close()

    ok2 = FakeGen()
    guard2 = Qwen3Guard(ok2, policy=Policy(fail_open=True), stream_fallback_every=4)
    s2 = guard2.open_stream("hi")
    ok2.fail = True
    with pytest.warns(RuntimeWarning):
        for w in _words(SAFE_ANSWER):
            s2.feed_text(w)
    assert not s2.close().flagged


def test_token_counting_with_and_without_a_tokenizer() -> None:
    gen = FakeGen()  # no tokenizer: about 4 characters per token
    s = Qwen3Guard(gen, stream_fallback_every=10_000).open_stream("hi")
    s.feed_text("x" * 40)
    assert s.tokens_seen == 10
    with pytest.raises(InvalidInputError):
        s.feed_ids([1, 2, 3])  # cannot read ids without a tokenizer
    s.close()


async def test_async_fallback_session() -> None:
    gen = FakeGen()
    guard = Qwen3Guard(gen, stream_fallback_every=6)
    async with await guard.aopen_stream("Tell me about the weather") as s:
        assert isinstance(s, FallbackSession)
        assert s.prompt_verdict is not None and s.prompt_verdict.is_safe
        ups = [await s.afeed_text(w) for w in _words(UNSAFE_ANSWER)]
    assert ups[-1].flagged
    final = await s.aclose()
    assert final.flagged and final.verdict is not None and final.verdict.is_unsafe


async def test_concurrent_async_feeds_on_one_session_keep_their_order() -> None:
    gen = FakeGen()
    guard = Qwen3Guard(gen, stream_fallback_every=3)
    s = await guard.aopen_stream("hi")
    words = _words(SAFE_ANSWER)
    await asyncio.gather(*(s.afeed_text(w) for w in words))
    assert s.response_text == SAFE_ANSWER
    await s.aclose()


# -- on the built-in Gen checkpoint ----------------------------------------------------------


def test_gen_fallback_on_the_tiny_gen_model(gen_guard: Qwen3Guard) -> None:
    s = gen_guard.open_stream("What is the weather like today?", fallback_every=16)
    assert isinstance(s, FallbackSession)
    assert s.prompt_verdict is not None and s.prompt_verdict.is_safe
    ids = gen_guard.gen.tokenizer(UNSAFE_ANSWER, add_special_tokens=False)["input_ids"]
    for i in ids:
        s.feed_ids([i])
    final = s.close()
    assert final.flagged, final
    assert final.verdict is not None and final.verdict.risk is RiskLevel.UNSAFE
    assert s.response_text == UNSAFE_ANSWER
    assert s.tokens_seen == len(ids)

    with gen_guard.open_stream("What is the weather like today?", fallback_every=16) as safe:
        for w in _words(SAFE_ANSWER):
            assert not safe.feed_text(w).flagged
    assert not safe.flagged and safe.verdict is not None and safe.verdict.is_safe


async def test_gen_fallback_async_on_the_tiny_gen_model(gen_guard: Qwen3Guard) -> None:
    s = await gen_guard.aopen_stream("How can I make a bomb?", fallback_every=16)
    assert s.prompt_verdict is not None and s.prompt_verdict.is_unsafe
    for w in _words(UNSAFE_ANSWER):
        await s.afeed_text(w)
    final = await s.aclose()
    assert final.flagged and final.verdict is not None and final.verdict.is_unsafe
