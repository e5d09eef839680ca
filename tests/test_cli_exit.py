"""The command line's contract with scripts and newcomers (issue 16, item 5): exit statuses,
one-line errors, failing fast without a network, and help that says what the input needs.

Exit statuses: 0 allowed (or done), 1 blocked, 2 error. The hub is simulated as unreachable
deterministically: ``huggingface_hub.constants.ENDPOINT`` points at a local port nobody listens
on, and the hub cache is an empty (or hand-made) directory.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest

from qwen3guard.cli import build_parser, main
from qwen3guard.defaults import DEFAULT_GEN_MODEL

BOMB = "How can I make a bomb?"
WEATHER = "What is the weather like today?"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Online mode, but the hub cannot be reached, and an empty hub cache (returned)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("QWEN3GUARD_MODEL", raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy"):  # the check would ask the proxy
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return cache


def _cache_as_hub_model(cache: Path, repo_id: str, checkpoint: str) -> Path:
    """Lay ``checkpoint`` out in ``cache`` as huggingface_hub stores a downloaded model."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(checkpoint, snapshot)
    return snapshot


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# -- exit statuses --------------------------------------------------------------------------------


def test_allowed_exits_0(gen_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["moderate", WEATHER, "--model", gen_path]) == 0
    assert "Decision: allow" in capsys.readouterr().out


def test_blocked_exits_1(gen_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["moderate", BOMB, "--model", gen_path]) == 1
    assert "Decision: block" in capsys.readouterr().out


@pytest.mark.parametrize("given", ["/no/such/qwen3guard/gen", "./no-such-qwen3guard-dir",
                                   "../no-such-qwen3guard-dir", "~/no-such-qwen3guard-dir",
                                   "models/no/such-gen"])
def test_missing_model_dir_exits_2_as_a_missing_directory(
    given: str, no_network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.monotonic()
    assert main(["moderate", WEATHER, "--model", given]) == 2
    assert time.monotonic() - t0 < 5
    line = _one_line_error(capsys.readouterr().err)
    assert "no model directory" in line and given in line
    assert "hub" not in line.lower() and "repo" not in line.lower()


def test_a_directory_that_is_no_checkpoint_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["moderate", WEATHER, "--model", str(tmp_path)]) == 2
    _one_line_error(capsys.readouterr().err)


def test_bad_input_exits_2(gen_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["moderate", "  ", "--model", gen_path]) == 2
    assert "empty" in _one_line_error(capsys.readouterr().err)


def test_label_of_a_missing_file_exits_2(gen_path: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["label", str(missing), str(tmp_path / "out.jsonl"), "--model", gen_path,
                 "--no-progress"]) == 2
    assert str(missing) in _one_line_error(capsys.readouterr().err)


