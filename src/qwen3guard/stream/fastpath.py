"""A lean incremental forward for the Stream model's Qwen3 backbone.

Streaming feeds one token (or a few) per call. Through ``transformers``' generic forward the
cost of such a call is mostly Python overhead (mask construction, output capturing, cache
bookkeeping, a ``torch.cat`` of the whole KV cache per layer per token), which for small
models dwarfs the arithmetic and makes the per-token cost grow with the cache. This module runs
the same computation, layer by layer with the model's own modules and weights, on a KV buffer
that grows by doubling (amortised O(1) appends).

It is an optimisation only: :meth:`FastDecoder.build` returns ``None`` for anything it does not
recognise (sliding-window layers, another backbone layout, missing head names), and the
backend verifies it against the model's own forward on load (:func:`verify`), falling back to
the ``transformers`` path on any mismatch. ``QWEN3GUARD_STREAM_FASTPATH=0`` disables it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

HEAD_NAMES = (
    "risk_level_category_pre",
    "risk_level_category_layernorm",
    "risk_level_head",
    "category_head",
    "query_risk_level_category_pre",
    "query_risk_level_category_layernorm",
    "query_risk_level_head",
    "query_category_head",
)


class KVBuffer:
    """Per-layer keys and values of one session, ``(1, kv_heads, capacity, head_dim)``,
    grown by doubling."""

    __slots__ = ("keys", "values", "length")

    def __init__(self, n_layers: int) -> None:
        self.keys: list[Any] = [None] * n_layers
        self.values: list[Any] = [None] * n_layers
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (the next append overwrites the rest)."""
        self.length = max(0, min(self.length, length))

    def append(self, layer: int, k: Any, v: Any, start: int) -> tuple[Any, Any]:
        import torch

        n = k.shape[2]
        end = start + n
        buf_k = self.keys[layer]
        if buf_k is None or buf_k.shape[2] < end:
            cap = max(64, buf_k.shape[2] if buf_k is not None else 0)
            while cap < end:
                cap *= 2
            shape = (k.shape[0], k.shape[1], cap, k.shape[3])
            new_k = torch.empty(shape, dtype=k.dtype, device=k.device)
            new_v = torch.empty(shape, dtype=v.dtype, device=v.device)
            if buf_k is not None and start:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = self.values[layer][:, :, :start]
            self.keys[layer], self.values[layer] = new_k, new_v
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _make_norm(module: Any, dtype: Any) -> Any:
    """``module``'s RMSNorm as one fused op when the model runs in float32 (the same math:
    ``weight * x / sqrt(mean(x^2) + eps)``); the module itself otherwise."""
    import torch

    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    weight = getattr(module, "weight", None)
    rms_norm = getattr(torch.nn.functional, "rms_norm", None)
    if dtype != torch.float32 or eps is None or weight is None or rms_norm is None:
        return module
    shape = (weight.shape[-1],)
    return lambda x: rms_norm(x, shape, weight, eps)


#: Fuse the q/k/v and gate/up projections into one matmul each when the fused copies stay
#: small (tiny and test models, where per-op overhead dominates); big models are compute-bound
#: and keep their weights unduplicated.
FUSE_MAX_ELEMENTS = 16_000_000


class _Layer:
    __slots__ = (
        "ln1",
        "ln2",
        "q_norm",
        "k_norm",
        "qkv",
        "q",
        "k",
        "v",
        "o",
        "split",
        "gate_up",
        "down",
        "act",
        "inter",
        "mlp",
        "scaling",
    )
    # Filled in by FastDecoder.build from the model's modules (tensors and callables).
    ln1: Any
    ln2: Any
    q_norm: Any
    k_norm: Any
    qkv: Any
    q: Any
    k: Any
    v: Any
    o: Any
    split: Any
    gate_up: Any
    down: Any
    act: Any
    inter: Any
    mlp: Any
    scaling: Any


