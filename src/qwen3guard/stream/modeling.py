"""Qwen3Guard-Stream without remote code: ``Qwen3ForGuardModel`` on transformers' Qwen3Model.

Loads the official checkpoint format (config keys, label maps and weight names as the hub's
``modeling_qwen3_guard.py`` writes them) on transformers 5, single or sharded safetensors, and
decodes incrementally with the KV cache. Heads, per the reference (all ``bias=False``; ``h`` is
the backbone's last hidden state after its final norm):

    risk  = risk_level_head(RMSNorm(risk_level_category_pre(h)))          # 3
    cat   = category_head(...)                                             # 8
    q_risk, q_cat: the same with the ``query_`` prefix                     # 3, 9

The heads' label orders live in :mod:`qwen3guard.stream.labels` (re-exported here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3PreTrainedModel, Qwen3RMSNorm
from transformers.utils import ModelOutput

from ..errors import ModelFormatError
from .labels import QUERY_CATEGORIES, RESPONSE_CATEGORIES, RISK_LEVELS, label_maps

STREAM_ARCH = "Qwen3ForGuardModel"


@dataclass
class GuardModelOutput(ModelOutput):
    risk_level_logits: torch.Tensor | None = None
    category_logits: torch.Tensor | None = None
    query_risk_level_logits: torch.Tensor | None = None
    query_category_logits: torch.Tensor | None = None
    cache: Any = None  # transformers 5 names the KV cache ``cache``

    @property
    def past_key_values(self) -> Any:
        return self.cache


class Qwen3ForGuardModel(Qwen3PreTrainedModel):
    """A Qwen3 backbone (weights under ``model.*``) with a response and a query pathway."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__(config)
        self.model = Qwen3Model(config)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        inner = getattr(config, "guard_inner_size", 512)
        self.risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
        self.risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.risk_level_head = nn.Linear(inner, getattr(config, "num_risk_level", 3), bias=False)
        self.category_head = nn.Linear(inner, getattr(config, "num_category", 8), bias=False)
        self.query_risk_level_category_pre = nn.Linear(hidden, inner, bias=False)
        self.query_risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.query_risk_level_head = nn.Linear(
            inner, getattr(config, "num_query_risk_level", 3), bias=False
        )
        self.query_category_head = nn.Linear(
            inner, getattr(config, "num_query_category", 9), bias=False
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> GuardModelOutput:
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        h = out.last_hidden_state
        x = self.risk_level_category_layernorm(self.risk_level_category_pre(h))
        q = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(h))
        return GuardModelOutput(
            risk_level_logits=self.risk_level_head(x),
            category_logits=self.category_head(x),
            query_risk_level_logits=self.query_risk_level_head(q),
            query_category_logits=self.query_category_head(q),
            cache=getattr(out, "cache", None) or getattr(out, "past_key_values", None),
        )


def _read_config(path: str) -> dict[str, Any]:
    local = Path(path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    return AutoConfig.from_pretrained(path).to_dict()


def _is_stream(cfg: dict[str, Any]) -> bool:
    return STREAM_ARCH in (cfg.get("architectures") or []) or "guard_inner_size" in cfg


def check_gen_checkpoint(path: str) -> None:
    """Raise ModelFormatError if ``path`` holds a Stream checkpoint (given to the Gen loader)."""
    try:
        cfg = _read_config(path)
    except OSError:
        return  # let the real loader report a missing checkpoint in its own words
    if _is_stream(cfg):
        raise ModelFormatError(
            f"{path} is a Qwen3Guard-Stream checkpoint ({STREAM_ARCH}); the Gen loader needs a "
            "Qwen3Guard-Gen checkpoint (Qwen3ForCausalLM). Pass it as stream_model= instead."
        )


def load_stream_model(
    path: str, device: str | None = None, dtype: Any = None
) -> Qwen3ForGuardModel:
    """Load Qwen3Guard-Stream weights into :class:`Qwen3ForGuardModel` (no remote code)."""
    cfg = _read_config(path)
    if not _is_stream(cfg):
        arch = ", ".join(cfg.get("architectures") or ["unknown"])
        raise ModelFormatError(
            f"{path} is a Qwen3Guard-Gen checkpoint ({arch}); the Stream loader needs a "
            f"Qwen3Guard-Stream checkpoint ({STREAM_ARCH}). Pass it as model= instead."
        )
    config = Qwen3Config.from_pretrained(path)
    kwargs: dict[str, Any] = {"config": config}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = Qwen3ForGuardModel.from_pretrained(path, **kwargs)
    if device is not None:
        model.to(device)  # type: ignore[arg-type]
    return model.eval()


__all__ = [
    "QUERY_CATEGORIES",
    "RESPONSE_CATEGORIES",
    "RISK_LEVELS",
    "STREAM_ARCH",
    "GuardModelOutput",
    "Qwen3ForGuardModel",
    "check_gen_checkpoint",
    "label_maps",
    "load_stream_model",
]
