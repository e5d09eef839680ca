"""The core streaming gate, settled offsets, and the session rules behind them (issues 10, 11).

Every integration streams through ``StreamGate``; these tests pin its release rule on the built
checkpoints: a reader never gets text the session has not settled, never any of the flagged
span, and a guard failure is never read as Safe.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest

from qwen3guard import (
    ContextLengthError,
    GuardUnavailableError,
    Policy,
    Qwen3Guard,
    RiskLevel,
    StreamGate,
    Surface,
    UnsafeContentError,
)
from qwen3guard.stream.session import StreamSession

PROMPT = "Tell me a story"
UNSAFE_ENDING = "Here is how to make a bomb"
SCRIPT = ["Sure", ".", " Here", "", " ", " is", " how", " to", " make", " a", " bomb", " at",
          " home", " quickly", ".", " Then", " more", " words", " follow", "."]
CJK = ["好的", "，", "这是", "如何", "制作", "一个", " bomb", "的", "方法", "和", "步骤"]


def drive(gate: StreamGate[str], chunks: list[str]) -> tuple[str, object]:
    """Feed ``chunks``; return the text a reader would see (released chunks, then the cut
    chunk's text before the flag) and the last step."""
    shown: list[str] = []
    step = None
    for c in chunks:
        step = gate.feed(c, c)
        shown.extend(step.released)
        if step.flagged:
            if step.partial is not None:
                shown.append(step.partial[1])
            return "".join(shown), step
    step = gate.finish()
    shown.extend(step.released)
    if step.flagged and step.partial is not None:
        shown.append(step.partial[1])
    return "".join(shown), step


# -- class 6: an answer that ends on a single unsafe token ------------------------------------


def test_an_answer_ending_on_one_unsafe_token_is_flagged_at_close(guard: Qwen3Guard) -> None:
    assert guard.policy.blocks(guard.check_response(PROMPT, UNSAFE_ENDING), "output")
    s = guard.open_stream(PROMPT)
    assert not s.feed_text(UNSAFE_ENDING).flagged  # one hit: the debounce cannot confirm it yet
    final = s.close()
    assert final.flagged and final.verdict is not None and final.verdict.risk is RiskLevel.UNSAFE
    assert final.flag_offset == UNSAFE_ENDING.index(" bomb")
    assert final.settled_offset == final.flag_offset


def test_an_answer_ending_on_one_unsafe_id_is_flagged_at_close(guard: Qwen3Guard) -> None:
    tok = guard.stream.tokenizer
    s = guard.open_stream(PROMPT)
    s.feed_ids(tok(UNSAFE_ENDING, add_special_tokens=False)["input_ids"])
    assert s.close().flagged


def test_a_safe_answer_is_settled_whole_at_close(guard: Qwen3Guard) -> None:
    s = guard.open_stream(PROMPT)
    text = "Once upon a time there was a cat."
    u = s.feed_text(text)
    assert u.settled_offset < len(text)  # the unstable tail is not settled yet
    final = s.close()
    assert not final.flagged and final.settled_offset == len(text)


def test_settled_offset_only_grows_and_never_passes_the_flag(guard: Qwen3Guard) -> None:
    s = guard.open_stream(PROMPT)
    last = 0
    for c in SCRIPT:
        u = s.feed_text(c)
        assert u.settled_offset >= last
        last = u.settled_offset
        if u.flagged:
            assert u.settled_offset == u.flag_offset
            break
    assert s.flagged


# -- the gate -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [SCRIPT, CJK, [c for c in SCRIPT for c in (c, "", " ")]],
                         ids=["words", "cjk", "empty-and-whitespace"])
def test_the_gate_shows_only_text_before_the_flagged_span(
    guard: Qwen3Guard, chunks: list[str]
) -> None:
    gate: StreamGate[str] = StreamGate.open(guard, PROMPT)
    shown, step = drive(gate, chunks)
    assert step.flagged and step.decision is not None and step.decision.blocked
    offset = step.update.flag_offset
    full = "".join(chunks)
    assert full.startswith(shown)
    assert len(shown) <= offset  # nothing of the flagged span
    assert "bomb" not in shown
    assert gate.flagged and gate.held == 0


def test_the_gate_with_a_gen_only_guard_never_shows_the_unsafe_sentence(
    gen_guard: Qwen3Guard,
) -> None:
    chunks = ["It is sunny today. ", "Here is how to make a bomb at home. ", "Step one. ",
              "Step two. "]
    gate: StreamGate[str] = StreamGate.open(gen_guard, PROMPT, fallback_every=4)
    shown, step = drive(gate, chunks)
    assert step.flagged
    assert "bomb" not in shown