class FastDecoder:
    def __init__(self, model: Any) -> None:
        import torch

        self._torch = torch
        self._linear = torch.nn.functional.linear
        self._sdpa = torch.nn.functional.scaled_dot_product_attention
        self.model = model
        self.backbone = model.model
        cfg = model.config
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(
            getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        )
        self.groups = self.n_heads // self.n_kv
        dtype = next(model.parameters()).dtype
        layers = list(self.backbone.layers)
        fuse = (
            sum(
                layer.self_attn.q_proj.weight.numel()
                + layer.self_attn.k_proj.weight.numel()
                + layer.self_attn.v_proj.weight.numel()
                + layer.mlp.gate_proj.weight.numel() * 2
                for layer in layers
            )
            <= FUSE_MAX_ELEMENTS
        )
        self.layers = [self._plan(layer, dtype, fuse) for layer in layers]
        self._final_norm = _make_norm(self.backbone.norm, dtype)
        self._resp_norm = _make_norm(model.risk_level_category_layernorm, dtype)
        self._query_norm = _make_norm(model.query_risk_level_category_layernorm, dtype)
        self._n_risk = model.risk_level_head.weight.shape[0]
        self._resp_heads = torch.cat([model.risk_level_head.weight, model.category_head.weight])
        rotary = self.backbone.rotary_emb
        # Default RoPE is a pure function of the position: its table can be cached.
        self._rope_table = getattr(rotary, "rope_type", None) == "default"
        self._cos: Any = None
        self._sin: Any = None

    def _plan(self, layer: Any, dtype: Any, fuse: bool) -> _Layer:
        torch = self._torch
        attn, mlp = layer.self_attn, layer.mlp
        p = _Layer()
        p.ln1 = _make_norm(layer.input_layernorm, dtype)
        p.ln2 = _make_norm(layer.post_attention_layernorm, dtype)
        p.q_norm = _make_norm(attn.q_norm, dtype)
        p.k_norm = _make_norm(attn.k_norm, dtype)
        p.scaling = attn.scaling
        p.q, p.k, p.v, p.o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        p.qkv = None
        p.split = (p.q.weight.shape[0], p.k.weight.shape[0], p.v.weight.shape[0])
        if fuse:
            w = torch.cat([p.q.weight, p.k.weight, p.v.weight])
            biases = [m.bias for m in (p.q, p.k, p.v)]
            b = torch.cat(biases) if all(x is not None for x in biases) else None
            if b is not None or all(x is None for x in biases):
                p.qkv = (w, b)
        p.mlp = mlp
        p.gate_up = None
        plain = all(
            getattr(mlp, n, None) is not None for n in ("gate_proj", "up_proj", "down_proj")
        )
        if (
            fuse
            and plain
            and all(getattr(mlp, n).bias is None for n in ("gate_proj", "up_proj", "down_proj"))
            and hasattr(mlp, "act_fn")
        ):
            p.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            p.inter = mlp.gate_proj.weight.shape[0]
            p.down = mlp.down_proj.weight
            p.act = mlp.act_fn
        return p

    @classmethod
    def build(cls, model: Any) -> FastDecoder | None:
        if os.environ.get("QWEN3GUARD_STREAM_FASTPATH", "1").lower() in ("0", "false", "no"):
            return None
        try:
            backbone = model.model
            cfg = model.config
            if any(not hasattr(model, n) for n in HEAD_NAMES):
                return None
            types = getattr(cfg, "layer_types", None) or []
            if any(t != "full_attention" for t in types):
                return None
            for layer in backbone.layers:
                attn = layer.self_attn
                for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "scaling"):
                    if not hasattr(attn, n):
                        return None
                for n in ("input_layernorm", "post_attention_layernorm", "mlp"):
                    if not hasattr(layer, n):
                        return None
            for n in ("embed_tokens", "norm", "rotary_emb"):
                if not hasattr(backbone, n):
                    return None
            return cls(model)
        except Exception:  # noqa: BLE001 - any surprise: use the generic path
            return None

    def new_cache(self) -> KVBuffer:
        return KVBuffer(len(self.layers))

    def _rope(self, x: Any, start: int, n: int) -> tuple[Any, Any]:
        torch = self._torch
        if not self._rope_table:
            pos = torch.arange(start, start + n, device=x.device).unsqueeze(0)
            cos, sin = self.backbone.rotary_emb(x, pos)
            return cos.unsqueeze(1), sin.unsqueeze(1)
        end = start + n
        if self._cos is None or self._cos.shape[2] < end or self._cos.dtype != x.dtype:
            cap = 256
            while cap < end:
                cap *= 2
            pos = torch.arange(0, cap, device=x.device).unsqueeze(0)
            cos, sin = self.backbone.rotary_emb(x, pos)
            self._cos, self._sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, cap, hd)
        return self._cos[:, :, start:end], self._sin[:, :, start:end]

    def hidden(self, ids: Any, cache: KVBuffer) -> Any:
        """Last hidden states (after the final norm) of ``ids`` (a ``(1, n)`` tensor) continuing
        ``cache``; appends to the cache."""
        torch = self._torch
        linear = self._linear
        sdpa = self._sdpa
        n = ids.shape[1]
        start = cache.length
        x = self.backbone.embed_tokens(ids)
        cos, sin = self._rope(x, start, n)
        mask = None
        if n > 1:
            q_pos = torch.arange(start, start + n, device=ids.device).unsqueeze(1)
            k_pos = torch.arange(0, start + n, device=ids.device).unsqueeze(0)
            mask = k_pos <= q_pos  # (n, start + n), True = attend
        hd = self.head_dim
        half = hd // 2
        gqa = self.groups > 1
        for li, p in enumerate(self.layers):
            h = p.ln1(x)
            if p.qkv is not None:
                q, k, v = linear(h, p.qkv[0], p.qkv[1]).split(p.split, dim=-1)
            else:
                q, k, v = p.q(h), p.k(h), p.v(h)
            q = p.q_norm(q.view(1, n, -1, hd)).transpose(1, 2)
            k = p.k_norm(k.view(1, n, -1, hd)).transpose(1, 2)
            v = v.view(1, n, -1, hd).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
            keys, values = cache.append(li, k, v, start)
            if gqa:
                o = sdpa(q, keys, values, attn_mask=mask, scale=p.scaling, enable_gqa=True)
            else:
                o = sdpa(q, keys, values, attn_mask=mask, scale=p.scaling)
            x = x + p.o(o.transpose(1, 2).reshape(1, n, -1))
            h = p.ln2(x)
            if p.gate_up is not None:
                gate, up = linear(h, p.gate_up).split(p.inter, dim=-1)
                x = x + linear(p.act(gate) * up, p.down)
            else:
                x = x + p.mlp(h)
        cache.length = start + n
        return self._final_norm(x)

    def response_heads(self, h: Any) -> tuple[Any, Any]:
        m = self.model
        x = self._resp_norm(m.risk_level_category_pre(h))
        out = self._linear(x, self._resp_heads)
        return out[..., : self._n_risk], out[..., self._n_risk :]

    def query_heads(self, h: Any) -> tuple[Any, Any]:
        m = self.model
        x = self._query_norm(m.query_risk_level_category_pre(h))
        return m.query_risk_level_head(x), m.query_category_head(x)


