"""A structured initialisation that makes the tiny models learn in seconds.

Training a 2-layer model from scratch to find one keyword among the ~300 tokens of the Gen
policy template, reliably and at any length up to the context, takes far more examples than
a one-minute CPU budget allows. So the attention is wired from the start:

* layer 0, *marker heads*: every token attends to a marker token, if one came before it,
  and writes "I am after the marker" into a residual direction. Marker R is the token that
  opens the assistant's turn; marker T (Gen only) is ``</think>``, after which the answer
  is written.
* layer 1, the *keyword head*: every token attends to the feature tokens (keywords of each
  category, refusal phrases) seen so far, preferring those in the assistant's turn and, in
  the assistant's turn, any assistant token over a user keyword. It writes the pooled
  feature histogram into residual directions P.
* layer 1, the *answer head* (Gen only): attends to the tokens after marker T, i.e. the
  answer written so far (its values are learnt), which tells the read-out where it is in
  the answer whatever the length of the content.

Feature tokens, markers and a common direction C live in reserved embedding dimensions.
Wired queries and keys use only the slowest rotary frequencies, so they do not depend on
distance within the context. The wiring stays frozen during training; everything else
(MLPs, embeddings, the answer head's values, the tied output layer) is learnt.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Keys are A * keyword + B * in_assistant - G, relative to a constant component, so that key
# normalisation keeps them linear; NORM_GAIN sets how sharp the attention is.
A_KW = 2.0
B_ASSIST = 3.5
G_BIAS = 1.0
A_MARK = 2.0
G_MARK = 1.0
K_CONST = 1.0
NORM_GAIN = 4.0
PREV_GAIN = 6.0  # sharpness of the previous-token head
N_SLOW = 8  # rotary frequency pairs used by the wired queries and keys
SCALE = 0.1  # size of the wired embedding features (comparable to the learnt ones)
VALUE_SCALE = 0.05  # values ~ the size of learnt ones (the keyword head's output is learnt)
P_READ_GAIN = 10.0  # gain of the MLPs' input norm on P: makes the read-out quick to learn
P_SIZE = 0.3  # size of the pooled features (read by the trained layers only)


@dataclass(frozen=True)
class Features:
    n_features: int
    token_features: Mapping[int, int]  # token id -> feature index
    marker_ids: Sequence[int]  # marker R: opens the assistant's turn
    answer_marker_ids: Sequence[int] = ()  # marker T: the answer follows (Gen)

    @property
    def dims(self) -> dict[str, Any]:
        n = self.n_features
        return {"C": 0, "U": list(range(1, 1 + n)), "MR": 1 + n, "MT": 2 + n, "R": 3 + n,
                "T": 4 + n, "P": list(range(5 + n, 5 + 2 * n))}


def _slices(head_dim: int) -> tuple[list[int], list[int]]:
    half = head_dim // 2
    slow = list(range(half - N_SLOW, half))
    partners = [d + half for d in slow]
    const = [d for d in range(head_dim) if d not in slow and d not in partners]
    return slow, const


def prewire(backbone: Any, feats: Features) -> list[tuple[Any, Any]]:
    """Wire ``backbone`` (a ``Qwen3Model``: >= 2 layers, 3 heads per layer, one kv head per
    head) in place. Returns ``(parameter, mask)`` pairs: during training the gradient of
    ``parameter`` is multiplied by ``mask`` (0 on the wiring)."""
    import torch

    cfg = backbone.config
    hd = cfg.head_dim
    if cfg.num_attention_heads != 3 or cfg.num_key_value_heads != 3:
        raise ValueError("the wiring needs 3 heads per layer, one kv head per head")
    if cfg.num_hidden_layers < 2:
        raise ValueError("the wiring needs >= 2 layers")
    d = feats.dims
    C, U, MR, MT, R, T, P = d["C"], d["U"], d["MR"], d["MT"], d["R"], d["T"], d["P"]
    if P[-1] >= cfg.hidden_size:
        raise ValueError("hidden size too small for the wired features")
    wired = [C, *U, MR, MT, R, T, *P]
    slow, const = _slices(hd)
    masks: dict[int, tuple[Any, Any]] = {}

    def freeze(param: Any, index: Any) -> None:
        key = id(param)
        if key not in masks:
            masks[key] = (param, torch.ones_like(param))
        masks[key][1][index] = 0.0

    with torch.no_grad():
        emb = backbone.embed_tokens.weight
        emb[:, wired] = 0.0
        emb[:, C] = SCALE
        for tid, f in feats.token_features.items():
            emb[tid, U[f]] = SCALE
        markers = list(feats.marker_ids) + list(feats.answer_marker_ids)
        for tid in feats.marker_ids:
            emb[tid, MR] = SCALE
        for tid in feats.answer_marker_ids:
            emb[tid, MT] = SCALE
        # The rows of the markers and of the feature tokens stay as they are: their norm sets
        # the size of what the wired heads pool.
        kw_ids = list(feats.token_features)
        # The P columns stay learnable: through the tied output layer they read P out.
        freeze(emb, (slice(None), [C, *U, MR, MT, R, T]))
        freeze(emb, markers + kw_ids)
        rms = emb.pow(2).mean(-1).sqrt()
        p_gain = (float(rms[kw_ids].mean()) if kw_ids else 1.0) * P_SIZE / SCALE

        for layer in backbone.layers:
            # Residual branches start at zero and never write the wired directions.
            for w in (layer.mlp.down_proj.weight, layer.self_attn.o_proj.weight):
                w.zero_()
                freeze(w, wired)
        # Layer 0 is all wiring (no learnt MLP, no learnt attention output): what reaches
        # layer 1 at a feature token, and so what the keyword head pools, has a fixed size.
        freeze(backbone.layers[0].mlp.down_proj.weight, slice(None))
        freeze(backbone.layers[0].self_attn.o_proj.weight, slice(None))
        # Attention after layer 1 stays off.
        for layer in backbone.layers[2:]:
            freeze(layer.self_attn.o_proj.weight, slice(None))
        # The trained MLPs and the output layer do not see the constant and marker directions
        # (they would swamp the token's identity after normalisation).
        hidden_only = [C, *U, MR, MT]
        norms = [layer.post_attention_layernorm.weight for layer in backbone.layers[1:]]
        for w in [*norms, backbone.norm.weight]:
            w[hidden_only] = 0.0
            freeze(w, hidden_only)
        # The MLPs read the pooled features loud and clear from the start.
        for w in norms:
            w[P] = P_READ_GAIN

        def wire(layer_idx: int, head: int, key_terms: Mapping[int, float],
                 values: Sequence[tuple[int, int]], gain: float, learn_out: bool = False
                 ) -> None:
            attn = backbone.layers[layer_idx].self_attn
            q, k, v, o = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
                          attn.o_proj.weight)
            rows = slice(head * hd, (head + 1) * hd)
            q[rows] = 0.0
            k[rows] = 0.0
            for e in slow:
                q[head * hd + e, C] = 1.0
                for dim, w in key_terms.items():
                    k[head * hd + e, dim] = w
            for c in const:
                k[head * hd + c, C] = K_CONST
            freeze(q, rows)
            freeze(k, rows)
            # A value v = VALUE_SCALE * x[src] / rms(x) comes out as gain * v in dst.
            for j, (src, dst) in enumerate(values):
                v[head * hd + j] = 0.0
                v[head * hd + j, src] = VALUE_SCALE
                freeze(v, head * hd + j)
                o[dst, head * hd + j] = gain / VALUE_SCALE
                if not learn_out:
                    freeze(o, (slice(None), head * hd + j))

        def wire_previous(layer_idx: int, head: int) -> None:
            """Attend to the previous token: the rotary phase of the query is one position
            behind the key's, on the fast frequencies (values and output learnt)."""
            attn = backbone.layers[layer_idx].self_attn
            q, k = attn.q_proj.weight, attn.k_proj.weight
            half = hd // 2
            theta = float((cfg.rope_parameters or {}).get("rope_theta", 10000.0))
            rows = slice(head * hd, (head + 1) * hd)
            q[rows] = 0.0
            k[rows] = 0.0
            for j in range(half):
                freq = theta ** (-2.0 * j / hd)
                w = math.exp(-j / 4.0)
                q[head * hd + j, C] = w * math.cos(freq)
                q[head * hd + j + half, C] = -w * math.sin(freq)
                k[head * hd + j, C] = 1.0
            freeze(q, rows)
            freeze(k, rows)

        for layer_idx in (0, 1):
            attn = backbone.layers[layer_idx].self_attn
            attn.q_norm.weight[:] = PREV_GAIN
            attn.k_norm.weight[:] = PREV_GAIN
            attn.q_norm.weight[slow] = NORM_GAIN
            attn.k_norm.weight[slow] = NORM_GAIN
            freeze(attn.q_norm.weight, slice(None))
            freeze(attn.k_norm.weight, slice(None))

        if feats.marker_ids:
            gain = float(rms[list(feats.marker_ids)].mean())
            wire(0, 0, {MR: A_MARK, C: -G_MARK}, [(MR, R)], gain)
        if feats.answer_marker_ids:
            gain = float(rms[list(feats.answer_marker_ids)].mean())
            wire(0, 1, {MT: A_MARK, C: -G_MARK}, [(MT, T)], gain)
        key = {u: A_KW for u in U}
        key.update({R: B_ASSIST, C: -G_BIAS})
        # The keyword head writes P, and learns where else to write the pooled features (a
        # direct read-out path). Its other value dims stay silent: they would carry an
        # average over whatever it attends to, which depends on the length of the input.
        wire(1, 0, key, list(zip(U, P)), p_gain, learn_out=True)
        freeze(backbone.layers[1].self_attn.o_proj.weight, (slice(None), slice(len(U), hd)))
        if feats.answer_marker_ids:
            # The answer head: keys wired (tokens after T), values and output learnt.
            wire(1, 1, {T: A_MARK, C: -G_MARK}, [], 0.0)
        else:
            freeze(backbone.layers[1].self_attn.o_proj.weight, (slice(None), slice(hd, 2 * hd)))
        wire_previous(1, 2)
    return list(masks.values())


def install_grad_masks(pairs: Iterable[tuple[Any, Any]]) -> list[Any]:
    """Zero the gradient of the wired slices (returns the hook handles)."""
    return [p.register_hook(lambda g, m=m: g * m) for p, m in pairs]
