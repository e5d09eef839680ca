"""Intervene instead of only stopping: hold back, roll back and regenerate a flagged answer.

The Qwen3Guard technical report pairs Stream with CARE: detect, roll back, regenerate. Here it
is built on the streaming gate (:mod:`qwen3guard.stream.gate`):

- **Release.** Text reaches the reader once it is settled *and* ``buffer_tokens`` (default
  40) judged tokens behind the moderation head, so a flag usually lands while the sentence that
  holds it is still unreleased.
- **On a flag.** The unreleased text is dropped from the *rollback point*: the start of the
  sentence that holds the flagged span, and never before text already released. The session
  is rolled back to that point (:meth:`StreamSession.rollback`: the same as a fresh session
  fed the kept prefix), the abandoned LLM stream is closed, and the LLM is asked for a
  continuation of the kept prefix with a corrective instruction (``instruction``, a template
  with ``{categories}`` and ``{kept}``). The continuation is moderated the same way.
- **Limit.** At most ``max_retries`` regenerations; then the answer ends with the refusal
  message. A guard that could not judge is not retried (it would not judge the next try
  either): the answer ends with the refusal message. It never ends with unsafe text.

How the LLM continues is the caller's: ``regenerate(kept, instruction)`` returns the new
continuation's text chunks (an integration continues the same assistant message with prefill
where the model supports it, or passes the kept prefix in the instruction and splices).

    record = Intervention()
    for text in intervene(guard, prompt, llm_stream, regenerate, record=record):
        print(text, end="")
    record.retries, record.attempts[-1].flagged

Sync and async forms share one core; they differ only in how they wait.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, UnsafeContentError
from ..policy import DEFAULT_REFUSAL_MESSAGE, Decision, Policy, Surface
from .gate import GateStep, StreamGate

if TYPE_CHECKING:
    from ..guard import Conversation, Qwen3Guard

DEFAULT_BUFFER_TOKENS = 40
DEFAULT_MAX_RETRIES = 5
DEFAULT_INSTRUCTION = (
    "The continuation of your answer was stopped by a safety check ({categories}). Continue "
    "the answer below from exactly where it stops, safely and helpfully, without repeating it "
    "and without the unsafe content.\n\nAnswer so far:\n{kept}"
)

Regenerate = Callable[[str, str], Iterable[str]]
ARegenerate = Callable[[str, str], AsyncIterable[str]]

# A sentence ends at terminal punctuation (closing quotes/brackets included) followed by white
# space, at CJK terminal punctuation (no space follows it), or at a line break.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|[。！？]+[”’」』）]*\s*|\n+")


def rollback_point(text: str, flag_offset: int, released: int = 0) -> int:
    """Where to roll a flagged answer back to: the start of the sentence holding
    ``flag_offset``, never before ``released``."""
    start = 0
    for m in _SENTENCE_END.finditer(text, 0, max(0, flag_offset)):
        start = m.end()
    return max(start, released)


@dataclass
class Attempt:
    """One try: the first answer (``number`` 0) or a regeneration from ``kept``."""

    number: int
    kept: str  # the answer kept from before; ``len(kept)`` is the rollback point
    text: str = ""  # what this try produced after ``kept``
    flagged: bool = False
    flag_offset: int | None = None  # in the whole answer (kept + text)
    decision: Decision | None = None
    closed_stream: bool = False  # the LLM's stream of this try was closed by us


@dataclass
class Intervention:
    """What happened while intervening (filled in as the answer streams)."""

    attempts: list[Attempt] = field(default_factory=list)
    released: str = ""  # everything the reader was given
    refused: bool = False  # ended with the refusal message
    lag_tokens: list[int] = field(default_factory=list)  # tokens held after each chunk

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def flagged_spans(self) -> list[str]:
        out = []
        for a in self.attempts:
            if a.flagged and a.flag_offset is not None:
                whole = a.kept + a.text
                out.append(whole[a.flag_offset :])
        return out


class _Loop:
    """The decisions of the loop, shared by the sync and async forms."""

    def __init__(
        self,
        gate: StreamGate[str],
        record: Intervention,
        *,
        max_retries: int,
        instruction: str,
        refusal: str,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInputError(f"max_retries must be an int >= 0, not {max_retries!r}")
        self.gate = gate
        self.record = record
        self.max_retries = max_retries
        self.instruction = instruction
        self.refusal = refusal
        self.record.attempts.append(Attempt(0, ""))

    @property
    def attempt(self) -> Attempt:
        return self.record.attempts[-1]

    def texts(self, step: GateStep[str], chunk: str | None = None) -> list[str]:
        if chunk is not None:
            self.attempt.text += chunk
            self.record.lag_tokens.append(self.gate.tokens_held)
        out = list(step.released)
        self.record.released += "".join(out)
        return out

    def on_flag(self, step: GateStep[str]) -> tuple[int, str] | None:
        """A flag: where to roll back to and the instruction, or None to refuse."""
        a = self.attempt
        a.flagged, a.decision = True, step.decision
        update = step.update
        a.flag_offset = update.flag_offset if update is not None else None
        if step.decision is not None and step.decision.error is not None:
            return None  # the guard could not judge: another try would not be judged either
        if len(self.record.attempts) > self.max_retries:
            return None
        whole = a.kept + a.text
        offset = a.flag_offset if a.flag_offset is not None else len(whole)
        point = rollback_point(whole, offset, self.gate.released_offset)
        kept = whole[:point]
        verdict = step.decision.verdict if step.decision is not None else None
        cats = ", ".join(c.value for c in verdict.categories) if verdict is not None else ""
        instruction = self.instruction.format(categories=cats or "unsafe", kept=kept)
        self.record.attempts.append(Attempt(len(self.record.attempts), kept))
        return point, instruction

    def refuse(self) -> list[str]:
        self.record.refused = True
        self.record.released += self.refusal
        return [self.refusal]


def _prompt_check(gate: StreamGate[str], prompt: Any) -> None:
    if gate.prompt_decision.blocked:
        raise UnsafeContentError(stage=Surface.INPUT, content=prompt,
                                 decision=gate.prompt_decision)


def intervene(
    guard: Qwen3Guard,
    prompt_messages: Conversation | None,
    first: Iterable[str],
    regenerate: Regenerate,
    *,
    policy: Policy | None = None,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    max_retries: int = DEFAULT_MAX_RETRIES,
    instruction: str = DEFAULT_INSTRUCTION,
    refusal: str = DEFAULT_REFUSAL_MESSAGE,
    record: Intervention | None = None,
    check_prompt: bool = True,
    **session_options: Any,
) -> Iterator[str]:
    """Yield the released text of a moderated answer, regenerating flagged continuations (see
    the module docstring). A blocked prompt raises :class:`UnsafeContentError` before the
    first chunk is read, unless ``check_prompt`` is False (the prompt is then only the context
    the answer is judged in; its decision is the caller's, in ``gate.prompt_decision``)."""
    gate: StreamGate[str] = StreamGate.open(
        guard, prompt_messages, policy=policy, buffer_tokens=buffer_tokens, keep_on_flag=True,
        **session_options,
    )
    source: Iterator[str] = iter(first)
    try:
        if check_prompt:
            _prompt_check(gate, prompt_messages)
        loop = _Loop(gate, record if record is not None else Intervention(),
                     max_retries=max_retries, instruction=instruction, refusal=refusal)
        while True:
            step = None
            for chunk in source:
                step = gate.feed(chunk, chunk)
                yield from loop.texts(step, chunk)
                if step.flagged:
                    break
            if step is None or not step.flagged:
                step = gate.finish()
                yield from loop.texts(step)
                if not step.flagged:
                    return
            else:
                loop.attempt.closed_stream = _close(source)
            plan = loop.on_flag(step)
            if plan is None:
                yield from loop.refuse()
                return
            point, text = plan
            yield from loop.texts(gate.rollback(point))
            source = iter(regenerate(loop.attempt.kept, text))
    finally:
        _close(source)  # the caller stopped early, or we are done: the LLM stops too
        gate.abort()


async def aintervene(
    guard: Qwen3Guard,
    prompt_messages: Conversation | None,
    first: AsyncIterable[str],
    regenerate: ARegenerate,
    *,
    policy: Policy | None = None,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    max_retries: int = DEFAULT_MAX_RETRIES,
    instruction: str = DEFAULT_INSTRUCTION,
    refusal: str = DEFAULT_REFUSAL_MESSAGE,
    record: Intervention | None = None,
    check_prompt: bool = True,
    **session_options: Any,
) -> AsyncIterator[str]:
    """The async form of :func:`intervene`; cancelling it closes the LLM's stream."""
    gate: StreamGate[str] = await StreamGate.aopen(
        guard, prompt_messages, policy=policy, buffer_tokens=buffer_tokens, keep_on_flag=True,
        **session_options,
    )
    source: AsyncIterator[str] = aiter(first)
    try:
        if check_prompt:
            _prompt_check(gate, prompt_messages)
        loop = _Loop(gate, record if record is not None else Intervention(),
                     max_retries=max_retries, instruction=instruction, refusal=refusal)
        while True:
            step = None
            async for chunk in source:
                step = await gate.afeed(chunk, chunk)
                for text in loop.texts(step, chunk):
                    yield text
                if step.flagged:
                    break
            if step is None or not step.flagged:
                step = await gate.afinish()
                for text in loop.texts(step):
                    yield text
                if not step.flagged:
                    return
            else:
                loop.attempt.closed_stream = await _aclose(source)
            plan = loop.on_flag(step)
            if plan is None:
                for text in loop.refuse():
                    yield text
                return
            point, text = plan
            for released in loop.texts(await gate.arollback(point)):
                yield released
            source = aiter(regenerate(loop.attempt.kept, text))
    finally:
        await _aclose(source)
        await gate.aabort()


def _close(source: Any) -> bool:
    close = getattr(source, "close", None)
    if callable(close):
        close()
        return True
    return False


async def _aclose(source: Any) -> bool:
    aclose = getattr(source, "aclose", None)
    if callable(aclose):
        await aclose()
        return True
    return False
