"""Gen backends: where Qwen3Guard-Gen runs (in process, or behind an OpenAI-compatible API)."""

from .base import GenBackend

__all__ = ["GenBackend"]
