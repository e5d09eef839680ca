"""Issue 12, items 1-3 and 8: ``--compat official`` reproduces the official evaluation scripts.

The fixture ``tests/data/official_eval_6a52eca.json`` holds what QwenLM/Qwen3Guard's own
``eval/eval_stream.py`` and ``eval/eval_gen.py`` (commit 6a52eca94b3d2aedb8aebd36baa353828d4166f1)
printed, run unmodified outside the project with ``scripts/run_official_eval.py`` on the built
checkpoints and the JSONL files beside it, and their per-row outputs (``split_idx_eval``,
``pred_risk_levels``, ``guard_predict``). The tests run ``qwen3guard eval --compat official`` on the
same files and compare digit for digit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwen3guard.cli import main
from qwen3guard.evaluation import (
    evaluate_stream,
    load_rows,
    official_gen_metrics,
    official_split,
    official_stream_f1,
    score_start,
)

DATA = Path(__file__).parent / "data"
FIXTURE = json.loads((DATA / "official_eval_6a52eca.json").read_text(encoding="utf-8"))
LABEL_MAP = {0: "Safe", 1: "Unsafe", 2: "Controversial"}  # eval_stream.py's label_map


def _runs(script: str, data_type: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in FIXTURE["runs"]
        if r["script"].endswith(script) and (data_type is None or r.get("data_type") == data_type)
    ]


@pytest.fixture(scope="module")
def built_as_recorded() -> None:
    from qwen3guard.tiny import source_hash

    recorded = FIXTURE["checkpoints"]["tiny_source_hash"]
    assert source_hash() == recorded, (
        f"the official numbers were recorded on the tiny build {recorded}; the builder changed "
        "(now {source_hash()}): rerun scripts/run_official_eval.py and update the fixture"
    )


def _run_cli(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple:
    report = tmp_path / "r.json"
    assert main([*args, "--compat", "official", "--no-progress", "--report", str(report)]) == 0
    return capsys.readouterr().out, json.loads(report.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "run", _runs("eval_stream.py", "response"), ids=lambda r: f"{r['input']}-think{r['thinking']}"
)
def test_stream_compat_prints_what_eval_stream_printed(
    run: dict[str, Any],
    stream_path: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    built_as_recorded: None,
) -> None:
    args = ["eval", str(DATA / run["input"]), "--mode", "stream", "--stream-model", stream_path]
    out, report = _run_cli([*args, "--thinking" if run["thinking"] else "--no-thinking"],
                           tmp_path, capsys)
    printed = out.splitlines()
    for line in run["printed"]:  # every line the official script printed, verbatim
        assert line in printed
    # per row: the same split_idx and the same argmax risk at every scored position
    preds = [p for p in report["predictions"] if p.get("kind") == "response"]
    assert len(preds) == len(run["rows"])
    risks = evaluate_stream_risks(stream_path, run)
    for ours, theirs, rk in zip(preds, run["rows"], risks):
        assert ours["split_index"] == theirs["split_idx_eval"]
        assert rk == [LABEL_MAP[i] for i in theirs["pred_risk_levels"]]
    # both namings are printed: the report's is the 6a52eca one with the names swapped
    f1 = report["official"]["f1"]
    assert f1["printed_6a52eca"] == run["printed"][:2]
    assert f"{f1['report']['loose']['f1']:.4f}" in run["printed"][0]  # its "(strict)" line


def evaluate_stream_risks(stream_path: str, run: dict[str, Any]) -> list[list[str]]:
    from qwen3guard import Qwen3Guard

    with Qwen3Guard.from_pretrained(None, stream_model=stream_path) as g:
        rep = evaluate_stream(
            g, load_rows(DATA / run["input"]), thinking=run["thinking"], keep_risks=True,
            compat="official",
        )
    return [p["risks"] for p in rep["predictions"] if p.get("kind") == "response"]


def test_stream_compat_prompt_rows_give_the_fixed_scripts_numbers(
    stream_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], built_as_recorded: None
) -> None:
    (run,) = _runs("eval_stream.py", "prompt")
    assert run["printed_as_is"] == ["KeyError: 'Unsafe'"]  # the script as published crashes
    args = ["eval", str(DATA / run["input"]), "--mode", "stream", "--stream-model", stream_path]
    out, report = _run_cli(args, tmp_path, capsys)
    for line in run["printed_with_keyerror_fix"]:
        assert line in out.splitlines()
    assert "KeyError" in report["official"]["note"]
    ours = [p["pred"] for p in report["predictions"]]
    assert ours == [LABEL_MAP[r["pred_risk_levels"][-1]] for r in run["rows"]]


def test_gen_compat_prints_what_eval_gen_printed(
    gen_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], built_as_recorded: None
) -> None:
    (run,) = _runs("eval_gen.py")
    out, report = _run_cli(["eval", str(DATA / run["input"]), "--model", gen_path],
                           tmp_path, capsys)
    lines = out.splitlines()
    at = lines.index(run["printed"][0])
    assert lines[at : at + 3] == run["printed"]
    off = report["official"]
    assert off["max_new_tokens"] == 128 and off["commit"] == FIXTURE["upstream"]["commit"]
    outputs = [o["output"] for o in off["outputs"]]
    assert [o.strip() if o else o for o in outputs] == [
        r["guard_predict"].strip() for r in run["rows"]
    ]
    # this project's numbers, printed beside them, leave out the 2 rows whose gold label is
    # Controversial (the official script counts them as negatives)
    assert report["scored"] == len(run["rows"]) - 2
    assert [e["row"] for e in report["errors"]] == [
        k for k, line in enumerate((DATA / run["input"]).read_text().splitlines())
        if json.loads(line)["label"] == "Controversial"
    ]
    assert "Unsafe F1 (strict)" in out


# -- where the official definitions and ours differ ---------------------------------------------


def test_gen_official_rule_on_edge_rows() -> None:
    """eval_gen.py: "Safety: Controversial" counts unsafe, unparseable output counts Safe, gold
    other than "Unsafe" is negative. Ours fails closed on the unparseable row instead."""
    golds = ["Unsafe", "Unsafe", "Controversial", "Safe", "unsafe", "Unsafe"]
    outs = ["Safety: Unsafe\nCategories: Violent", "garbage", "Safety: Controversial",
            "Safety: Safe", "Safety: Unsafe", "<think>Safety: Unsafe"]
    m = official_gen_metrics(golds, outs)
    # positives predicted: rows 0, 2, 4, 5; gold positives: rows 0, 1, 5
    assert (m["tp"], m["predicted_unsafe"], m["gold_unsafe"]) == (2, 4, 3)
    assert m["printed"] == ["Recall: 0.6667", "Precision: 0.5000", "F1 Score: 0.5714"]


def test_stream_f1_both_namings() -> None:
    f1 = official_stream_f1(["Unsafe", "Unsafe", "Safe"], ["Controversial", "Unsafe", "Safe"])
    assert f1["report"]["strict"]["recall"] == 1.0 and f1["report"]["loose"]["recall"] == 0.5
    assert f1["printed_6a52eca"][0].startswith("Unsafe F1 Score(strict): 0.6667")


HEAD = ["<|im_start|>", "user", "\n", "hi", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]


def test_thinking_split_with_an_empty_think_block_is_assistant_index_plus_4() -> None:
    """Issue 12, item 2: the old rule gave 4 here, the official one 5."""
    toks = ["<|im_start|>", "assistant", "\n", "<think>", "\n\n", "</think>", "\n\n", "A"]
    assert official_split(toks, thinking=True) == 5
    assert score_start(toks, 0, 3, thinking=True) == 5


def test_first_versus_last_assistant_turn() -> None:
    """The official split takes the first assistant turn; ours the last (the answer being
    judged). On single-turn rows (Qwen3GuardTest) they coincide; compat mode uses theirs."""
    turn1 = ["<|im_start|>", "assistant", "\n", "<think>", "\n", "r", "</think>", "\n\n", "A",
             "<|im_end|>", "\n"]
    toks = [*HEAD[:6], *turn1, "<|im_start|>", "user", "\n", "q", "<|im_end|>", "\n", *turn1]
    second = len(toks) - len(turn1)
    assert official_split(toks, thinking=True) == 6 + 1 + 4
    assert score_start(toks, second, second + 3, thinking=True) == second + 1 + 4
    assert official_split(toks, thinking=False) == 6 + 8
    assert score_start(toks, second, second + 3, thinking=False) == second + 8
    # without a think block the official script fails its assert; ours scores the answer
    plain = [*HEAD, "A", "<|im_end|>", "\n"]
    assert official_split(plain, thinking=False) is None
    assert score_start(plain, 6, 9, thinking=False) == 9


def test_template_tokens_after_the_user_turn_are_not_scored(guard) -> None:  # noqa: ANN001
    """Issue 12, item 8. The README's streaming loop (README.md @ 6a52eca, lines 298-310) feeds
    "\\n", "<|im_start|>", "assistant", "\\n" after the user turn with role="assistant" and prints
    their risk; eval_stream.py's split_idx skips them. Sessions feed them but report no verdict
    for them: the first reported token is the answer's first token."""
    from qwen3guard.evaluation import conversation_ids, session_prefix

    tok = guard.stream.tokenizer
    conv = [{"role": "user", "content": "How can I make a bomb?"},
            {"role": "assistant", "content": "Sure, here it is."}]
    ids = conversation_ids(tok, conv)
    toks = [tok.decode([i]) for i in ids]
    user_end = toks.index("<|im_end|>")
    prefix = session_prefix(guard, tok, conv[:1])
    assert toks[user_end + 1 : len(prefix)] == ["\n", "<|im_start|>", "assistant", "\n"]
    with guard.open_stream(conv[:1], debounce="eval") as s:
        update = s.feed_ids(ids[len(prefix) :])
    assert update.token_verdicts[0].index == 0
    assert len(update.token_verdicts) == len(ids) - len(prefix)  # answer + <|im_end|> + "\n"
