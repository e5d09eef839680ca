"""A structured initialisation that makes the tiny models learn in seconds.

Training a 2-layer model from scratch to find one keyword among the ~300 tokens of the Gen
policy template, reliably and at any length up to the context, takes far more examples than
a one-minute CPU budget allows. So the attention is wired from the start (4 heads per layer):

* layer 0, *marker heads*: every token attends to a marker token, if one came before it,
  and writes "I am after the marker" into a residual direction. Marker R is the token that
  opens the assistant's turn; marker T (Gen only) is ``</think>``, after which the answer
  is written. Layer 0 has nothing else: no learnt MLP, no learnt attention output.
* layer 1, two *keyword heads*: every token attends to the feature tokens (keywords of each
  category, refusal phrases) seen so far, preferring those in the assistant's turn and, in
  the assistant's turn, any assistant token over a user keyword. Among the features present
  head A picks the first in category order, head B the last; each writes a one-hot of its
  pick into residual directions PA / PB (and, through a learnt output, wherever the
  read-out wants it).
* layer 1, the *answer head* (Gen only): attends to the tokens after marker T, i.e. the
  answer written so far (values learnt), and the *previous-token head* (values learnt):
  where the read-out is in the answer, whatever the length of the content.

Feature tokens, markers and a constant direction C live in reserved embedding dimensions.
The wired queries and keys use the slowest rotary frequencies (distance-invariant) except
the previous-token head's (the fastest). The wiring stays frozen while training; what is
learnt (the layer-1 MLP, embeddings, the learnt head outputs, the tied output layer) sees the
input only through the wired heads, so it behaves the same at any content length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Keyword keys: A_k * keyword_k + B * in_assistant - G, relative to a constant component (so
# key normalisation keeps them linear); A_k rises (head A) or falls (head B) with k by A_STEP.
A_KW = 2.0
A_STEP = 0.3
B_ASSIST = 5.0
G_BIAS = 1.0
A_MARK = 2.0
G_MARK = 1.0
K_CONST = 1.0
NORM_GAIN = 4.0  # sharpness of the slow-frequency heads
PREV_GAIN = 6.0  # sharpness of the previous-token head
N_SLOW = 8  # rotary frequency pairs used by the slow heads
SCALE = 0.1  # size of the wired embedding features (comparable to the learnt ones)
VALUE_SCALE = 0.05  # the keyword heads' values, about the size of learnt ones
P_SIZE = 0.3  # size of the pooled features in PA / PB
P_READ_GAIN = 10.0  # gain of the MLPs' input norm on PA / PB: a read-out quick to learn
N_HEADS = 4


@dataclass(frozen=True)
class Features:
    n_features: int
    token_features: Mapping[int, int]  # token id -> feature index (category order)
    marker_ids: Sequence[int]  # marker R: opens the assistant's turn
    answer_marker_ids: Sequence[int] = ()  # marker T: the answer follows (Gen)

    @property
    def dims(self) -> dict[str, Any]:
        n = self.n_features
        return {"C": 0, "U": list(range(1, 1 + n)), "MR": 1 + n, "MT": 2 + n, "R": 3 + n,
                "T": 4 + n, "PA": list(range(5 + n, 5 + 2 * n)),
                "PB": list(range(5 + 2 * n, 5 + 3 * n))}


def _slices(head_dim: int) -> tuple[list[int], list[int]]:
    half = head_dim // 2
    slow = list(range(half - N_SLOW, half))
    partners = [d + half for d in slow]
    const = [d for d in range(head_dim) if d not in slow and d not in partners]
    return slow, const


def prewire(backbone: Any, feats: Features, token_blind: bool = False) -> list[tuple[Any, Any]]:
    """Wire ``backbone`` (a ``Qwen3Model``: >= 2 layers, 4 heads per layer, one kv head per
    head) in place. Returns ``(parameter, mask)`` pairs: during training the gradient of
    ``parameter`` is multiplied by ``mask`` (0 on the wiring).

    ``token_blind``: the final norm passes only C, R and the picks PA / PB, so whatever reads
    the last hidden state (the Stream heads) depends on them alone, not on the token."""
    import torch

    cfg = backbone.config
    hd = cfg.head_dim
    if cfg.num_attention_heads != N_HEADS or cfg.num_key_value_heads != N_HEADS:
        raise ValueError(f"the wiring needs {N_HEADS} heads per layer, one kv head per head")
    if cfg.num_hidden_layers < 2:
        raise ValueError("the wiring needs >= 2 layers")
    d = feats.dims
    C, U, MR, MT, R, T = d["C"], d["U"], d["MR"], d["MT"], d["R"], d["T"]
    PA, PB = d["PA"], d["PB"]
    if PB[-1] >= cfg.hidden_size:
        raise ValueError("hidden size too small for the wired features")
    fixed = [C, *U, MR, MT, R, T]
    wired = [*fixed, *PA, *PB]
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
        # the size of what the wired heads pool. PA / PB columns stay learnable: through the
        # tied output layer they read the picks out.
        kw_ids = list(feats.token_features)
        freeze(emb, (slice(None), wired if token_blind else fixed))
        freeze(emb, markers + kw_ids)
        rms = emb.pow(2).mean(-1).sqrt()
        p_gain = (float(rms[kw_ids].mean()) if kw_ids else 1.0) * P_SIZE / SCALE

        for layer in backbone.layers:
            # Residual branches start at zero and never write the wired directions.
            for w in (layer.mlp.down_proj.weight, layer.self_attn.o_proj.weight):
                w.zero_()
                freeze(w, wired)
        # Layer 0 is all wiring: what reaches layer 1 at a feature token, and so what the
        # keyword heads pool, has a fixed size.
        freeze(backbone.layers[0].mlp.down_proj.weight, slice(None))
        freeze(backbone.layers[0].self_attn.o_proj.weight, slice(None))
        for layer in backbone.layers[2:]:  # attention after layer 1 stays off
            freeze(layer.self_attn.o_proj.weight, slice(None))
        # The learnt MLPs and the output layer do not see the constant and marker directions
        # (they would swamp the token's identity after normalisation), and read the picks
        # loud and clear.
        hidden_only = [C, *U, MR, MT]
        norms = [layer.post_attention_layernorm.weight for layer in backbone.layers[1:]]
        for w in [*norms, backbone.norm.weight]:
            w[hidden_only] = 0.0
            freeze(w, hidden_only)
        for w in norms:
            w[PA + PB] = P_READ_GAIN
        if token_blind:
            final = backbone.norm.weight
            final[:] = 0.0
            final[[C, R, *PA, *PB]] = 1.0
            freeze(final, [i for i in range(cfg.hidden_size) if i not in (C, R, *PA, *PB)])

        for layer_idx in (0, 1):
            attn = backbone.layers[layer_idx].self_attn
            attn.q_norm.weight[:] = PREV_GAIN
            attn.k_norm.weight[:] = PREV_GAIN
            attn.q_norm.weight[slow] = NORM_GAIN
            attn.k_norm.weight[slow] = NORM_GAIN
            freeze(attn.q_norm.weight, slice(None))
            freeze(attn.k_norm.weight, slice(None))

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
            # A value v = VALUE_SCALE * x[src] / rms(x) comes out as gain * v / VALUE_SCALE
            # in dst; the head's other value dims are silent (what they would average over
            # depends on the length of the input).
            v[rows] = 0.0
            freeze(v, rows)
            for j, (src, dst) in enumerate(values):
                v[head * hd + j, src] = VALUE_SCALE
                o[dst, head * hd + j] = gain / VALUE_SCALE
            silent = slice(head * hd + len(values), (head + 1) * hd)
            freeze(o, (slice(None), silent))
            if not learn_out:
                freeze(o, (slice(None), rows))

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

        def silence(layer_idx: int, head: int) -> None:
            o = backbone.layers[layer_idx].self_attn.o_proj.weight
            freeze(o, (slice(None), slice(head * hd, (head + 1) * hd)))

        # Layer 0: markers.
        if feats.marker_ids:
            gain = float(rms[list(feats.marker_ids)].mean())
            wire(0, 0, {MR: A_MARK, C: -G_MARK}, [(MR, R)], gain)
        if feats.answer_marker_ids:
            gain = float(rms[list(feats.answer_marker_ids)].mean())
            wire(0, 1, {MT: A_MARK, C: -G_MARK}, [(MT, T)], gain)
        # Layer 1: keyword heads A (first category present) and B (last one).
        n = len(U)
        for head, dst, order in ((0, PA, range(n)), (3, PB, range(n - 1, -1, -1))):
            key = {U[f]: A_KW + A_STEP * (n - 1 - rank) for rank, f in enumerate(order)}
            key.update({R: B_ASSIST, C: -G_BIAS})
            wire(1, head, key, list(zip(U, dst)), p_gain, learn_out=True)
        if feats.answer_marker_ids:
            # The answer head: keys wired (tokens after T), values and output learnt.
            attn = backbone.layers[1].self_attn
            rows = slice(hd, 2 * hd)
            attn.q_proj.weight[rows] = 0.0
            attn.k_proj.weight[rows] = 0.0
            for e in slow:
                attn.q_proj.weight[hd + e, C] = 1.0
                attn.k_proj.weight[hd + e, T] = A_MARK
                attn.k_proj.weight[hd + e, C] = -G_MARK
            for c in const:
                attn.k_proj.weight[hd + c, C] = K_CONST
            freeze(attn.q_proj.weight, rows)
            freeze(attn.k_proj.weight, rows)
        else:
            silence(1, 1)
        wire_previous(1, 2)
    return list(masks.values())


def install_grad_masks(pairs: Iterable[tuple[Any, Any]]) -> list[Any]:
    """Zero the gradient of the wired slices (returns the hook handles)."""
    return [p.register_hook(lambda g, m=m: g * m) for p, m in pairs]
