"""Repository-wide pytest set-up, loaded when pytest runs from the repository root.

- The environment every test runs in: offline (the built-in small checkpoints need no hub).
- The server fixtures of ``tests/remote_fixtures.py`` (vLLM, ``qwen3guard serve``), as a plugin.
- The ``vllm`` marker, put on every test that needs a vLLM server, so that
  ``pytest -m "not vllm"`` (``make test-fast``) runs everything else without installing vLLM.

The fixtures on the built-in small checkpoints live next to the tests that use them:
``tests/conftest.py`` for the core, and each integration's ``tests/conftest.py`` for its own
suite, so ``pytest integrations/langchain/tests`` and ``pytest integrations/llama-index/tests``
also run on their own (from the root or from the package's directory, with the package's own
pytest settings).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.remote_fixtures"]

# Fixtures that install or start vLLM (tests/remote_fixtures.py, tests/vllm_stream_fixtures.py);
# a test needs vLLM when one of them is in its fixture closure, however indirectly.
VLLM_FIXTURES = frozenset(
    {"vllm_python", "vllm_url", "vllm_stream_python", "vllm_stream", "vllm_stream_url"}
)
# Fixtures parametrized over server kinds, and the parameter value that means vLLM.
VLLM_PARAMS = {"gen_server_url": "vllm"}


def needs_vllm(item: pytest.Item) -> bool:
    """True when the test uses a vLLM server, directly or through a parametrized fixture."""
    if VLLM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return any(params.get(name) == value for name, value in VLLM_PARAMS.items())


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if needs_vllm(item):
            item.add_marker(pytest.mark.vllm)