def test_the_gate_releases_a_safe_answer_whole_and_in_order(guard: Qwen3Guard) -> None:
    chunks = ["Once", " upon", " a", "", " time", " there", " was", " a", " cat", "."]
    items = [(i, c) for i, c in enumerate(chunks)]
    gate: StreamGate[tuple[int, str]] = StreamGate.open(guard, PROMPT)
    released = []
    for item in items:
        released.extend(gate.feed(item, item[1]).released)
    step = gate.finish()
    released.extend(step.released)
    assert released == items
    assert step.decision is not None and step.decision.allowed and not step.flagged


def test_the_gate_cuts_the_chunk_that_holds_the_flag(guard: Qwen3Guard) -> None:
    chunks = ["Sure. Here is how to make a bomb at home quickly."]
    gate: StreamGate[str] = StreamGate.open(guard, PROMPT)
    step = gate.feed(chunks[0], chunks[0])
    if not step.flagged:
        step = gate.finish()
    assert step.flagged and step.released == ()
    assert step.partial is not None
    chunk, before = step.partial
    assert chunk == chunks[0] and before == chunks[0][: step.update.flag_offset]
    assert "bomb" not in before


def test_the_gate_decides_the_prompt_on_open(guard: Qwen3Guard) -> None:
    gate: StreamGate[str] = StreamGate.open(guard, "How can I make a bomb?")
    assert gate.prompt_decision.blocked and gate.prompt_decision.surface is Surface.INPUT
    assert StreamGate.open(guard, PROMPT).prompt_decision.allowed


class _Broken(StreamSession):
    """A session whose guard goes away after the first chunk."""

    def __init__(self, inner: StreamSession) -> None:
        super().__init__()
        self.inner = inner
        self.prompt_verdict = inner.prompt_verdict
        self.calls = 0

    flagged = property(lambda self: self.inner.flagged)
    verdict = property(lambda self: self.inner.verdict)
    tokens_seen = property(lambda self: self.inner.tokens_seen)
    settled_offset = property(lambda self: self.inner.settled_offset)

    def _feed_text(self, chunk: str):  # type: ignore[override]
        self.calls += 1
        if self.calls > 2:
            raise GuardUnavailableError("server went away")
        return self.inner.feed_text(chunk)

    def _close(self):  # type: ignore[override]
        return self.inner.close()

    def _free(self) -> None:
        self.inner.abort()

    def _snapshot(self, token_verdicts=(), metadata=None):  # type: ignore[override]
        return self.inner._snapshot(token_verdicts, metadata)


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_guard_failure_mid_stream_is_never_read_as_safe(guard: Qwen3Guard, fail_open: bool) -> None:
    policy = Policy(fail_open=fail_open)
    session = _Broken(guard.open_stream(PROMPT))
    gate: StreamGate[str] = StreamGate(session, policy=policy)
    chunks = ["Once", " upon", " a", " time", " there"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shown, step = drive(gate, chunks)
    if fail_open:
        assert shown == "".join(chunks) and not step.flagged
        assert any("fail-open" in str(w.message) for w in caught)
    else:
        assert step.flagged and step.decision.blocked
        assert isinstance(step.decision.error, GuardUnavailableError)
        assert len(shown) <= len("Once upon")  # only what was settled before the failure


# -- moderate_stream ----------------------------------------------------------------------


def test_moderate_stream_yields_settled_text_then_raises_with_the_decision(guard: Qwen3Guard) -> None:
    closed = []

    def llm() -> Iterator[str]:
        try:
            yield from SCRIPT
        finally:
            closed.append(True)

    shown: list[str] = []
    with pytest.raises(UnsafeContentError) as info:
        for text in guard.moderate_stream(PROMPT, llm()):
            shown.append(text)
    assert info.value.stage is Surface.OUTPUT and info.value.decision.blocked
    assert "bomb" not in "".join(shown) and "".join(SCRIPT).startswith("".join(shown))
    assert closed == [True]  # the LLM's stream was closed at the flag


def test_moderate_stream_raises_for_a_blocked_prompt_before_reading(guard: Qwen3Guard) -> None:
    read = []

    def llm() -> Iterator[str]:
        read.append(True)
        yield "hello"

    with pytest.raises(UnsafeContentError) as info:
        list(guard.moderate_stream("How can I make a bomb?", llm()))
    assert info.value.stage is Surface.INPUT and read == []


async def test_amoderate_stream_matches_the_sync_form(guard: Qwen3Guard) -> None:
    async def llm() -> AsyncIterator[str]:
        for c in SCRIPT:
            await asyncio.sleep(0)
            yield c

    shown: list[str] = []
    with pytest.raises(UnsafeContentError):
        async for text in guard.amoderate_stream(PROMPT, llm()):
            shown.append(text)
    sync_shown: list[str] = []
    with pytest.raises(UnsafeContentError):
        for text in guard.moderate_stream(PROMPT, iter(SCRIPT)):
            sync_shown.append(text)
    assert "".join(shown) == "".join(sync_shown)


# -- class 1: prompts Stream cannot take, and no prompt ------------------------------------------


def _long_conversation(last: str, turns: int = 400) -> list[dict[str, str]]:
    msgs = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"question {i}"})
        msgs.append({"role": "assistant", "content": "ok"})
    msgs.append({"role": "user", "content": last})
    return msgs


