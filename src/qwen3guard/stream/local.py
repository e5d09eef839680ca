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
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContextLengthError, GuardUnavailableError, InvalidInputError, ModelFormatError
from ..gen.tokenize import ConversationEncoder
from ..messages import Message, normalize_messages
from ..policy import Policy
from ..verdict import Category, RiskLevel, Role, Verdict, worst
from ..windows import window_conversation
from .debounce import Debouncer
from .fastpath import FastDecoder, verify
from .retokenize import IncrementalDecoder, Piece, Retokenizer, encode_plain, kept_added_tokens
from .session import StreamSession
from .types import StreamUpdate, TokenVerdict

log = logging.getLogger(__name__)

# Official index order (eval_stream.py), used when the config has no label maps.
RISK_ORDER = (RiskLevel.SAFE, RiskLevel.UNSAFE, RiskLevel.CONTROVERSIAL)
RESPONSE_CATEGORY_ORDER = (
    Category.VIOLENT,
    Category.SEXUAL_CONTENT,
    Category.SUICIDE_SELF_HARM,
    Category.POLITICALLY_SENSITIVE,
    Category.PII,
    Category.COPYRIGHT_VIOLATION,
    Category.NON_VIOLENT_ILLEGAL_ACTS,
    Category.UNETHICAL_ACTS,
)
QUERY_CATEGORY_ORDER = (*RESPONSE_CATEGORY_ORDER, Category.JAILBREAK)


@dataclass(frozen=True)
class Labels:
    risk: tuple[RiskLevel, ...]
    category: tuple[Category | None, ...]
    query_risk: tuple[RiskLevel, ...]
    query_category: tuple[Category | None, ...]


def _as_list(m: Any) -> list[str] | None:
    if m is None:
        return None
    if isinstance(m, Mapping):
        try:
            return [str(m[k]) for k in sorted(m, key=lambda k: int(k))]
        except (TypeError, ValueError):
            return None
    if isinstance(m, (list, tuple)):
        return [str(x) for x in m]
    return None


def _risk(name: str) -> RiskLevel:
    for r in RiskLevel:
        if r.value.lower() == name.strip().lower():
            return r
    raise ModelFormatError(f"the Stream checkpoint names an unknown risk level {name!r}")


def _category(name: str) -> Category | None:
    for c in Category:
        if c.value.lower() == name.strip().lower():
            return c
    log.warning("the Stream checkpoint names an unknown category %r; reported as None", name)
    return None


def resolve_labels(config: Any) -> Labels:
    """Label order of the four heads: the config's maps (via the model module's
    ``label_maps``), else the official eval order."""
    maps: Any = None
    try:
        from .modeling import label_maps

        maps = label_maps(config)
    except ImportError:
        maps = None

    def pick(*names: str) -> list[str] | None:
        for n in names:
            for source in (maps, config):
                if source is None:
                    continue
                value = source.get(n) if isinstance(source, Mapping) else getattr(source, n, None)
                out = _as_list(value)
                if out:
                    return out
        return None

    risk = pick("response_risk_level_map", "response_risk_level", "risk_level")
    cat = pick("response_category_map", "response_category", "category")
    qrisk = pick("query_risk_level_map", "query_risk_level")
    qcat = pick("query_category_map", "query_category")
    return Labels(
        risk=tuple(_risk(x) for x in risk) if risk else RISK_ORDER,
        category=tuple(_category(x) for x in cat) if cat else RESPONSE_CATEGORY_ORDER,
        query_risk=tuple(_risk(x) for x in qrisk) if qrisk else RISK_ORDER,
        query_category=tuple(_category(x) for x in qcat) if qcat else QUERY_CATEGORY_ORDER,
    )


def resolve_device_dtype(device: str | None, dtype: Any) -> tuple[str, Any]:
    from ..gen.local import resolve_device_dtype as _resolve

    return _resolve(device, dtype)


@dataclass
class PromptPlan:
    """What a session is primed with."""

    ids: list[int]  # prompt ids through the header before the answer's first plain text
    query_index: int  # where the query heads are read (the user turn's <|im_end|>)
    tail: str  # template text tokenized together with the answer (``"assistant\n"``)
    window_verdicts: tuple[Verdict, ...] = ()  # earlier windows of a long prompt


@dataclass
class StepOutput:
    """Head outputs for the positions of one forward (float32, on the CPU)."""

    risk_logits: Any  # (n, num_risk)
    category_logits: Any  # (n, num_category)
    query_risk_logits: Any | None = None  # (num_query_risk,) at the query index
    query_category_logits: Any | None = None