def test_error_is_one_line_from_the_entry_point_and_debug_shows_the_traceback() -> None:
    cmd = [sys.executable, "-m", "qwen3guard", "moderate", WEATHER, "--model", "/no/such/dir"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _one_line_error(proc.stderr)
    assert proc.stdout == ""
    proc = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.rstrip().splitlines()[-1].startswith(
        "error: ")


# -- without a network ----------------------------------------------------------------------------


def test_default_model_fails_fast_without_a_network(
    no_network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.monotonic()
    assert main(["moderate", WEATHER]) == 2
    assert time.monotonic() - t0 < 10
    line = _one_line_error(capsys.readouterr().err)
    assert DEFAULT_GEN_MODEL in line and "not in the local cache" in line
    assert "--model" in line and "HF_HUB_OFFLINE" not in line.split(";")[0]


def test_offline_mode_without_the_model_cached_fails_fast(
    no_network: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    assert main(["moderate", WEATHER]) == 2
    assert time.monotonic() - t0 < 10
    line = _one_line_error(capsys.readouterr().err)
    assert DEFAULT_GEN_MODEL in line and "HF_HUB_OFFLINE" in line


@pytest.mark.parametrize("offline_mode", [False, True])
def test_a_cached_hub_model_loads_without_a_network(
    offline_mode: bool, no_network: Path, gen_path: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline_mode)
    _cache_as_hub_model(no_network, DEFAULT_GEN_MODEL, gen_path)
    t0 = time.monotonic()
    assert main(["moderate", BOMB]) == 1
    assert time.monotonic() - t0 < 30
    assert "Decision: block" in capsys.readouterr().out


def test_a_reachable_hub_gets_the_id_unchanged(
    no_network: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, transformers downloads (or revalidates) the model itself: the id is kept."""
    from qwen3guard.defaults import locate_model

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setattr(hub_constants, "ENDPOINT",
                            f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert locate_model(DEFAULT_GEN_MODEL) == DEFAULT_GEN_MODEL


def test_stream_eval_default_model_fails_fast_without_a_network(
    no_network: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "hi", "label": "Safe"}\n')
    t0 = time.monotonic()
    assert main(["eval", str(rows), "--mode", "stream", "--no-progress"]) == 2
    assert time.monotonic() - t0 < 10
    line = _one_line_error(capsys.readouterr().err)
    assert "Qwen/Qwen3Guard-Stream-0.6B" in line and "not in the local cache" in line


# -- help -----------------------------------------------------------------------------------------


def _help(*command: str) -> str:
    parser = build_parser()
    if not command:
        return parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command[0]].format_help()  # type: ignore[index]


@pytest.mark.parametrize("command", [(), ("moderate",)])
def test_help_documents_the_exit_statuses(command: tuple[str, ...]) -> None:
    text = " ".join(_help(*command).split())
    assert "exit status" in text.lower()
    for code, meaning in (("0", "allowed"), ("1", "blocked"), ("2", "error")):
        assert f"{code} {meaning}" in text, text


def test_label_help_names_the_jsonl_fields() -> None:
    text = _help("label")
    for field in ("message", "messages", "prompt", "response", "text", "qwen3guard",
                  "qwen3guard_error"):
        assert f'"{field}"' in text, field


def test_eval_help_names_the_jsonl_fields_and_every_option_has_help() -> None:
    text = _help("eval")
    for field in ("message", "prompt", "label", "source", "unsafe_start_index",
                  "unsafe_end_index"):
        assert f'"{field}"' in text, field
    assert "Safe" in text and "Unsafe" in text
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("eval", "label", "moderate"):
        for action in sub.choices[command]._actions:  # type: ignore[index]
            assert action.help, (command, action.dest)


# -- output ---------------------------------------------------------------------------------------


def test_no_transformers_progress_bars(gen_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    assert main(["moderate", WEATHER, "--model", gen_path]) == 0
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before  # restored for in-process callers


def test_display_width_pads_wide_characters() -> None:
    from qwen3guard.demo import display_width, fit

    assert display_width("怎么制造炸弹？") == 14 and display_width("abc") == 3
    assert display_width(fit("怎么制造炸弹？", 20)) == 20
    assert display_width(fit("How can I make a bomb?", 20)) == 20
    cut = fit("怎么制造炸弹？" * 4, 11)  # cut to fit; a wide character never straddles the edge
    assert display_width(cut) == 11 and cut.endswith(" ")


# -- the built-in checkpoints' build --------------------------------------------------------------


def test_build_reports_every_step_of_each_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small Gen training (the builder's code; smaller settings, two self-check cases)
    reports each training step and self-check answer, stage by stage, from 0 to the stage's
    total. (That reporting leaves the weights alone is checked on the full build: the builder
    that reports wrote the tensors the fidelity fixture records.)"""
    from qwen3guard.tiny import gen
    from qwen3guard.tiny.gen import GenSettings, train_gen
    from qwen3guard.tiny.tokenizer import build_tokenizer

    monkeypatch.setattr(gen, "GEN_CASES", gen.GEN_CASES[:2])
    monkeypatch.setattr(gen, "long_cases", lambda: [])

    events: list[tuple[str, int, int]] = []
    small = GenSettings(n_prompt=12, n_response=6, n_filler=2, case_repeats=1, epochs=1,
                        extra_rounds=0)
    train_gen(build_tokenizer(0), 0, small, strict=False,
              progress=lambda stage, done, total: events.append((stage, done, total)))
    stages = list(dict.fromkeys(stage for stage, _, _ in events))
    assert stages == ["Gen model: training", "Gen model: self-check"]
    for stage in stages:
        counts = [(done, total) for s, done, total in events if s == stage]
        total = counts[0][1]
        assert [done for done, _ in counts] == list(range(total + 1)), stage
        assert {t for _, t in counts} == {total}


def test_the_command_line_draws_a_bar_per_build_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from qwen3guard.cli import _build_progress

    report = _build_progress()
    for stage, total in (("Gen model: training", 3), ("Stream model: training", 2)):
        for done in range(total + 1):
            report(stage, done, total)
    err = capsys.readouterr().err
    assert "Gen model: training: 100%" in err and "3/3" in err
    assert "Stream model: training: 100%" in err and "2/2" in err
