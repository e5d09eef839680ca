"""Qwen3Guard-Stream in process: the model, its forwards, and the prompt plan.

:class:`LocalStreamBackend` loads the checkpoint (no remote code), runs forwards that continue a
session's KV cache, reads the heads into verdicts, and plans how a prompt primes a session (see
:mod:`qwen3guard.stream.local` for the session). Forwards of different sessions are serialized
by one lock: the model is shared, each session has its own cache.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContextLengthError, GuardUnavailableError, ModelFormatError
from ..gen.tokenize import ConversationEncoder
from ..messages import Message
from ..verdict import RiskLevel, Role, Verdict
from ..windows import window_conversation
from .fastpath import FastDecoder, KVBuffer, verify
from .labels import resolve_labels
from .retokenize import encode_plain, kept_added_tokens
from .types import TokenVerdict

if TYPE_CHECKING:
    from .local import LocalStreamSession

log = logging.getLogger(__name__)


def resolve_device_dtype(device: str | None, dtype: Any) -> tuple[str, Any]:
    """Stream's device and dtype: bf16 (else fp16) on CUDA, fp32 on CPU, where the per-token
    step gains next to nothing in bf16 (see :func:`qwen3guard.gen.local.resolve_device_dtype`)."""
    from ..gen.local import resolve_device_dtype as _resolve

    return _resolve(device, dtype, kind="stream")


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
        from .local import LocalStreamSession

        return LocalStreamSession(self, prompt_messages, **options)

    async def aopen_session(self, prompt_messages: Any, **options: Any) -> LocalStreamSession:
        from .local import LocalStreamSession

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
        assert fast is not None
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

    def crop(self, cache: Any, length: int) -> Any:
        """``cache`` cut back to its first ``length`` positions, or None when this cache type
        cannot be cut (then the caller recomputes it)."""
        if isinstance(cache, KVBuffer):
            cache.crop(length)
            return cache
        try:  # transformers 5: a negative count removes that many positions from the end
            remove = int(cache.get_seq_length()) - length
            if remove > 0:
                cache.crop(-remove)
            return cache
        except Exception:  # noqa: BLE001 - any other cache: recompute
            return None

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
