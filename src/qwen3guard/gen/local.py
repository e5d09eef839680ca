"""Qwen3Guard-Gen in process, on transformers (CPU or GPU).

Batched greedy generation with left padding and a small token budget for the verdict. All
model calls go through one micro-batcher thread: concurrent callers (threads or tasks) are
batched together and never share state. A call that is alone goes to the model at once; calls
that arrive while a batch runs make up the next one. Batches are filled round-robin over the
calls waiting and capped at ``max_batch_tokens`` padded tokens, counted after the cached
template prefix (below; default: one full context on CPU, where batching long windows buys
nothing, four on GPU), so one call with many long windows cannot hold the model away from the
others for long (see :mod:`qwen3guard.batching`).

The shared template prefix. Every Gen prompt starts with the same tokens (the task and the
safety policy, a few hundred tokens, up to where the conversation begins; one prefix for prompt
checks, one for response checks). Their key/value cache is computed once per prefix and copied
into each batch, so a batch's prefill covers only the conversations: a batched row costs a few
tokens of prefill instead of the whole template (vLLM's prefix caching does the same). Between
the prefix and each conversation the batch is padded (masked), so every prompt still ends at the
last column and keeps its unpadded positions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ..batching import MicroBatcher
from ..errors import ContextLengthError
from ..messages import Message
from ..windows import window_conversation
from .base import GenBackend, over_budget
from .tokenize import ConversationEncoder

log = logging.getLogger(__name__)


#: A Gen model this large or larger runs in bfloat16 by default on a CPU with native bf16
#: matrix units (benchmarks/dtype.py, 0.6B on an AMX CPU: bf16 generate took 0.83x the fp32 CPU
#: time at batch 1 and 0.39x at batch 8; the small built-in checkpoints gain nothing reliable
#: and their pinned verdicts are fp32's: they stay on fp32).
BF16_MIN_PARAMS = 100_000_000


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX, ``amx_bf16``), as torch
    reports it. AVX512-BF16 alone does not count: not measured to be faster."""
    import torch

    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # noqa: BLE001 - an older torch: no such report
        return False
    return bool(caps.get("amx_bf16")) and torch.backends.mkldnn.is_available()


def param_count(config: Any) -> int | None:
    """About how many parameters a decoder with this config has (None when it does not say)."""
    try:
        text = config.get_text_config(decoder=True)
        h, layers = int(text.hidden_size), int(text.num_hidden_layers)
        heads, vocab = int(text.num_attention_heads), int(text.vocab_size)
        kv = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or h // heads)
        inner = int(text.intermediate_size)
    except (AttributeError, TypeError, ValueError):
        return None
    embed = vocab * h * (1 if getattr(text, "tie_word_embeddings", False) else 2)
    attn = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    return embed + layers * (attn + 3 * h * inner)


