"""Streaming moderation without a Stream model: re-check the answer with Gen every N tokens.

Remote-only deployments (a vLLM/SGLang Gen server and no Stream model) still stream safely:
the session keeps the accumulated answer and judges it with Gen (``check_response(prompt,
answer so far)``, which includes refusal and windows for long answers) whenever ``N`` more
tokens have arrived, and once more on close. ``N`` is ``guard.stream_fallback_every`` unless
the session is opened with ``fallback_every=``. The prompt is judged with Gen on open.

Token counts: ``feed_ids`` counts ids; ``feed_text`` counts with the Gen tokenizer when the
backend has one (per chunk, so approximately), else about 4 characters per token.

Flagged means the guard's policy blocks the Gen verdict on the ``output`` surface. A check
that fails (server down, unparseable answer) is never read as Safe: under the default
fail-closed policy it flags (``verdict`` None, the error in ``metadata``); with
``fail_open`` it warns and streaming goes on. ``flag_offset`` is the length of the answer
that the last passing check had judged: the flagged content starts after it. Once flagged,
no further checks are made.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from ..errors import GuardOutputError, GuardUnavailableError, InvalidInputError
from ..messages import normalize_messages
from ..policy import Policy, Surface
from ..verdict import Verdict
from .debounce import MODES
from .retokenize import IncrementalDecoder, encode_plain
from .session import NO_PROMPT, StreamSession
from .types import StreamUpdate, TokenVerdict

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4


class FallbackSession(StreamSession):
    def __init__(
        self,
        guard: Any,
        prompt_messages: Any,
        *,
        fallback_every: int | None = None,
        policy: Policy | None = None,
        debounce: str = "report",
    ) -> None:
        super().__init__()
        if guard.gen is None:
            raise GuardUnavailableError(
                "streaming moderation needs a Stream model or a Gen model; this guard has neither"
            )
        if debounce not in MODES:
            raise InvalidInputError(f"debounce must be one of {MODES}, not {debounce!r}")
        every = guard.stream_fallback_every if fallback_every is None else fallback_every
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise InvalidInputError(f"fallback_every must be a positive int, not {every!r}")
        self.every = every
        self._guard = guard
        self.policy = policy or guard.policy
        self._no_prompt = prompt_messages is None
        self._messages = normalize_messages(list(NO_PROMPT) if self._no_prompt else prompt_messages)
        self._tokenizer = getattr(guard.gen, "tokenizer", None)
        self._decoder: IncrementalDecoder | None = None
        self._tokens = 0
        self._checked_tokens = 0  # tokens_seen at the last check
        self._checked_len = 0  # len(response_text) at the last check
        self._safe_len = 0  # length judged by the last passing check
        self._safe_tokens = 0
        self._verdict: Verdict | None = None
        self._flagged = False
        self._flag_offset: int | None = None
        self._flag_token_index: int | None = None
        self._error: str | None = None
        self.checks_run = 0
        self._ended = False  # closed after the final check (everything judged)

    @classmethod
    def open(cls, guard: Any, prompt_messages: Any, **kwargs: Any) -> FallbackSession:
        s = cls(guard, prompt_messages, **kwargs)
        s.prompt_verdict = None if s._no_prompt else guard.check(s._messages)
        return s

    @classmethod
    async def aopen(cls, guard: Any, prompt_messages: Any, **kwargs: Any) -> FallbackSession:
        s = cls(guard, prompt_messages, **kwargs)
        s.prompt_verdict = None if s._no_prompt else await guard.acheck(s._messages)
        return s

    # -- state ---------------------------------------------------------------------------------

    @property
    def flagged(self) -> bool:
        return self._flagged

    @property
    def verdict(self) -> Verdict | None:
        return self._verdict

    @property
    def tokens_seen(self) -> int:
        return self._tokens

    @property
    def settled_offset(self) -> int:
        """What the last passing check judged: a later check judges the whole answer again, so
        a flag can only be placed after it."""
        if self._flagged and self._flag_offset is not None:
            return self._flag_offset
        return self._text_len if self._ended else self._safe_len

    # -- sync ----------------------------------------------------------------------------------

    def _feed_text(self, chunk: str) -> StreamUpdate:
        snap = self._ingest_text(chunk)
        return self._finish(snap, self._check(snap) if snap else None)

    def _feed_ids(self, ids: list[int]) -> StreamUpdate:
        snap = self._ingest_ids(ids)
        return self._finish(snap, self._check(snap) if snap else None)

    def _close(self) -> StreamUpdate:
        snap = self._due(final=True)
        result = self._check(snap) if snap else None
        self._ended = True
        return self._finish(snap, result, {"closed": True})

    def _check(self, snap: tuple[str, int]) -> tuple[Verdict | None, BaseException | None]:
        self.checks_run += 1
        try:
            return self._guard.check_response(self._messages, snap[0]), None
        except (GuardUnavailableError, GuardOutputError) as exc:
            return None, exc

    # -- async (natively: the Gen backend's own async path) -----------------------------------

    async def _afeed_text(self, chunk: str) -> StreamUpdate:
        with self._lock:
            self._check_feedable()
            snap = self._ingest_text(chunk)
        return self._finish(snap, await self._acheck(snap) if snap else None)

    async def _afeed_ids(self, ids: list[int]) -> StreamUpdate:
        with self._lock:
            self._check_feedable()
            snap = self._ingest_ids(ids)
        return self._finish(snap, await self._acheck(snap) if snap else None)

    async def _aend(self) -> StreamUpdate:
        with self._lock:
            self._check_open()
            if self._end_update is not None:
                return self._end_update
            snap = self._due(final=True)
        result = await self._acheck(snap) if snap else None
        with self._lock:
            if self._end_update is None:
                self._ended = True
                self._end_update = self._finish(snap, result, {"closed": True})
            return self._end_update

    async def _aclose(self) -> StreamUpdate:
        if not self._closed:
            await self._aend()
        return await asyncio.to_thread(self.close)  # the answer is judged: this only frees

    async def _acheck(self, snap: tuple[str, int]) -> tuple[Verdict | None, BaseException | None]:
        self.checks_run += 1
        try:
            return await self._guard.acheck_response(self._messages, snap[0]), None
        except (GuardUnavailableError, GuardOutputError) as exc:
            return None, exc

    async def _arollback(self, offset: int) -> StreamUpdate:
        with self._lock:
            self._check_open()
            kept = self._kept(offset)
            self._forget_answer()
            snap = self._ingest_text(kept) if kept else None
        return self._finish(snap, await self._acheck(snap) if snap else None)

    def _reset_answer(self) -> None:
        self._decoder = None
        self._tokens = self._checked_tokens = self._checked_len = 0
        self._safe_len = self._safe_tokens = 0
        self._verdict = None
        self._flagged = False
        self._flag_offset = self._flag_token_index = None
        self._error = None
        self._ended = False

    # -- internals ---------------------------------------------------------------------------

    def _ingest_text(self, chunk: str) -> tuple[str, int] | None:
        self._decoder = None
        self._append_text(chunk)
        if self._tokenizer is not None:
            self._tokens += len(encode_plain(self._tokenizer, chunk)) if chunk else 0
        else:
            self._tokens = max(self._tokens, -(-self._text_len // CHARS_PER_TOKEN))
        return self._due(final=False)

    def _ingest_ids(self, ids: list[int]) -> tuple[str, int] | None:
        if self._tokenizer is None:
            raise InvalidInputError(
                "feed_ids() needs a tokenizer to read the ids; this guard's Gen backend has "
                "none (remote): use feed_text()"
            )
        if self._decoder is None:
            self._decoder = IncrementalDecoder(self._tokenizer)
        for i in ids:
            self._append_text(self._decoder.step(i))
        self._tokens += len(ids)
        return self._due(final=False)

    def _due(self, *, final: bool) -> tuple[str, int] | None:
        """The (text, tokens) to check now, or None."""
        if self._flagged:
            return None
        text = self.response_text
        if len(text) <= self._checked_len or not text.strip():
            return None
        if not final and self._tokens - self._checked_tokens < self.every:
            return None
        self._checked_len = len(text)
        self._checked_tokens = self._tokens
        return text, self._tokens

    def _finish(
        self,
        snap: tuple[str, int] | None,
        result: tuple[Verdict | None, BaseException | None] | None,
        metadata: dict[str, Any] | None = None,
    ) -> StreamUpdate:
        meta: dict[str, Any] = {"fallback": "gen", "fallback_every": self.every}
        if snap is not None and result is not None:
            verdict, error = result
            meta["checked"] = True
            decision = self.policy.decide(verdict, Surface.OUTPUT)
            with self._lock:
                if error is not None:
                    self._error = f"{type(error).__name__}: {error}"
                    meta["error"] = self._error
                    if decision.allowed:
                        warnings.warn(
                            f"qwen3guard could not judge the streamed answer ({error}); "
                            "allowed by fail-open policy",
                            RuntimeWarning,
                            stacklevel=4,
                        )
                    else:
                        log.warning(
                            "qwen3guard could not judge the streamed answer (%s); "
                            "flagged (fail-closed)",
                            error,
                        )
                if verdict is not None and not self._flagged:
                    self._verdict = verdict
                if decision.blocked and not self._flagged:
                    self._flagged = True
                    self._flag_offset = self._safe_len
                    self._flag_token_index = self._safe_tokens
                elif decision.allowed and not self._flagged:  # judged safe, or fail-open
                    self._safe_len = len(snap[0])
                    self._safe_tokens = snap[1]
        if metadata:
            meta.update(metadata)
        return self._snapshot((), meta)

    def _snapshot(
        self, token_verdicts: Sequence[TokenVerdict] = (), metadata: dict[str, Any] | None = None
    ) -> StreamUpdate:
        meta = dict(metadata or {"fallback": "gen", "fallback_every": self.every})
        if self._error and "error" not in meta:
            meta["last_error"] = self._error
        return StreamUpdate(
            token_verdicts=tuple(token_verdicts),
            flagged=self._flagged,
            verdict=self._verdict,
            flag_offset=self._flag_offset,
            flag_token_index=self._flag_token_index,
            tokens_seen=self._tokens,
            metadata=meta,
            settled_offset=self.settled_offset,
        )
