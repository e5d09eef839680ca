"""Streaming moderation: sessions (local, Gen fallback, served, vLLM) behind one API, and the
gate that decides what of a streamed answer reaches the reader.

The names users type are re-exported from :mod:`qwen3guard`; this package imports nothing heavy
(no torch) until a backend is used.
"""
