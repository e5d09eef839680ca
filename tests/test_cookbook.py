"""The cookbook notebooks run top to bottom on the built-in small checkpoints.

Each notebook is executed with ``nbclient`` in a fresh kernel of *this* interpreter (a kernel
spec written for ``sys.executable``, so a user-level ``python3`` kernel elsewhere cannot be
picked up), with ``QWEN3GUARD_MODEL`` / ``QWEN3GUARD_STREAM_MODEL`` pointing at the tiny
checkpoints and ``QWEN3GUARD_COOKBOOK_OUT`` at a temporary directory for the files the notebooks
write. The notebooks assert on their own results, so a broken notebook fails here. A notebook
that starts vLLM (``VLLM_NOTEBOOKS``) runs with the vLLM venv of ``tests/vllm_stream_fixtures.py``
(``QWEN3GUARD_VLLM_PYTHON``), so it carries the ``vllm`` marker.

The ``.ipynb`` files are the notebooks' source: they are committed without outputs, and ruff
checks their code like any other file (``make lint``; ``test_notebook_code_is_lint_clean`` here,
until CI runs the lint). Kernels write their connection files into a private
``JUPYTER_RUNTIME_DIR`` that is removed at the end, so nothing is left in ``/tmp``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests import vllm_stream_fixtures as fx

# The vLLM venv with this checkout's qwen3guard plugins (tests/vllm_stream_fixtures.py): a
# notebook that serves a model on vLLM runs with it, and the test is marked ``vllm`` for it.
vllm_stream_python = fx.vllm_stream_python

ROOT = Path(__file__).resolve().parents[1]
COOKBOOK = ROOT / "cookbook"
NOTEBOOKS = sorted(COOKBOOK.glob("*.ipynb"))
# Notebooks that start vLLM (with QWEN3GUARD_VLLM_PYTHON): run only where vLLM is installed.
VLLM_NOTEBOOKS = {"09_stream_on_vllm"}
CELL_TIMEOUT_S = 300

# Figures a notebook must have saved (in QWEN3GUARD_COOKBOOK_OUT).
FIGURES = {
    "01_quickstart": ["01_token_risk.png"],
    "07_dataset_labeling": ["07_confusion_matrix.png"],
    "10_roll_back_and_regenerate": ["10_roll_back_and_regenerate.png"],
}
# Servers a notebook starts write their pid here; they must be gone when it ends.
SERVER_PIDFILES = {"06_remote_deployment": "06_server.pid", "09_stream_on_vllm": "09_server.pid"}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_cookbook_has_its_notebooks() -> None:
    names = {p.stem for p in NOTEBOOKS}
    assert {
        "01_quickstart",
        "02_lcel_streaming",
        "03_agent_middleware",
        "04_rag_langchain",
        "05_llamaindex_rag",
        "06_remote_deployment",
        "07_dataset_labeling",
        "08_rl_reward",
        "09_stream_on_vllm",
        "10_roll_back_and_regenerate",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    # The models are variables at the top, overridable from the environment.
    assert (
        'os.environ.get("QWEN3GUARD_MODEL", "Qwen/Qwen3Guard-Gen-' in first_code
        or 'os.environ.get("QWEN3GUARD_STREAM_MODEL", "Qwen/Qwen3Guard-Stream-' in first_code
    ), f"{path.name}: the first code cell does not read the models from the environment"


def test_notebook_code_is_lint_clean() -> None:
    """ruff reads the notebooks themselves (no generated copy): lint rules and formatting."""
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(COOKBOOK)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, f"ruff {' '.join(command)} cookbook:\n{result.stdout}"


@pytest.fixture(scope="session")
def kernel_spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``python3`` kernel spec that runs this interpreter (the venv's python)."""
    from ipykernel.kernelspec import write_kernel_spec

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(str(kernels / "python3"))
    return kernels


