"""Qwen3Guard-Stream in process: incremental moderation with a KV cache.

Open: the prompt is rendered with the Stream checkpoint's own chat template (contents kept as
data), run through the model once, and the query heads are read at the ``<|im_end|>`` that
closes the last user turn (the prompt verdict). The template text that follows it, up to where
the answer begins (``\\n<|im_start|>assistant\\n``), is fed too; its scores are not reported.
The KV cache is kept.

Feed: the new ids only, one incremental forward with the cache; the response heads at each new
position give one :class:`TokenVerdict` per token. The cost per token does not grow with the
answer (the official ``stream_moderate_from_ids`` re-runs the whole prefix for each token).
Together the ids fed are exactly those of ``tokenizer(apply_chat_template([*prompt,
assistant]))``, as the official eval computes them, so the logits are the same.

The template's last piece of plain text before the answer (``"assistant\\n"``) is tokenized
together with the answer's first text (a leading newline in the answer merges with it), so it
is fed with the first chunk rather than on open.

Context: when prompt plus answer reach ``max_position_embeddings`` the session slides: the
cache is rebuilt from the prompt, the template header and the most recent half of the room
for the answer, and feeding goes on. A prompt longer than half the context is judged whole in
overlapping windows (the worst window is the prompt verdict) and the answer is judged in the
context of the last window.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError
from ..messages import normalize_messages
from ..policy import Policy
from ..verdict import RiskLevel, Role, Verdict, worst
from .debounce import Debouncer
from .local_backend import LocalStreamBackend, PromptPlan, StepOutput, resolve_device_dtype
from .retokenize import IncrementalDecoder, Piece, Retokenizer, encode_plain
from .session import StreamSession
from .types import StreamUpdate, TokenVerdict

__all__ = ["LocalStreamBackend", "LocalStreamSession", "PromptPlan", "StepOutput",
           "resolve_device_dtype"]

log = logging.getLogger(__name__)


class _KV:
    """What a session's finalizer frees: held apart from the session so the finalizer does
    not keep the session alive."""

    __slots__ = ("cache", "released")

    def __init__(self) -> None:
        self.cache: Any = None
        self.released = False


def _release(backend_ref: weakref.ReferenceType, kv: _KV) -> None:
    kv.cache = None
    if not kv.released:
        kv.released = True
        backend = backend_ref()
        if backend is not None:
            backend._session_released(kv)


class LocalStreamSession(StreamSession):
    """A moderation session on the local Stream model (see the module docstring)."""

    def __init__(
        self,
        backend: LocalStreamBackend,
        prompt_messages: Any,
        *,
        policy: Policy | None = None,
        debounce: str = "report",
        record_logits: bool = False,
    ) -> None:
        super().__init__()
        self._backend = backend
        self._debouncer = Debouncer(policy, debounce)
        messages = normalize_messages(prompt_messages)
        self._prompt_messages = messages
        self._kv = _KV()
        self._tokens = 0  # response tokens judged
        self._scored_end = 0  # response offset up to which the text has been judged
        self._ended = False  # closed after judging everything (not aborted)
        self._model_s = 0.0
        self._trace: list[tuple[Any, Any]] | None = [] if record_logits else None
        self._trace_ids: list[int] = []
        self._retok: Retokenizer | None = None
        self._retok_base = 0  # response offset where the current retokenizer's text starts
        self._last_piece_end = 0  # end of the last committed piece, in the retokenizer's text
        self._decoder: IncrementalDecoder | None = None
        self._tail_fed = False
        self._tail_ids: list[int] = []
        self._recent: deque[int] = deque(maxlen=backend.max_context_tokens)
        self._cache_len = 0
        self._slides = 0

        t0 = time.perf_counter()
        plan = backend.plan_prompt(messages)
        self._plan = plan
        out, cache = backend.forward(plan.ids, None, query_index=plan.query_index, last=0)
        backend._session_opened(self._kv)
        self._finalizer = weakref.finalize(self, _release, weakref.ref(backend), self._kv)
        self._kv.cache = cache
        self._cache_len = len(plan.ids)
        verdict = backend.query_verdict(out)
        if plan.window_verdicts:
            verdict = worst([*plan.window_verdicts, verdict])
        self.prompt_verdict = verdict.with_timing(time.perf_counter() - t0)

    # -- state ---------------------------------------------------------------------------------

    @property
    def flagged(self) -> bool:
        return self._debouncer.flagged

    @property
    def verdict(self) -> Verdict | None:
        d = self._debouncer
        if d.verdict is not None:
            return d.verdict.with_timing(self._model_s)
        if self._tokens == 0:
            return None
        return Verdict(
            risk=RiskLevel.SAFE,
            role=Role.RESPONSE,
            raw=f"no two consecutive flagged tokens in {self._tokens} ({d.mode} debounce)",
            latency_s=self._model_s,
            metadata={"debounce": d.mode, "tokens": self._tokens},
        )

    @property
    def tokens_seen(self) -> int:
        return self._tokens

    @property
    def settled_offset(self) -> int:
        if self._ended and not self.flagged:
            return self._text_len
        return self._debouncer.settled(self._scored_end)

    @property
    def debounce(self) -> str:
        return self._debouncer.mode

    # -- feeding -------------------------------------------------------------------------------

    def _feed_text(self, chunk: str) -> StreamUpdate:
        self._append_text(chunk)
        if self._retok is None:
            self._end_ids()
            prefix = "" if self._tail_fed else self._plan.tail
            self._retok = Retokenizer(
                self._backend.tokenizer, prefix=prefix, kept_added=self._backend.kept_added
            )
            self._retok_base = self._text_len - len(chunk)
            self._last_piece_end = len(prefix)
            self._tail_fed = True
        return self._run_pieces(self._retok.feed(chunk))

    def _feed_ids(self, ids: list[int]) -> StreamUpdate:
        vocab = self._backend.vocab_size
        for i in ids:
            if not 0 <= i < vocab:
                raise InvalidInputError(
                    f"feed_ids(): token id {i} is outside the vocabulary (0..{vocab - 1})"
                )
        metadata: dict[str, Any] = {}
        tvs: list[TokenVerdict] = []
        if self._retok is not None:  # text before: it ended where the ids begin
            tvs.extend(self._run_pieces(self._retok.flush()).token_verdicts)
            self._retok = None
        if self._decoder is None:
            self._decoder = IncrementalDecoder(self._backend.tokenizer)
        header: list[int] = []
        if not self._tail_fed:
            header = encode_plain(self._backend.tokenizer, self._plan.tail)
            self._tail_fed = True
        starts: list[int] = []
        texts: list[str] = []
        for i in ids:
            starts.append(self._text_len)
            text = self._decoder.step(i)
            texts.append(text)
            self._append_text(text)
        items: list[tuple[int, int | None, str]] = [(i, None, "") for i in header]
        items.extend(zip(ids, starts, texts))
        tvs.extend(self._run(items))
        return self._snapshot(tvs, metadata)

    def _end_ids(self) -> None:
        self._decoder = None  # a text chunk after ids: the ids' text is complete

    def _run_pieces(self, pieces: list[Piece]) -> StreamUpdate:
        retok = self._retok
        assert retok is not None
        plen = retok.prefix_len
        items: list[tuple[int, int | None, str]] = []
        last_end = self._last_piece_end
        for p in pieces:
            if p.end <= plen:  # template text
                items.append((p.token_id, None, ""))
                continue
            a = max(p.start, plen, last_end)
            text = retok.text[a : p.end] if p.end > a else ""
            last_end = max(last_end, p.end)
            items.append((p.token_id, self._retok_base + max(0, p.start - plen), text))
        self._last_piece_end = last_end
        tvs = self._run(items)
        if last_end > plen:  # the text up to the last committed piece has been judged
            self._scored_end = max(self._scored_end, self._retok_base + last_end - plen)
        return self._snapshot(tvs)

    def _run(self, items: list[tuple[int, int | None, str]]) -> list[TokenVerdict]:
        """Feed ids to the model; ``start is None`` marks template ids (not reported)."""
        if not items:
            return []
        backend = self._backend
        ids = [i for i, _, _ in items]
        t0 = time.perf_counter()
        risk, cat = self._advance(ids)
        self._model_s += time.perf_counter() - t0
        out_tvs: list[TokenVerdict] = []
        resp_rows = [k for k, (_, s, _) in enumerate(items) if s is not None]
        for i, s, _ in items:
            if s is None:
                self._tail_ids.append(i)
            else:
                self._recent.append(i)
        if not resp_rows:
            return []
        step = StepOutput(risk[resp_rows], cat[resp_rows])
        tvs = backend.token_verdicts(step, self._tokens)
        for tv, k in zip(tvs, resp_rows):
            tid, start, text = items[k]
            assert start is not None
            tv = _with(tv, tid, text)
            out_tvs.append(tv)
            self._debouncer.push(tv, start)
            self._scored_end = max(self._scored_end, start + len(text))
            if self._trace is not None:
                self._trace.append((risk[k].clone(), cat[k].clone()))
                self._trace_ids.append(tid)
        self._tokens += len(tvs)
        return out_tvs

    def _advance(self, ids: list[int]) -> tuple[Any, Any]:
        """Run ids through the model with the session's cache, sliding when the context is
        full. Returns risk and category logits, one row per id."""
        torch = self._backend._torch
        ctx = self._backend.max_context_tokens
        risks: list[Any] = []
        cats: list[Any] = []
        pos = 0
        while pos < len(ids):
            room = ctx - self._cache_len
            if room <= 0:
                self._slide()
                room = ctx - self._cache_len
            piece = ids[pos : pos + room]
            out, cache = self._backend.forward(piece, self._kv.cache)
            self._kv.cache = cache
            self._cache_len += len(piece)
            risks.append(out.risk_logits)
            cats.append(out.category_logits)
            pos += len(piece)
        if len(risks) == 1:
            return risks[0], cats[0]
        return torch.cat(risks), torch.cat(cats)

    def _slide(self) -> None:
        """The context is full: rebuild the cache from the prompt, the header and the most
        recent part of the answer."""
        plan = self._plan
        head = plan.ids + self._tail_ids
        ctx = self._backend.max_context_tokens
        keep = max(0, (ctx - len(head)) // 2)
        recent = list(self._recent)[-keep:] if keep else []
        self._kv.cache = None
        _, cache = self._backend.forward(head + recent, None, last=0)
        self._kv.cache = cache
        self._cache_len = len(head) + len(recent)
        self._slides += 1
        log.debug("stream session slid its context: kept %d answer tokens", len(recent))

    def _close(self) -> StreamUpdate:
        tvs: list[TokenVerdict] = []
        if self._retok is not None:
            tvs = list(self._run_pieces(self._retok.flush()).token_verdicts)
            self._retok = None
        self._debouncer.finish()  # a last token that is a hit flags on its own
        self._ended = True  # every token has been judged: all of it is settled, unless flagged
        return self._snapshot(tvs, {"closed": True})

    def _reset_answer(self) -> None:
        backend, plan = self._backend, self._plan
        prompt_len = len(plan.ids)  # a slide rebuilds the cache with the prompt first, too
        cache = backend.crop(self._kv.cache, prompt_len)
        if cache is None:
            _, cache = backend.forward(plan.ids, None, last=0)
        self._kv.cache = cache
        self._cache_len = prompt_len
        self._debouncer = Debouncer(self._debouncer.policy, self._debouncer.mode)
        self._tokens = 0
        self._scored_end = 0
        self._ended = False
        self._retok = None
        self._retok_base = 0
        self._last_piece_end = 0
        self._decoder = None
        self._tail_fed = False
        self._tail_ids = []
        self._recent.clear()
        if self._trace is not None:
            self._trace, self._trace_ids = [], []

    def _free(self) -> None:
        self._finalizer()  # frees the cache and tells the backend; runs once

    def _snapshot(
        self, token_verdicts: Sequence[TokenVerdict] = (), metadata: dict[str, Any] | None = None
    ) -> StreamUpdate:
        d = self._debouncer
        meta: dict[str, Any] = {"debounce": d.mode}
        if self._slides:
            meta["context_slides"] = self._slides
        if metadata:
            meta.update(metadata)
        return StreamUpdate(
            token_verdicts=tuple(token_verdicts),
            flagged=d.flagged,
            verdict=self.verdict,
            flag_offset=d.flag_offset,
            flag_token_index=d.flag_token_index,
            tokens_seen=self._tokens,
            metadata=meta,
            settled_offset=self.settled_offset,
        )

    # -- for tests ---------------------------------------------------------------------------

    def _logits_trace(self) -> tuple[list[int], Any, Any]:
        """(token ids, risk logits (n, 3), category logits (n, 8)) of every response token
        judged, when opened with ``record_logits=True``."""
        torch = self._backend._torch
        if self._trace is None:
            raise RuntimeError("open the session with record_logits=True")
        if not self._trace:
            return [], torch.empty(0, 3), torch.empty(0, 8)
        return (
            list(self._trace_ids),
            torch.stack([r for r, _ in self._trace]),
            torch.stack([c for _, c in self._trace]),
        )


def _with(tv: TokenVerdict, token_id: int, text: str) -> TokenVerdict:
    return TokenVerdict(
        index=tv.index,
        token_id=token_id,
        text=text,
        risk=tv.risk,
        category=tv.category,
        risk_prob=tv.risk_prob,
        unsafe_prob=tv.unsafe_prob,
        controversial_prob=tv.controversial_prob,
    )