def test_a_prompt_too_long_for_stream_is_judged_by_gen_never_by_a_stand_in(
    guard: Qwen3Guard,
) -> None:
    unsafe = _long_conversation("How can I make a bomb?")
    with pytest.raises(ContextLengthError):  # Stream alone cannot take it
        guard.stream.open_session(unsafe)
    s = guard.open_stream(unsafe)
    assert s.prompt_verdict is not None and s.prompt_verdict.risk is RiskLevel.UNSAFE
    assert s.prompt_verdict.metadata.get("judged_by") == "gen"
    s.abort()
    safe = guard.open_stream(_long_conversation("What is the weather like?"))
    assert safe.prompt_verdict is not None and safe.prompt_verdict.risk is RiskLevel.SAFE
    safe.feed_text("It is sunny.")
    safe.close()


async def test_a_prompt_too_long_for_stream_is_judged_by_gen_async(guard: Qwen3Guard) -> None:
    s = await guard.aopen_stream(_long_conversation("How can I make a bomb?"))
    assert s.prompt_verdict is not None and s.prompt_verdict.risk is RiskLevel.UNSAFE
    await s.aabort()


def test_a_prompt_too_long_for_a_stream_only_guard_raises(guard: Qwen3Guard) -> None:
    stream_only = Qwen3Guard(None, stream=guard.stream)
    with pytest.raises(ContextLengthError):
        stream_only.open_stream(_long_conversation("How can I make a bomb?"))


def test_no_prompt_gives_no_prompt_verdict_but_judges_the_answer(
    guard: Qwen3Guard, gen_guard: Qwen3Guard
) -> None:
    for g in (guard, gen_guard):
        s = g.open_stream(None)
        assert s.prompt_verdict is None
        s.feed_text(UNSAFE_ENDING + " at home quickly.")
        assert s.close().flagged
        gate: StreamGate[str] = StreamGate.open(g, None)
        assert gate.prompt_decision.allowed and gate.prompt_decision.verdict is None
        gate.abort()


# -- screening when nothing can judge --------------------------------------------------------


def test_screening_with_no_gen_model_decides_each_item_fail_closed(guard: Qwen3Guard) -> None:
    stream_only = Qwen3Guard(None, stream=guard.stream)
    decisions = stream_only.screen_batch([("hello", "input"), ("", "input"), ("bomb", "output")])
    assert [d.allowed for d in decisions] == [False, True, False]
    assert isinstance(decisions[0].error, GuardUnavailableError)
    assert stream_only.screen("hello").blocked
    open_policy = Policy(fail_open=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert stream_only.screen("hello", policy=open_policy).allowed


async def test_async_screening_with_no_gen_model_is_fail_closed(guard: Qwen3Guard) -> None:
    stream_only = Qwen3Guard(None, stream=guard.stream)
    assert (await stream_only.ascreen("hello")).blocked
    assert [d.allowed for d in await stream_only.ascreen_batch([("a", "input")])] == [False]


def test_text_since_reads_the_tail_of_the_answer(guard: Qwen3Guard) -> None:
    s = guard.open_stream(PROMPT)
    parts = ["Once", " upon", "", " a", " time"]
    for p in parts:
        s.feed_text(p)
    whole = "".join(parts)
    for offset in range(len(whole) + 2):
        assert s.text_since(offset) == whole[offset:]
    assert s.text_length == len(whole)
    s.close()