@pytest.fixture(scope="session")
def jupyter_runtime_dir() -> Iterator[Path]:
    """Where the kernels' connection files go (not the user's runtime dir, not /tmp); removed."""
    runtime = Path(tempfile.mkdtemp(prefix="qwen3guard-jupyter-runtime-"))
    try:
        yield runtime
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _stop_leftover(pidfile: Path) -> bool:
    """Kill the process group named in ``pidfile`` if it is still alive; True if it was."""
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if p.stem not in VLLM_NOTEBOOKS], ids=lambda p: p.stem
)
def test_notebook_runs(
    path: Path,
    gen_path: str,
    stream_path: str,
    kernel_spec_dir: Path,
    jupyter_runtime_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QWEN3GUARD_VLLM_PYTHON", raising=False)
    _run_notebook(
        path, gen_path, stream_path, kernel_spec_dir, jupyter_runtime_dir, tmp_path, monkeypatch
    )


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if p.stem in VLLM_NOTEBOOKS], ids=lambda p: p.stem
)
def test_notebook_on_vllm_runs(
    path: Path,
    vllm_stream_python: Path,
    gen_path: str,
    stream_path: str,
    kernel_spec_dir: Path,
    jupyter_runtime_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QWEN3GUARD_VLLM_PYTHON", str(vllm_stream_python))
    _run_notebook(
        path, gen_path, stream_path, kernel_spec_dir, jupyter_runtime_dir, tmp_path, monkeypatch
    )


def _run_notebook(
    path: Path,
    gen_path: str,
    stream_path: str,
    kernel_spec_dir: Path,
    jupyter_runtime_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Execute ``path`` in a fresh kernel on the small checkpoints, then check what it left."""
    out = tmp_path / "out"
    out.mkdir()
    # The kernel (and any process it starts) inherits this environment.
    monkeypatch.setenv("QWEN3GUARD_MODEL", gen_path)
    monkeypatch.setenv("QWEN3GUARD_STREAM_MODEL", stream_path)
    monkeypatch.setenv("QWEN3GUARD_COOKBOOK_OUT", str(out))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_runtime_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for name in ("QWEN3GUARD_ENDPOINT", "QWEN3GUARD_POLICY"):  # nothing may redirect the guard
        monkeypatch.delenv(name, raising=False)

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(
        kernel_name="python3",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)]),
        # without a name, jupyter_client writes it with mkstemp() into /tmp and may leave it
        connection_file=str(jupyter_runtime_dir / f"kernel-{path.stem}.json"),
    )
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(COOKBOOK)}},
    )
    pidfile = out / SERVER_PIDFILES[path.stem] if path.stem in SERVER_PIDFILES else None
    before = _listing()
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        lingered = pidfile is not None and _stop_leftover(pidfile)
        _shut_down(client, km)
    print(f"{path.name}: executed in {time.perf_counter() - t0:.1f}s")

    assert not lingered, f"{path.name} left its server running"
    assert not km.has_kernel, f"{path.name}: the kernel is still running"
    left = sorted(p.name for p in jupyter_runtime_dir.iterdir())
    assert not left, f"the kernel left its connection files behind: {left}"
    if pidfile is not None:
        assert pidfile.exists(), f"{path.name} did not start its server"
    for name in FIGURES.get(path.stem, []):
        figure = out / name
        assert figure.is_file(), f"{path.name} did not save {name}"
        data = figure.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, f"{name} is not a real plot"
    assert _listing() == before, "the notebook wrote into the cookbook directory"


def _shut_down(client: NotebookClient, km: KernelManager) -> None:
    """Stop the kernel and remove its connection file.

    nbclient shuts a kernel down only when it created the kernel manager itself
    (``owns_km`` in nbclient 0.11.0, ``client.py``); with ours, the kernel would live on until
    pytest exits (ipykernel watches its parent), and its connection file with it.
    """
    if client.kc is not None:
        client.kc.stop_channels()
    if km.has_kernel:
        km.shutdown_kernel(now=False)  # graceful: the notebook's atexit hooks run
    km.cleanup_resources()


def _listing() -> set[str]:
    """The cookbook's files: the notebooks run there, so a relative write would land there."""
    return {p.name for p in COOKBOOK.iterdir()}