class LocalStreamBackend:
    """Loads Qwen3Guard-Stream and runs the forwards for :class:`LocalStreamSession`.

    Forwards of different sessions are serialized by one lock (the model is shared; each
    session has its own KV cache)."""

    name = "local"

    def __init__(
        self,
        model_id: str,
        *,
        device: str | None = None,
        dtype: Any = None,
        model: Any = None,
        tokenizer: Any = None,
        max_context_tokens: int | None = None,
        fast_path: bool = True,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        self.model_id = str(model_id)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        if model is None:
            from .modeling import load_stream_model

            model = load_stream_model(self.model_id, device=self.device, dtype=self.dtype)
        self.model = model
        self.model.eval()
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.model_id)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelFormatError(f"the Stream checkpoint {self.model_id} has no chat template")
        self.encoder = ConversationEncoder(self.tokenizer)
        self.config = self.model.config
        ctx = int(getattr(self.config, "max_position_embeddings", 0) or 32768)
        self.max_context_tokens = min(max_context_tokens or ctx, ctx)
        self.vocab_size = int(getattr(self.config, "vocab_size", 0) or len(self.tokenizer))
        self.labels = resolve_labels(self.config)
        self.kept_added = kept_added_tokens(self.tokenizer)
        self.im_end_id = self._token_id("<|im_end|>")
        self._torch = torch
        self._fast = None
        if fast_path:
            fast = FastDecoder.build(self.model)
            if fast is not None and verify(fast, self.model, self.vocab_size, self.device):
                self._fast = fast
        self._lock = threading.Lock()
        # The sessions holding a cache. set.add/discard are atomic, and safe from a finalizer
        # that the garbage collector runs in the middle of this thread's own bookkeeping.
        self._live: set[Any] = set()
        self._closed = False
        self.forwards_run = 0

    # -- public ----------------------------------------------------------------------------------

    def open_session(self, prompt_messages: Any, **options: Any) -> LocalStreamSession:
        """A session on this model; the prompt is judged on open."""
        return LocalStreamSession(self, prompt_messages, **options)

    async def aopen_session(self, prompt_messages: Any, **options: Any) -> LocalStreamSession:
        import asyncio

        return await asyncio.to_thread(LocalStreamSession, self, prompt_messages, **options)

    @property
    def active_sessions(self) -> int:
        """Sessions opened and not yet closed or collected."""
        return len(self._live)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.model = None

    # -- used by sessions ----------------------------------------------------------------------

    def plan_prompt(self, messages: Sequence[Message]) -> PromptPlan:
        """Encode the prompt (windows when it is too long for half the context)."""
        budget = self.max_context_tokens // 2
        plan = self._encode_prompt(messages)
        if len(plan.ids) <= budget:
            return plan
        overhead = len(
            self._encode_prompt([{"role": m["role"], "content": ""} for m in messages]).ids
        )
        room = budget - overhead - 8
        if room < 16:
            raise ContextLengthError(
                f"the prompt's template alone takes {overhead} tokens, over half the Stream "
                f"model's context ({self.max_context_tokens})"
            )
        windows = window_conversation(messages, token_ends=self.encoder.token_ends, budget=room)
        plans = [self._encode_prompt(w) for w in windows]
        verdicts = []
        for p in plans[:-1]:  # judged alone; their caches are not kept
            out, cache = self.forward(p.ids[: p.query_index + 1], None, query_index=p.query_index)
            del cache
            verdicts.append(self.query_verdict(out))
        last = plans[-1]
        last.window_verdicts = tuple(verdicts)
        return last

    def forward(
        self,
        ids: Sequence[int],
        cache: Any,
        *,
        query_index: int | None = None,
        last: int | None = None,
    ) -> tuple[StepOutput, Any]:
        """One forward over ``ids`` continuing ``cache`` (None: a fresh one). Returns the
        head outputs of the last ``last`` positions (default: all) and the cache."""
        torch = self._torch
        with self._lock:
            if self._closed or self.model is None:
                raise GuardUnavailableError("the Stream backend has been closed")
            n = len(ids) if last is None else last
            with torch.inference_mode():
                input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
                if self._fast is not None:
                    risk, cat, q_risk, q_cat, new_cache = self._forward_fast(
                        input_ids, cache, n, query_index
                    )
                else:
                    risk, cat, q_risk, q_cat, new_cache = self._forward_hf(
                        input_ids, cache, n, query_index
                    )
            self.forwards_run += 1
        return StepOutput(risk, cat, q_risk, q_cat), new_cache

    def _forward_fast(self, input_ids: Any, cache: Any, n: int, query_index: int | None) -> tuple:
        fast = self._fast
        if cache is None:
            cache = fast.new_cache()
        h = fast.hidden(input_ids, cache)
        total = input_ids.shape[1]
        if n:
            risk, cat = fast.response_heads(h[:, total - n :])
            risk, cat = risk[0].float().cpu(), cat[0].float().cpu()
        else:
            risk = cat = None
        q_risk = q_cat = None
        if query_index is not None:
            qr, qc = fast.query_heads(h[:, query_index : query_index + 1])
            q_risk, q_cat = qr[0, 0].float().cpu(), qc[0, 0].float().cpu()
        return risk, cat, q_risk, q_cat, cache

    def _forward_hf(self, input_ids: Any, cache: Any, n: int, query_index: int | None) -> tuple:
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        total = input_ids.shape[1]
        risk = out.risk_level_logits[0, total - n :].float().cpu()
        cat = out.category_logits[0, total - n :].float().cpu()
        q_risk = q_cat = None
        if query_index is not None:
            q_risk = out.query_risk_level_logits[0, query_index].float().cpu()
            q_cat = out.query_category_logits[0, query_index].float().cpu()
        new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:
            new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = cache
        return risk, cat, q_risk, q_cat, new_cache

    def query_verdict(self, out: StepOutput) -> Verdict:
        torch = self._torch
        rp = torch.softmax(out.query_risk_logits, dim=-1)
        cp = torch.softmax(out.query_category_logits, dim=-1)
        r = int(rp.argmax())
        c = int(cp.argmax())
        risk = self.labels.query_risk[r]
        cat = self.labels.query_category[c] if c < len(self.labels.query_category) else None
        cats = (cat,) if risk is not RiskLevel.SAFE and cat is not None else ()
        scores = {lab.value: float(p) for lab, p in zip(self.labels.query_risk, rp.tolist())}
        cat_scores = {
            lab.value: float(p)
            for lab, p in zip(self.labels.query_category, cp.tolist())
            if lab is not None
        }
        return Verdict(
            risk=risk,
            categories=cats,
            role=Role.PROMPT,
            raw=f"stream query head: {risk.value} ({cat.value if cat else 'None'})",
            scores=scores,
            metadata={"category_scores": cat_scores, "model": "stream"},
        )

    def token_verdicts(self, out: StepOutput, start_index: int) -> list[TokenVerdict]:
        """One TokenVerdict per position of ``out`` (token ids and texts are filled in by
        the session)."""
        torch = self._torch
        rp = torch.softmax(out.risk_logits, dim=-1)
        r_idx = rp.argmax(dim=-1).tolist()
        c_idx = out.category_logits.argmax(dim=-1).tolist()
        rows = rp.tolist()
        labels = self.labels
        u = labels.risk.index(RiskLevel.UNSAFE) if RiskLevel.UNSAFE in labels.risk else None
        co = (
            labels.risk.index(RiskLevel.CONTROVERSIAL)
            if RiskLevel.CONTROVERSIAL in labels.risk
            else None
        )
        out_list = []
        for k, (ri, ci, row) in enumerate(zip(r_idx, c_idx, rows)):
            out_list.append(
                TokenVerdict(
                    index=start_index + k,
                    token_id=None,
                    text="",
                    risk=labels.risk[ri],
                    category=labels.category[ci] if ci < len(labels.category) else None,
                    risk_prob=float(row[ri]),
                    unsafe_prob=float(row[u]) if u is not None else 0.0,
                    controversial_prob=float(row[co]) if co is not None else 0.0,
                )
            )
        return out_list

    def _session_opened(self, kv: Any) -> None:
        self._live.add(kv)

    def _session_released(self, kv: Any) -> None:
        self._live.discard(kv)

    # -- internals ---------------------------------------------------------------------------

    def _token_id(self, token: str) -> int | None:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == self.tokenizer.unk_token_id:
            return None
        return tid

    def _encode_prompt(self, messages: Sequence[Message]) -> PromptPlan:
        """Like ConversationEncoder.encode over ``[*messages, assistant]``, stopping where the
        assistant's content begins. The plain text just before it is returned as ``tail``."""
        n = len(messages)
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        ids: list[int] = []
        user_end = None  # len(ids) right after the run holding the last user content
        tail: str | None = None
        for piece in self.encoder.pieces(messages, extra=""):
            if isinstance(piece, int):
                ids.append(piece)
                continue
            answer = [start for i, start, _ in piece.spans if i == n]
            if answer:  # the answer begins here: what precedes it is encoded with the answer
                tail = piece.text[: answer[0]]
                break
            ids.extend(encode_plain(self.tokenizer, piece.text))
            if last_user is not None and last_user in piece.contents and user_end is None:
                user_end = len(ids)
        if tail is None:
            raise ModelFormatError("the Stream chat template does not render the answer verbatim")
        if not ids:
            raise ModelFormatError("the Stream chat template renders no special tokens")
        query_index = len(ids) - 1
        if self.im_end_id is not None:
            start = user_end if user_end is not None else 0
            found = [k for k in range(start, len(ids)) if ids[k] == self.im_end_id]
            if found:
                query_index = found[0]
            else:
                ends = [k for k, t in enumerate(ids) if t == self.im_end_id]
                query_index = ends[-1] if ends else len(ids) - 1
        return PromptPlan(ids=ids, query_index=query_index, tail=tail)


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

    def _free(self) -> None:
        self._finalizer()  # frees the cache and tells the backend; runs once

    def _snapshot(
        self, token_verdicts: Sequence[TokenVerdict] = (), metadata: dict[str, Any] | None = None
    ) -> StreamUpdate:
        d = self._debouncer
        meta = {"debounce": d.mode}
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
