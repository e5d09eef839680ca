"""Qwen3Guard-Stream on vLLM: a model plugin and an IO-processor plugin (vLLM 0.32).

Two entry points make a stock vLLM serve the official Qwen3Guard-Stream checkpoint format:

- group ``vllm.general_plugins``, name ``qwen3guard`` -> :func:`register`: registers the
  architecture ``Qwen3ForGuardModel`` (:mod:`qwen3guard.vllm.model`) with vLLM's
  ``ModelRegistry`` (lazily, as ``"module:Class"``, so no vLLM import happens before vLLM asks);
- group ``vllm.io_processor_plugins``, name ``qwen3guard_stream`` -> :func:`io_processor`:
  returns the dotted name of :class:`qwen3guard.vllm.io_processor.StreamIOProcessor`, selected
  with ``--io-processor-plugin qwen3guard_stream``. It turns prefix-cache *reading* on for the
  per-token outputs (stock ``/pooling`` forces it off for ``token_classify``), so an
  incremental client pays only for its new tokens.

Serve (the CPU build needs ``--block-size`` a multiple of 32)::

    python -m vllm.entrypoints.openai.api_server --model Qwen/Qwen3Guard-Stream-0.6B \\
        --runner pooling --pooler-config '{"task": "token_classify"}' \\
        --enable-prefix-caching --io-processor-plugin qwen3guard_stream

and use it with :class:`qwen3guard.stream.vllm.VLLMStreamBackend`. Nothing here imports vLLM
or torch at import time: this module is imported by vLLM in every process it starts.
"""

from __future__ import annotations

ARCHITECTURE = "Qwen3ForGuardModel"
IO_PROCESSOR_NAME = "qwen3guard_stream"
#: The serve flags a Stream server needs besides ``--model`` (see the module docstring).
SERVE_ARGS: tuple[str, ...] = (
    "--runner",
    "pooling",
    "--pooler-config",
    '{"task": "token_classify"}',
    "--enable-prefix-caching",
    "--io-processor-plugin",
    IO_PROCESSOR_NAME,
)


def register() -> None:
    """``vllm.general_plugins`` entry point: make ``Qwen3ForGuardModel`` known to vLLM.

    Idempotent (vLLM loads general plugins once per process, in every process it starts;
    ``ModelRegistry.register_model`` overwrites an earlier registration)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, "qwen3guard.vllm.model:Qwen3ForGuardModel")


def io_processor() -> str:
    """``vllm.io_processor_plugins`` entry point: the processor's qualified class name
    (``vllm/plugins/io_processors/__init__.py`` of vLLM 0.32 calls this and resolves it)."""
    return "qwen3guard.vllm.io_processor.StreamIOProcessor"


__all__ = ["ARCHITECTURE", "IO_PROCESSOR_NAME", "SERVE_ARGS", "io_processor", "register"]