def verify(fast: FastDecoder, model: Any, vocab_size: int, device: Any) -> bool:
    """Compare the fast path with the model's own forward on a short random sequence, fed
    as a prompt and then in pieces of 1, 1 and 3 tokens."""
    import torch

    try:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, max(2, min(vocab_size, 1000)), (1, 12), generator=gen).to(device)
        with torch.inference_mode():
            ref = model(input_ids=ids)
            ref_r = ref.risk_level_logits[0].float()
            ref_c = ref.category_logits[0].float()
            ref_q = ref.query_risk_level_logits[0].float()
            cache = fast.new_cache()
            got_r, got_c, got_q = [], [], []
            for a, b in ((0, 7), (7, 8), (8, 9), (9, 12)):
                h = fast.hidden(ids[:, a:b], cache)
                r, c = fast.response_heads(h)
                qr, _ = fast.query_heads(h)
                got_r.append(r[0].float())
                got_c.append(c[0].float())
                got_q.append(qr[0].float())
        got = (torch.cat(got_r), torch.cat(got_c), torch.cat(got_q))
        dtype = next(model.parameters()).dtype
        tol = 1e-3 if dtype == torch.float32 else 0.1
        scale = max(1.0, float(ref_r.abs().max()), float(ref_c.abs().max()))
        ok = all(
            bool((a - b).abs().max() <= tol * scale) for a, b in zip(got, (ref_r, ref_c, ref_q))
        )
        if not ok:
            log.warning("the Stream fast path disagrees with the model's forward; not used")
        return ok
    except Exception as exc:  # noqa: BLE001
        log.warning("the Stream fast path could not be verified (%s); not used", exc)
        return False
