"""Roll back and regenerate (issue 13): session rollback parity, and the intervention loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from qwen3guard import DEFAULT_REFUSAL_MESSAGE, InvalidInputError, Qwen3Guard
from qwen3guard.stream.intervene import Intervention, aintervene, intervene, rollback_point

PROMPT = "How do I spend a fun afternoon?"
SAFE = "Go for a walk in the park. Then read a good book at home. "
UNSAFE = "Next, make a bomb with what you find in the garage and light it. "
REPAIR = "Then cook a nice dinner with friends and enjoy the evening. "


def words(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        if ch == " " and cur:
            out.append(cur)
            cur = ""
        cur += ch
    if cur:
        out.append(cur)
    return out


# -- rollback parity ---------------------------------------------------------------------------


def _trace(session) -> tuple[list[int], object, object]:
    return session._logits_trace()


@pytest.mark.parametrize("offset_in", ["sentence", "mid-word", "zero", "all"])
def test_a_rolled_back_local_session_equals_a_fresh_one_fed_the_kept_prefix(
    guard: Qwen3Guard, offset_in: str
) -> None:
    answer = SAFE + UNSAFE + REPAIR
    offset = {"sentence": len(SAFE), "mid-word": len(SAFE) + 9, "zero": 0,
              "all": len(answer)}[offset_in]
    rolled = guard.open_stream(PROMPT, record_logits=True)
    for w in words(answer):
        rolled.feed_text(w)
    rolled.rollback(offset)
    fresh = guard.open_stream(PROMPT, record_logits=True)
    if offset:
        fresh.feed_text(answer[:offset])
    assert rolled.response_text == fresh.response_text == answer[:offset]
    assert rolled.flagged == fresh.flagged
    for s in (rolled, fresh):  # the same continuation afterwards
        for w in words(REPAIR):
            s.feed_text(w)
    fr, fc = rolled.close(), fresh.close()
    ids_r, risk_r, cat_r = _trace(rolled)
    ids_f, risk_f, cat_f = _trace(fresh)
    assert ids_r == ids_f
    assert float((risk_r - risk_f).abs().max()) <= 1e-4
    assert float((cat_r - cat_f).abs().max()) <= 1e-4
    assert (fr.flagged, fr.flag_offset, fr.settled_offset) == (
        fc.flagged, fc.flag_offset, fc.settled_offset)


def test_rollback_unflags_a_flagged_session(guard: Qwen3Guard) -> None:
    s = guard.open_stream(PROMPT)
    for w in words(SAFE + UNSAFE):
        s.feed_text(w)
    assert s.flagged
    u = s.rollback(len(SAFE))
    assert not u.flagged and not s.flagged and s.response_text == SAFE
    for w in words(REPAIR):
        s.feed_text(w)
    assert not s.close().flagged


def test_rollback_after_end_and_bad_offsets(guard: Qwen3Guard) -> None:
    s = guard.open_stream(PROMPT)
    s.feed_text("Here is how to make a bomb")
    assert s.end().flagged  # judged as ended, but still open
    with pytest.raises(InvalidInputError):
        s.feed_text(" more")  # ended: roll back first
    with pytest.raises(InvalidInputError):
        s.rollback(10_000)
    s.rollback(0)
    s.feed_text("It is sunny.")
    assert not s.close().flagged


def test_a_rolled_back_gen_fallback_session_equals_a_fresh_one(gen_guard: Qwen3Guard) -> None:
    answer = SAFE + UNSAFE + REPAIR
    rolled = gen_guard.open_stream(PROMPT, fallback_every=8)
    for w in words(answer):
        rolled.feed_text(w)
    assert rolled.flagged
    ru = rolled.rollback(len(SAFE))
    fresh = gen_guard.open_stream(PROMPT, fallback_every=8)
    fu = fresh.feed_text(SAFE)
    assert (ru.flagged, ru.settled_offset, ru.tokens_seen) == (
        fu.flagged, fu.settled_offset, fu.tokens_seen)
    assert rolled.checks_run - 0 >= fresh.checks_run
    for s in (rolled, fresh):
        for w in words(REPAIR):
            s.feed_text(w)
    fr, fc = rolled.close(), fresh.close()
    assert (fr.flagged, fr.settled_offset) == (fc.flagged, fc.settled_offset)
    assert fr.verdict is not None and fc.verdict is not None
    assert fr.verdict.risk is fc.verdict.risk


async def test_async_rollback_matches_sync(guard: Qwen3Guard, gen_guard: Qwen3Guard) -> None:
    for g in (guard, gen_guard):
        s = await g.aopen_stream(PROMPT)
        for w in words(SAFE + UNSAFE):
            await s.afeed_text(w)
        assert s.flagged
        u = await s.arollback(len(SAFE))
        assert not u.flagged and s.response_text == SAFE
        await s.aclose()


# -- the rollback point ------------------------------------------------------------------------


def test_rollback_point_is_the_sentence_start_never_before_released() -> None:
    text = "One. Two three! Four five six"
    assert rollback_point(text, text.index("five")) == text.index("Four")
    assert rollback_point(text, text.index("three")) == text.index("Two")
    assert rollback_point(text, 2) == 0
    assert rollback_point(text, text.index("five"), released=text.index("five")) == text.index(
        "five")
    cjk = "好的。这是步骤。然后制作"
    assert rollback_point(cjk, cjk.index("制作")) == cjk.index("然后")  # 。 ends a sentence
    assert rollback_point("Line one\nLine two", 12) == len("Line one\n")


# -- the loop --------------------------------------------------------------------------------


class ScriptedLLM:
    """Answers with scripted texts, one per try; records what it was asked and whether each
    stream was closed before it ended."""

    def __init__(self, tries: list[str]) -> None:
        self.tries = tries
        self.calls: list[tuple[str, str]] = []
        self.closed: list[bool] = []
        self.produced: list[int] = []

    def stream(self, n: int) -> Iterator[str]:
        k = len(self.produced)
        self.produced.append(0)
        self.closed.append(False)
        try:
            for w in words(self.tries[min(n, len(self.tries) - 1)]):
                self.produced[k] += 1
                yield w
        except GeneratorExit:
            self.closed[k] = True
            raise

    async def astream(self, n: int) -> AsyncIterator[str]:
        k = len(self.produced)
        self.produced.append(0)
        self.closed.append(False)
        try:
            for w in words(self.tries[min(n, len(self.tries) - 1)]):
                self.produced[k] += 1
                await asyncio.sleep(0)
                yield w
        except GeneratorExit:
            self.closed[k] = True
            raise

    def regenerate(self, kept: str, instruction: str) -> Iterator[str]:
        self.calls.append((kept, instruction))
        return self.stream(len(self.calls))

    def aregenerate(self, kept: str, instruction: str) -> AsyncIterator[str]:
        self.calls.append((kept, instruction))
        return self.astream(len(self.calls))


def test_unsafe_midway_then_safe_gives_one_clean_answer(guard: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE + "More words follow here. ", REPAIR])
    record = Intervention()
    shown = "".join(intervene(guard, PROMPT, llm.stream(0), llm.regenerate, record=record))
    assert shown == SAFE + REPAIR  # the kept prefix and the safe continuation, as one answer
    assert "bomb" not in shown and record.retries == 1 and not record.refused
    kept, instruction = llm.calls[0]
    assert kept == SAFE and SAFE in instruction and "Violent" in instruction
    assert llm.closed[0] and llm.produced[0] < len(words(SAFE + UNSAFE + "More words follow here. "))
    assert record.attempts[0].flagged and not record.attempts[1].flagged
    assert "bomb" in record.flagged_spans[0]


def test_unsafe_on_every_try_ends_with_the_refusal(guard: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE, UNSAFE, UNSAFE])
    record = Intervention()
    shown = "".join(intervene(guard, PROMPT, llm.stream(0), llm.regenerate, record=record,
                              max_retries=3))
    assert "bomb" not in shown
    assert shown.endswith(DEFAULT_REFUSAL_MESSAGE) and record.refused
    assert record.retries == 3 and len(llm.calls) == 3
    assert all(llm.closed[:-1]) or all(llm.produced)  # every abandoned try was stopped


def test_buffer_zero_still_never_shows_the_unsafe_span(guard: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE, REPAIR])
    shown = "".join(intervene(guard, PROMPT, llm.stream(0), llm.regenerate, buffer_tokens=0))
    assert "bomb" not in shown and shown.endswith(REPAIR)


def test_the_buffer_holds_text_back_behind_the_head(guard: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + REPAIR])
    record = Intervention()
    out = list(intervene(guard, PROMPT, llm.stream(0), llm.regenerate, record=record,
                         buffer_tokens=8))
    assert "".join(out) == SAFE + REPAIR and record.retries == 0
    assert max(record.lag_tokens) >= 8


async def test_async_intervention_matches_sync(guard: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE + "More words follow here. ", REPAIR])
    record = Intervention()
    shown = ""
    async for text in aintervene(guard, PROMPT, llm.astream(0), llm.aregenerate, record=record):
        shown += text
    assert shown == SAFE + REPAIR and record.retries == 1
    assert llm.closed[0]


def test_gen_only_guard_intervenes_too(gen_guard: Qwen3Guard) -> None:
    llm = ScriptedLLM([SAFE + UNSAFE + "More words follow here. ", REPAIR])
    shown = "".join(intervene(gen_guard, PROMPT, llm.stream(0), llm.regenerate,
                              fallback_every=4))
    assert "bomb" not in shown and shown.endswith(REPAIR)
