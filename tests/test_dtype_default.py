"""The default dtype is the faster one on the machine the model runs on (issue 15, item 3).

Measured with ``benchmarks/dtype.py`` (figures in its docstring): on a CPU with AMX, bf16 makes
a 0.6B Gen generate faster, while the Stream per-token step gains next to nothing and the small
built-in checkpoints are slower in bf16. So: CUDA bf16 where the card has it, else fp16; CPU
bf16 only for a Gen model of at least ``BF16_MIN_PARAMS`` on a CPU with native bf16 matrix
units; fp32 otherwise (and always for Stream on CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qwen3guard.gen import local
from qwen3guard.gen.local import BF16_MIN_PARAMS, TransformersGenBackend, resolve_device_dtype
from qwen3guard.stream.local_backend import resolve_device_dtype as stream_resolve

BIG = 600_000_000  # Qwen3Guard-Gen-0.6B


def _cpu(monkeypatch: pytest.MonkeyPatch, *, amx: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caps = {**torch.cpu.get_capabilities(), "amx_bf16": amx, "amx_tile": amx}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)


def test_cpu_without_native_bf16_stays_on_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, amx=False)
    assert not local.cpu_has_native_bf16()
    assert resolve_device_dtype(None, None, params=BIG) == ("cpu", torch.float32)
    assert resolve_device_dtype("cpu", "auto", params=BIG) == ("cpu", torch.float32)
    assert stream_resolve(None, None) == ("cpu", torch.float32)


def test_cpu_with_native_bf16_picks_bf16_for_a_large_gen_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cpu(monkeypatch, amx=True)
    assert local.cpu_has_native_bf16()
    assert resolve_device_dtype(None, None, params=BIG) == ("cpu", torch.bfloat16)
    assert resolve_device_dtype("cpu", None, params=BF16_MIN_PARAMS) == ("cpu", torch.bfloat16)
    # small models (the built-in checkpoints) and an unknown size stay on fp32
    assert resolve_device_dtype(None, None, params=BF16_MIN_PARAMS - 1) == ("cpu", torch.float32)
    assert resolve_device_dtype(None, None) == ("cpu", torch.float32)
    # the Stream step gains next to nothing in bf16: fp32 on CPU
    assert stream_resolve(None, None) == ("cpu", torch.float32)
    # an explicit dtype always wins
    assert resolve_device_dtype("cpu", "float32", params=BIG) == ("cpu", torch.float32)
    assert resolve_device_dtype("cpu", torch.float16, params=1) == ("cpu", torch.float16)


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_picks_bf16_where_the_card_has_it_else_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    want = torch.bfloat16 if bf16 else torch.float16
    for params in (None, 1, BIG):
        assert resolve_device_dtype(None, None, params=params) == ("cuda", want)
    assert stream_resolve(None, None) == ("cuda", want)
    assert resolve_device_dtype("cpu", None) == ("cpu", torch.float32)


def test_the_built_in_checkpoints_load_in_fp32_even_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, gen_path: str
) -> None:
    """The Gen backend sizes the checkpoint from its config before loading: the small built-in
    one is far under the threshold, so its pinned fp32 verdicts hold on any CPU."""
    _cpu(monkeypatch, amx=True)
    seen: list[Any] = []
    real = local.resolve_device_dtype

    def spy(device: Any, dtype: Any, **kw: Any) -> Any:
        seen.append(kw.get("params"))
        return real(device, dtype, **kw)

    monkeypatch.setattr(local, "resolve_device_dtype", spy)
    gen = TransformersGenBackend(gen_path)
    try:
        assert gen.dtype == torch.float32
        assert next(gen.model.parameters()).dtype == torch.float32
    finally:
        gen.close()
    assert seen and seen[0] is not None and 0 < seen[0] < BF16_MIN_PARAMS
    assert local.param_count(gen.model.config) == pytest.approx(
        sum(p.numel() for p in gen.model.parameters()), rel=0.05
    )
