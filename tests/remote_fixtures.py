"""Fixtures that start real servers on loopback: vLLM (CPU build, its own venv) and
``qwen3guard serve``, both on the built-in small Gen checkpoint. Loaded as a pytest plugin by
the root conftest.

- ``vllm_url``: a vLLM OpenAI server (the venv is created by ``scripts/ensure_vllm.sh`` when
  missing; ``QWEN3GUARD_VLLM_PYTHON`` points at another interpreter). When vLLM cannot be
  installed or does not start, the tests that need it FAIL, with the log tail. Only
  ``QWEN3GUARD_SKIP_VLLM=1`` turns that into a skip.
- ``serve_url``: ``qwen3guard serve`` with the Gen and Stream models.
- ``gen_server_url``: parametrized over both (``"vllm"``, ``"serve"``); started lazily, so
  selecting only one kind starts only that server.

Every server is started once per session and stopped (its whole process group) by the
fixture's finalizer, failures included. Start-up times are printed in the terminal summary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launch import (
    ServerProcess,
    ServerStartError,
    ensure_vllm,
    serve_server,
    vllm_server,
)

VLLM_START_TIMEOUT = float(os.environ.get("QWEN3GUARD_VLLM_START_TIMEOUT", "480"))
SERVE_START_TIMEOUT = float(os.environ.get("QWEN3GUARD_SERVE_START_TIMEOUT", "180"))
SERVE_API_KEY = "test-key-123"
#: Limits of the ``serve_abuse_url`` server (small, so the abuse tests stay short).
ABUSE_MAX_SESSIONS = 16
ABUSE_IDLE_S = 3.0
ABUSE_WINDOW_TOKENS = 1024

_startup: dict[str, float] = {}


def _log_dir(factory: pytest.TempPathFactory) -> Path:
    return factory.mktemp("server-logs", numbered=True)


def _start(proc: ServerProcess, timeout: float) -> ServerProcess:
    proc.start()
    try:
        _startup[proc.name + " " + proc.ready_url] = proc.wait_ready(timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if os.environ.get("QWEN3GUARD_SKIP_VLLM") == "1":
        pytest.skip("QWEN3GUARD_SKIP_VLLM=1: vLLM tests skipped on request")
    try:
        return ensure_vllm(install=True)
    except RuntimeError as exc:
        pytest.fail(f"vLLM is required for these tests and could not be installed: {exc}")


@pytest.fixture(scope="session")
def vllm_url(
    vllm_python: Path, gen_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    logs = _log_dir(tmp_path_factory)
    proc = vllm_server(gen_path, python=vllm_python, log_path=str(logs / "vllm.log"))
    try:
        _start(proc, VLLM_START_TIMEOUT)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield proc.base_url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def serve_process(
    gen_path: str, stream_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = _log_dir(tmp_path_factory)
    proc = serve_server(gen_path, stream_model=stream_path, log_path=str(logs / "serve.log"))
    try:
        _start(proc, SERVE_START_TIMEOUT)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def serve_url(serve_process: ServerProcess) -> str:
    return serve_process.base_url


@pytest.fixture(scope="session")
def serve_with_key_url(gen_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second ``qwen3guard serve`` (Gen only) that requires ``SERVE_API_KEY``."""
    logs = _log_dir(tmp_path_factory)
    proc = serve_server(gen_path, api_key=SERVE_API_KEY, log_path=str(logs / "serve-key.log"))
    try:
        _start(proc, SERVE_START_TIMEOUT)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield proc.base_url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def serve_abuse_url(
    gen_path: str, stream_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A ``qwen3guard serve`` with a small stream-session cap, a short idle timeout, and windows
    of half the small checkpoint's context (the latency bound of a small request)."""
    logs = _log_dir(tmp_path_factory)
    proc = serve_server(
        gen_path,
        stream_model=stream_path,
        extra_args=[
            "--max-stream-sessions",
            str(ABUSE_MAX_SESSIONS),
            "--stream-idle-timeout",
            str(ABUSE_IDLE_S),
            "--max-window-tokens",
            str(ABUSE_WINDOW_TOKENS),
        ],
        log_path=str(logs / "serve-abuse.log"),
    )
    try:
        _start(proc, SERVE_START_TIMEOUT)
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield proc.base_url
    finally:
        proc.stop()


@pytest.fixture(scope="session", params=["vllm", "serve"])
def gen_server_url(request: pytest.FixtureRequest) -> str:
    """The base URL of a server running the small Gen checkpoint: vLLM, then qwen3guard serve."""
    return request.getfixturevalue("vllm_url" if request.param == "vllm" else "serve_url")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startup:
        terminalreporter.section("server start-up")
        for name, seconds in _startup.items():
            terminalreporter.write_line(f"{name}: ready after {seconds:.1f}s")