def resolve_device_dtype(
    device: str | None, dtype: Any, *, kind: str = "gen", params: int | None = None
) -> tuple[str, Any]:
    """The device (CUDA when available) and, unless ``dtype`` names one, the faster dtype there:

    - CUDA: bfloat16 where the card supports it, else float16 (a T4 or V100 has no bf16);
    - CPU: bfloat16 for a Gen model (``kind="gen"``) of at least :data:`BF16_MIN_PARAMS`
      parameters (``params``) on a CPU with native bf16 matrix units
      (:func:`cpu_has_native_bf16`), float32 otherwise: for small models, for a size not given,
      and for Stream (``kind="stream"``), whose per-token step gains next to nothing in bf16
      (``benchmarks/dtype.py``)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif (kind == "gen" and params is not None and params >= BF16_MIN_PARAMS
              and cpu_has_native_bf16()):
            dtype = torch.bfloat16
        else:
            dtype = torch.float32
    elif isinstance(dtype, str):
        try:
            dtype = getattr(torch, dtype.replace("torch.", ""))
        except AttributeError as exc:
            raise ValueError(f"unknown dtype {dtype!r}") from exc
    return device, dtype


class TransformersGenBackend(GenBackend):
    name = "transformers"

    def __init__(
        self,
        model_id: str,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int = 64,
        max_batch_size: int = 32,
        max_context_tokens: int | None = None,
        batch_wait_s: float = 0.0,
        max_batch_tokens: int | None = None,
        max_window_tokens: int | None = None,
        tokenizer: Any = None,
        model: Any = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..stream.modeling import check_gen_checkpoint

        self.model_id = str(model_id)
        if model is None:
            check_gen_checkpoint(self.model_id)
        params = _checkpoint_params(self.model_id, model)
        self.device, self.dtype = resolve_device_dtype(device, dtype, kind="gen", params=params)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.model_id)
        self.model = model or AutoModelForCausalLM.from_pretrained(self.model_id, dtype=self.dtype)
        self.model.to(self.device).eval()  # type: ignore[arg-type]
        self.encoder = ConversationEncoder(self.tokenizer)
        self.max_new_tokens = max_new_tokens
        cfg_ctx = getattr(self.model.config, "max_position_embeddings", None) or 32768
        self.max_context_tokens = min(max_context_tokens or cfg_ctx, cfg_ctx)
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_ids[0]
        self._torch = torch
        if max_batch_tokens is None:
            per_batch = 4 if str(self.device).startswith("cuda") else 1
            max_batch_tokens = per_batch * self.max_context_tokens
        self.max_batch_tokens = max_batch_tokens
        if max_window_tokens is not None and max_window_tokens < 64:
            raise ValueError("max_window_tokens must be >= 64")
        # Content tokens per window (default: what the context leaves). Smaller windows hold
        # the model for less time each: the most a small request waits behind a long one.
        self.max_window_tokens = max_window_tokens
        # Template prefixes (longest first) and their caches, computed in the worker thread.
        self._prefixes = _template_prefixes(self.encoder) if _prefix_cacheable(self.model) else []
        self._prefix_kv: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
        # batch_wait_s is accepted for compatibility and has no effect: there is no batch timer
        # (qwen3guard.batching: a batch goes when the worker is free).
        self._batcher: MicroBatcher[list[int], str] = MicroBatcher(
            self._generate_batch, max_batch=max_batch_size,
            name="qwen3guard-gen", cost=self._cost, max_batch_cost=max_batch_tokens,
        )

    # -- public backend API --------------------------------------------------------------

    def generate(self, conversations: Sequence[Sequence[Message]]) -> list[str | BaseException]:
        prepared, futures = self._submit(conversations)
        results: list[str | BaseException] = []
        for f in futures:
            try:
                results.append(f.result())
            except Exception as exc:  # noqa: BLE001 - handed to the caller of this item
                results.append(exc)
        return _merge(prepared, results)

    async def agenerate(
        self, conversations: Sequence[Sequence[Message]]
    ) -> list[str | BaseException]:
        import asyncio

        if sum(len(m["content"]) for c in conversations for m in c) > 20_000:
            # Tokenizing long content takes a while: not on the event loop.
            prepared, futures = await asyncio.to_thread(self._submit, conversations)
        else:
            prepared, futures = self._submit(conversations)
        results = await asyncio.gather(
            *(asyncio.wrap_future(f) for f in futures), return_exceptions=True
        )
        return _merge(prepared, list(results))

    def split_windows(self, conversation: Sequence[Message]) -> list[list[Message]]:
        empty = [{"role": m["role"], "content": ""} for m in conversation]
        overhead = len(self.encoder.encode(empty))
        budget = self.max_context_tokens - overhead - self.max_new_tokens - 8
        if budget < 64:
            raise ContextLengthError(
                f"max_context_tokens={self.max_context_tokens} leaves no room for content "
                f"(the template alone takes {overhead} tokens)"
            )
        if self.max_window_tokens is not None:
            budget = min(budget, self.max_window_tokens)
        return window_conversation(conversation, token_ends=self.encoder.token_ends, budget=budget)

    def close(self) -> None:
        self._batcher.close()

    @property
    def batches_run(self) -> int:
        return self._batcher.batches_run

    # -- internals ---------------------------------------------------------------------------

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            for i in eos if isinstance(eos, (list, tuple)) else [eos]:
                if i is not None and i not in ids:
                    ids.append(int(i))
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id and im_end not in ids:
            ids.append(im_end)
        if not ids:
            raise ValueError("the Gen checkpoint names no end-of-sequence token")
        return ids

    def _prepare(self, conversation: Sequence[Message]) -> list[int] | BaseException:
        try:
            ids = self.encoder.encode(conversation)
        except Exception as exc:  # noqa: BLE001
            return exc
        if len(ids) + self.max_new_tokens > self.max_context_tokens:
            return ContextLengthError(
                f"conversation is {len(ids)} tokens, over the context of "
                f"{self.max_context_tokens}; split it with split_windows() first"
            )
        return ids

    def _submit(
        self, conversations: Sequence[Sequence[Message]]
    ) -> tuple[list[list[int] | BaseException], list[Any]]:
        """Encode, check the call's budget, hand the good items to the batcher (one request)."""
        prepared = [self._prepare(c) for c in conversations]
        good = [p for p in prepared if isinstance(p, list)]
        refused = over_budget([len(p) for p in good])
        if refused is not None:
            return [refused if isinstance(p, list) else p for p in prepared], []
        return prepared, self._batcher.submit_many(good)

    def _prefix_of(self, ids: list[int]) -> list[int]:
        """The longest template prefix ``ids`` starts with and goes beyond ([] for none)."""
        for prefix in self._prefixes:
            if len(ids) > len(prefix) and ids[: len(prefix)] == prefix:
                return prefix
        return []

    def _cost(self, ids: list[int]) -> int:
        """An item's padded cost in a batch: its tokens after the cached template prefix."""
        return len(ids) - len(self._prefix_of(ids))

    def _generate_batch(self, batch: list[list[int]]) -> list[str]:
        """One batch; items with different template prefixes (prompt and response checks
        together) run as one generate per prefix."""
        t0 = time.perf_counter()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(batch):
            groups.setdefault(tuple(self._prefix_of(ids)), []).append(i)
        texts: list[str] = [""] * len(batch)
        for prefix, rows in groups.items():
            for i, text in zip(rows, self._generate_rows([batch[i] for i in rows], list(prefix))):
                texts[i] = text
        log.debug("gen batch of %d in %.3fs", len(batch), time.perf_counter() - t0)
        return texts

    def _generate_rows(self, batch: list[list[int]], prefix: list[int]) -> list[str]:
        torch = self._torch
        fixed = len(prefix)
        tails = [ids[fixed:] for ids in batch]
        width = fixed + max(len(t) for t in tails)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        if fixed:
            input_ids[:, :fixed] = torch.tensor(prefix, dtype=torch.long)
            attention[:, :fixed] = 1
        for row, tail in enumerate(tails):  # padded before the tail: every prompt ends last
            input_ids[row, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
            attention[row, width - len(tail):] = 1
        extra: dict[str, Any] = {}
        if fixed:
            extra["cache"] = self._prefix_cache(prefix, len(batch))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                **extra,
            )
        texts: list[str] = []
        stop = set(self.eos_ids) | {self.pad_id}
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            texts.append(str(self.tokenizer.decode(row[:cut], skip_special_tokens=False)))
        return texts

    def _prefix_cache(self, prefix: list[int], rows: int) -> Any:
        """A fresh cache holding ``prefix``'s keys and values for ``rows`` rows (the prefix's
        own forward runs once, the first time; generate grows copies, never the original)."""
        from transformers import DynamicCache

        torch = self._torch
        key = tuple(prefix)
        layers = self._prefix_kv.get(key)
        if layers is None:
            with torch.inference_mode():
                out = self.model(
                    input_ids=torch.tensor([prefix], dtype=torch.long, device=self.device),
                    use_cache=True,
                    logits_to_keep=1,
                )
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            layers = [(layer.keys, layer.values) for layer in cache.layers]
            self._prefix_kv[key] = layers
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(layers):
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
        return cache


