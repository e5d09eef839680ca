"""Fixtures that start servers (vLLM, `qwen3guard serve`); filled in by the remote tests."""
