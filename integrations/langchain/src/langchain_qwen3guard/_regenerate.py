"""Roll back and regenerate a flagged answer of a LangChain chat model (issue 13).

The loop is the core's (:func:`qwen3guard.stream.intervene.intervene` / ``aintervene``): text
is released once settled and ``buffer_tokens`` behind the moderation head; on a flag the
unreleased text is dropped from the start of the flagged sentence, the LLM's stream is closed,
and the LLM is asked to continue the kept prefix, at most ``max_retries`` times, then the
answer ends with the refusal message. This module is the LangChain side of it:

- **How the LLM continues** (``continuation``): ``"prefill"`` sends the prompt plus an
  ``AIMessage`` holding the kept prefix (the model continues the same assistant message);
  ``"instruction"`` sends the prompt plus a user message with the corrective instruction, which
  holds the kept prefix, and splices the new answer after it. ``"auto"`` uses prefill where the
  model is known to support it (Anthropic's chat models, :data:`PREFILL_MODELS`), else the
  instruction. Either way the white space the kept prefix ends with is not
  doubled by the continuation's leading white space.
- **One answer.** The released text is mapped back onto the LLM's own chunks (their content
  blocks and metadata kept; a chunk cut by a rollback becomes a text chunk of its kept part),
  so the reader gets one message: the kept prefix and the continuation, never a character of
  the dropped text. Chunk ids are left to the caller's run (one message id).
- **Tool calls** of the try that is kept are held until the answer has ended and judged (Gen,
  surface ``tool_call``); those of an abandoned try are dropped. A blocked tool call ends the
  answer with the refusal message, as a blocked prompt is answered with it.
- **Record.** When a try was flagged, the last chunk carries
  ``response_metadata["qwen3guard"]["intervention"]`` (retries, refused, the flag decisions;
  never the flagged text); a refusal also carries the decision's :meth:`Decision.to_dict`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableBinding

from qwen3guard import (
    METADATA_KEY,
    Decision,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    Surface,
    UnsafeContentError,
)
from qwen3guard.stream.intervene import Intervention, aintervene, intervene

from ._convert import chunk_text, has_tool_call_data
from ._streaming import arun, held_items, run, screen_prompt

Continuation = Literal["auto", "prefill", "instruction"]
Mode = Literal["prefill", "instruction"]

#: Chat model classes whose providers continue a final assistant message (assistant prefill).
PREFILL_MODELS = frozenset({"ChatAnthropic", "ChatAnthropicVertex"})

Items = list[tuple[list[dict[str, str]], Surface]]


def resolve_continuation(llm: Any, continuation: str) -> Mode:
    """How ``llm`` is asked to continue a kept prefix (see the module docstring)."""
    if continuation in ("prefill", "instruction"):
        return continuation  # type: ignore[return-value]
    if continuation != "auto":
        raise ValueError(f"continuation must be 'auto', 'prefill' or 'instruction', not "
                         f"{continuation!r}")
    inner = _unwrap(llm)
    return "prefill" if type(inner).__name__ in PREFILL_MODELS else "instruction"


def _unwrap(llm: Any) -> Any:
    while True:
        if isinstance(llm, RunnableBinding):
            llm = llm.bound
        elif type(llm).__name__ == "Qwen3GuardChatModel":
            llm = llm.llm
        else:
            return llm


def continuation_messages(
    messages: list[BaseMessage], kept: str, instruction: str, mode: Mode
) -> tuple[list[BaseMessage], bool]:
    """The request for a continuation of ``kept``, and whether the continuation's leading
    white space is dropped when it is spliced after ``kept``."""
    body = kept.rstrip()
    strip = body != kept or not kept
    if mode == "prefill" and body.strip():
        last = messages[-1] if messages else None
        if isinstance(last, AIMessage) and isinstance(last.content, str) and not last.tool_calls:
            # the caller's own prefill: the kept prefix continues it
            return [*messages[:-1], AIMessage(content=last.content + body)], strip
        return [*messages, AIMessage(content=body)], strip
    return [*messages, HumanMessage(content=instruction)], strip


@dataclass
class RegenerateRules:
    """What one regenerated answer needs (built by the chat model, or by the middleware)."""

    guard: Qwen3Guard
    policy: Policy
    prompt: Any  # the guard conversation the answer is judged after (None: not known)
    prompt_text: str  # the content a blocked prompt is reported with
    check_prompt: bool
    mode: Mode
    refusal: Callable[[Decision], str]  # the text that ends a refused answer
    to_chunk: Callable[[Any], ChatGenerationChunk]  # what the LLM streams -> a chunk
    buffer_tokens: int
    max_retries: int
    instruction: str
    record: Intervention | None = None  # filled in as the answer streams

    def options(self, record: Intervention) -> dict[str, Any]:
        return {"policy": self.policy, "buffer_tokens": self.buffer_tokens,
                "max_retries": self.max_retries, "instruction": self.instruction,
                "record": record}


class _Piece:
    __slots__ = ("chunk", "end", "start", "text", "whole")

    def __init__(self, start: int, chunk: ChatGenerationChunk, text: str) -> None:
        self.start, self.end = start, start + len(text)
        self.chunk, self.text, self.whole = chunk, text, True


class _Splice:
    """The LLM's chunks of every try, mapped onto the released text (shared by the sync and
    async drivers)."""

    def __init__(self, rules: RegenerateRules, messages: list[BaseMessage]) -> None:
        self.rules = rules
        self.messages = messages
        self.record = rules.record if rules.record is not None else Intervention()
        self.pending: deque[_Piece] = deque()
        self.tools: list[ChatGenerationChunk] = []
        self.fed = 0  # answer offset of the next chunk's text
        self.out = 0  # answer offset released so far
        self.strip = False
        self.calls = 0  # LLM streams started
        self.refused = False

    # -- what goes in --------------------------------------------------------------------------

    def add(self, raw: Any) -> str:
        """Register one chunk of the LLM; return the text it adds to the answer."""
        chunk = self.rules.to_chunk(raw)
        message = chunk.message
        if has_tool_call_data(message):
            self.tools.append(chunk)
            return ""
        text = chunk_text(message)
        if self.strip and text:
            stripped = text.lstrip()
            if stripped:
                self.strip = False
            if stripped != text:
                chunk, text = _text_chunk(stripped, message), stripped
        self.pending.append(_Piece(self.fed, chunk, text))
        self.fed += len(text)
        return text

    def retry(self, kept: str, instruction: str) -> list[BaseMessage]:
        """Drop what follows ``kept`` (the abandoned try); the request for the next try."""
        point = len(kept)
        keep: deque[_Piece] = deque()
        for p in self.pending:
            if p.end <= point and not (p.start == p.end == point):
                keep.append(p)
            elif p.start < point:
                p.text, p.end, p.whole = p.text[: point - p.start], point, False
                keep.append(p)
        self.pending, self.fed = keep, point
        self.tools.clear()
        request, self.strip = continuation_messages(self.messages, kept, instruction,
                                                    self.rules.mode)
        return request

    # -- what comes out ------------------------------------------------------------------------

    def released(self, text: str) -> list[ChatGenerationChunk]:
        """The chunks that carry ``text``, the next released text of the answer."""
        if self.record.refused:
            if self.refused:
                return []
            self.refused = True
            self.pending.clear()
            self.tools.clear()
            return [self._refusal(self._last_flag())]
        target = self.out + len(text)
        out: list[ChatGenerationChunk] = []
        covered = self.out
        while self.pending and self.pending[0].start <= target:
            p = self.pending[0]
            if p.end <= target:
                self.pending.popleft()
                out.append(_emit(p.chunk) if p.whole else _text_chunk(p.text, p.chunk.message))
                covered = p.end
                continue
            cut = target - p.start
            if cut > 0:
                out.append(_text_chunk(p.text[:cut], p.chunk.message))
                p.text, p.start, p.whole = p.text[cut:], target, False
            covered = target
            break
        if target > covered:  # text no chunk holds (not expected): passed on as it is
            out.append(_text_chunk(text[len(text) - (target - covered):], None))
        self.out = target
        return out

    def tool_items(self) -> Items:
        if self.refused or not self.tools:
            return []
        return held_items([c.message for c in self.tools], self.rules.prompt)

    def finish(self, decisions: list[Decision]) -> list[ChatGenerationChunk]:
        """The end of the answer: the kept try's tool calls (``decisions`` judged them) and
        the record."""
        out: list[ChatGenerationChunk] = []
        if not self.refused:
            out.extend(_emit(p.chunk) for p in self.pending if p.start == p.end)
            self.pending.clear()
            blocked = next((d for d in decisions if d.blocked), None)
            if blocked is not None:
                self.refused = True
                return out + [self._refusal(blocked)]
            out.extend(_emit(c) for c in self.tools)
        if self.record.retries and not self.refused:
            meta = {METADATA_KEY: {"intervention": self._summary()}}
            out.append(ChatGenerationChunk(message=AIMessageChunk(content="",
                                                                  response_metadata=meta)))
        return out

    def prompt_blocked(self, decision: Decision) -> list[ChatGenerationChunk]:
        return [self._refusal(decision, summary=False)]

    def _refusal(self, decision: Decision | None, *, summary: bool = True) -> ChatGenerationChunk:
        decision = decision or Decision(False, None, Surface.OUTPUT, "flagged")
        meta: dict[str, Any] = decision.to_dict()
        if summary:
            meta["intervention"] = self._summary()
        metadata = {METADATA_KEY: meta}
        return ChatGenerationChunk(
            message=AIMessageChunk(content=self.rules.refusal(decision),
                                   response_metadata=metadata),
            generation_info=metadata,
        )

    def _last_flag(self) -> Decision | None:
        flagged = [a.decision for a in self.record.attempts if a.flagged]
        return flagged[-1] if flagged else None

    def _summary(self) -> dict[str, Any]:
        return {
            "retries": self.record.retries,
            "refused": self.refused,
            "decisions": [a.decision.to_dict() for a in self.record.attempts
                          if a.flagged and a.decision is not None],
        }


def _emit(chunk: ChatGenerationChunk) -> ChatGenerationChunk:
    """A chunk as the guarded model passes it on: the caller's run names the message, and the
    answer's last chunk is the caller's to mark."""
    message = chunk.message
    update: dict[str, Any] = {"id": None}
    if getattr(message, "chunk_position", None) is not None:
        update["chunk_position"] = None
    return ChatGenerationChunk(message=message.model_copy(update=update),
                               generation_info=chunk.generation_info)


def _text_chunk(text: str, like: BaseMessage | None) -> ChatGenerationChunk:
    meta = dict(like.response_metadata) if like is not None else {}
    return ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=meta))


# -- the drivers ---------------------------------------------------------------------------------


Call = Callable[[list[BaseMessage]], Iterable[Any]]
ACall = Callable[[list[BaseMessage]], AsyncIterable[Any]]


def regenerate_stream(
    call: Call, messages: list[BaseMessage], rules: RegenerateRules
) -> Iterator[ChatGenerationChunk]:
    """The moderated answer to ``messages``: ``call(request)`` streams one try of the LLM."""
    splice = _Splice(rules, messages)

    def source(request: list[BaseMessage]) -> Iterator[str]:
        splice.calls += 1
        it = iter(call(request))
        try:
            for raw in it:
                text = splice.add(raw)
                if text:
                    yield text
        finally:
            close = getattr(it, "close", None)
            if callable(close):
                close()  # the abandoned try's LLM stream stops

    def again(kept: str, instruction: str) -> Iterator[str]:
        return source(splice.retry(kept, instruction))

    prompt = rules.prompt
    while True:
        try:
            for text in intervene(rules.guard, prompt, source(messages), again,
                                  **rules.options(splice.record)):
                yield from splice.released(text)
            break
        except (UnsafeContentError, InvalidInputError) as exc:
            fallback = _prompt_fallback(exc, splice, prompt)
            if fallback is None:
                raise
            decision = fallback if isinstance(fallback, Decision) else (
                run(screen_prompt(rules.guard, prompt, rules.policy))
                if rules.check_prompt else None)
            if rules.check_prompt and decision is not None and decision.blocked:
                yield from splice.prompt_blocked(decision)
                return
            prompt = None  # the answer is judged without the prompt
    items = splice.tool_items()
    decisions = rules.guard.screen_batch(items, policy=rules.policy) if items else []
    yield from splice.finish(decisions)


async def aregenerate_stream(
    call: ACall, messages: list[BaseMessage], rules: RegenerateRules
) -> AsyncIterator[ChatGenerationChunk]:
    """The async form of :func:`regenerate_stream`; cancelling it closes the LLM's stream."""
    splice = _Splice(rules, messages)

    async def source(request: list[BaseMessage]) -> AsyncIterator[str]:
        splice.calls += 1
        it = aiter(call(request))
        try:
            async for raw in it:
                text = splice.add(raw)
                if text:
                    yield text
        finally:
            aclose = getattr(it, "aclose", None)
            if callable(aclose):
                await aclose()

    def again(kept: str, instruction: str) -> AsyncIterator[str]:
        return source(splice.retry(kept, instruction))

    prompt = rules.prompt
    while True:
        try:
            async for text in aintervene(rules.guard, prompt, source(messages), again,
                                         **rules.options(splice.record)):
                for chunk in splice.released(text):
                    yield chunk
            break
        except (UnsafeContentError, InvalidInputError) as exc:
            fallback = _prompt_fallback(exc, splice, prompt)
            if fallback is None:
                raise
            decision = fallback if isinstance(fallback, Decision) else (
                await arun(screen_prompt(rules.guard, prompt, rules.policy))
                if rules.check_prompt else None)
            if rules.check_prompt and decision is not None and decision.blocked:
                for chunk in splice.prompt_blocked(decision):
                    yield chunk
                return
            prompt = None
    items = splice.tool_items()
    decisions = await rules.guard.ascreen_batch(items, policy=rules.policy) if items else []
    for chunk in splice.finish(decisions):
        yield chunk


def _prompt_fallback(exc: Exception, splice: _Splice, prompt: Any) -> Decision | bool | None:
    """An error before the LLM was called, from opening the session on the prompt: the
    prompt's decision (it was blocked), True (the Stream session cannot take the prompt: judge
    it with Gen), or None (anything else: raised)."""
    if splice.calls or prompt is None:
        return None
    if isinstance(exc, UnsafeContentError):
        if exc.stage != Surface.INPUT:
            return None
        decision = exc.decision
        return decision if decision is not None else Decision(False, exc.verdict, Surface.INPUT,
                                                              "blocked")
    return True