def _checkpoint_params(model_id: str, model: Any) -> int | None:
    """The size of the model to load (from its config, before loading) or of the one given."""
    if model is not None:
        try:
            return int(sum(p.numel() for p in model.parameters()))
        except Exception:  # noqa: BLE001 - not a torch module
            return None
    try:
        from transformers import AutoConfig

        return param_count(AutoConfig.from_pretrained(model_id))
    except Exception:  # noqa: BLE001 - the loader reports a bad checkpoint itself
        return None


def _prefix_cacheable(model: Any) -> bool:
    """Whether a prefix's cache can be copied into a batch: every layer attends to the whole
    context (no sliding window, no recurrent state)."""
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if config is not None else None
    if text is None or getattr(text, "use_sliding_window", False):
        return False
    types = getattr(text, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in types)


def _template_prefixes(encoder: ConversationEncoder, min_tokens: int = 16) -> list[list[int]]:
    """The tokens every prompt check and every response check starts with: the common prefix of
    two conversations that differ from their first content on. Longest first."""
    probes = (
        ([{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}],
            [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
        ),
    )
    found: list[list[int]] = []
    for one, two in probes:
        try:
            x, y = encoder.encode(one), encoder.encode(two)
        except Exception:  # noqa: BLE001 - a template that does not render these: no prefix
            continue
        n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        if n >= min_tokens and x[:n] not in found:
            found.append(x[:n])
    return sorted(found, key=len, reverse=True)


def _merge(
    prepared: Sequence[list[int] | BaseException], results: Sequence[str | BaseException]
) -> list[str | BaseException]:
    """Per conversation: its answer, or the error that kept it from the model."""
    it = iter(results)
    return [p if isinstance(p, BaseException) else next(it) for p in prepared]
