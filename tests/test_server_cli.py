"""``qwen3guard serve`` arguments: the default Gen model is the other commands' one, ``--model
none`` serves no Gen, and serving nothing at all is refused before anything is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qwen3guard.defaults import DEFAULT_GEN_MODEL
from qwen3guard.server.cli import add_serve_arguments, resolve_models, run_serve


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_defaults_to_the_model_of_the_other_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QWEN3GUARD_MODEL", raising=False)
    assert resolve_models(_args()) == (DEFAULT_GEN_MODEL, None)
    monkeypatch.setenv("QWEN3GUARD_MODEL", "/models/gen")
    assert resolve_models(_args()) == ("/models/gen", None)
    assert resolve_models(_args("--model", "/other")) == ("/other", None)
    assert resolve_models(_args("--model", "none", "--stream-model", "/s")) == (None, "/s")


def test_serving_nothing_is_refused_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_serve(_args("--model", "none")) == 2
    assert "--stream-model or --stream-url" in capsys.readouterr().err


def test_stream_url_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--model", "none", "--stream-url", "http://127.0.0.1:9/v1",
                 "--stream-submit-every", "0")
    assert run_serve(args) == 2
    assert "--stream-submit-every" in capsys.readouterr().err


def test_a_missing_model_directory_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve --model DIR`` with no such directory: exit 2, one line, before anything loads."""
    import time

    from qwen3guard.cli import main

    t0 = time.monotonic()
    assert main(["serve", "--model", f"{tmp_path}/nope"]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no model directory at {tmp_path}/nope"]
