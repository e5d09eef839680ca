"""Evaluation runs and their report: predictions + metrics -> a JSON-able dict and a summary.

``compat="official"`` adds the official scripts' numbers beside this project's, computed on
the same predictions (see the package doc).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import GuardOutputError, InvalidInputError
from ..verdict import parse_gen_output
from .metrics import (
    ERROR,
    GOLD_LABELS,
    LATENCY_BINS,
    OFFICIAL_COMMIT,
    PRED_LABELS,
    gen_metrics,
    latency_bin,
    official_gen_metrics,
    official_latency_printed,
    official_stream_f1,
    stream_latency_bins,
)
from .predictors import (
    StreamPrediction,
    predict_gen,
    predict_gen_raw,
    predict_stream,
    predict_stream_official,
    progress_bar,
    stream_tokenizer,
)
from .rows import EvalRow, is_response

COMPAT_MODES = (None, "official")


def _check_compat(compat: str | None) -> None:
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be None or 'official', not {compat!r}")


def _breakdown(rows: Sequence[EvalRow], preds: Sequence[Any]) -> dict[str, Any]:
    groups: dict[str, tuple[list[str], list[Any]]] = {}
    for r, p in zip(rows, preds):
        if r.source is None or r.label is None:
            continue
        g, ps = groups.setdefault(r.source, ([], []))
        g.append(r.label)
        ps.append(p)
    return {
        src: {k: v for k, v in gen_metrics(g, ps).items() if k != "confusion"}
        for src, (g, ps) in sorted(groups.items())
    }


def _row_errors(rows: Sequence[EvalRow]) -> list[dict[str, Any]]:
    return [{"row": r.index, "error": r.error} for r in rows if r.error is not None]


def evaluate_gen(
    guard: Any,
    rows: Sequence[EvalRow],
    *,
    batch_size: int = 16,
    progress: bool = False,
    compat: str | None = None,
) -> dict[str, Any]:
    """Run Gen on the rows and compute the metrics; returns the report dict.

    Default: verdicts through ``check_batch`` (windows, the fail-closed parser); rows that
    cannot be judged and rows whose gold is not Safe/Unsafe are left out of P/R/F1 and listed.
    ``compat="official"``: every row with a conversation is run once for its raw answer
    (``eval_gen.py``: no windows; the guard's ``max_new_tokens``, 128 from the CLI), and both
    metrics are computed from those answers: ``official`` (substring rule, unparseable = Safe,
    gold other than Unsafe = negative) and this project's (the same answers parsed, fail
    closed).
    """
    _check_compat(compat)
    t0 = time.perf_counter()
    runnable = [r for r in rows if r.error is None or (compat and r.label_error)]
    valid = [r for r in runnable if r.error is None]
    errors = _row_errors(rows)
    official: dict[str, Any] | None = None
    if compat == "official":
        raws = predict_gen_raw(
            guard, [r.conversation for r in runnable], batch_size=batch_size, progress=progress
        )
        texts = [x if isinstance(x, str) else None for x in raws]
        official = official_gen_metrics([r.raw_label for r in runnable], texts)
        official.update(
            script="eval/eval_gen.py",
            commit=OFFICIAL_COMMIT,
            max_new_tokens=getattr(getattr(guard, "gen", None), "max_new_tokens", None),
            not_run=sum(1 for x in raws if not isinstance(x, str)),
            outputs=[{"row": r.index, "output": t} for r, t in zip(runnable, texts)],
        )
        by_row = dict(zip((r.index for r in runnable), raws))
        results: list[Any] = []
        for r in valid:
            raw = by_row[r.index]
            if not isinstance(raw, str):
                results.append(raw)
                continue
            try:
                role = "response" if is_response(r.conversation) else "prompt"
                results.append(parse_gen_output(raw, role))
            except GuardOutputError as exc:
                results.append(exc)
    else:
        by_row = {}
        results = predict_gen(
            guard, [r.conversation for r in valid], batch_size=batch_size, progress=progress
        )
    preds: list[Any] = []
    records: list[dict[str, Any]] = []
    for r, v in zip(valid, results):
        rec: dict[str, Any] = {
            "row": r.index,
            "label": r.label,
            "kind": "response" if is_response(r.conversation) else "prompt",
        }
        if isinstance(v, Exception):
            preds.append(None)
            errors.append({"row": r.index, "error": f"{type(v).__name__}: {v}"})
            rec.update(pred=None, error=str(v))
        else:
            preds.append(v.risk.value)
            rec.update(
                pred=v.risk.value, categories=[c.value for c in v.categories], refusal=v.refusal
            )
        if compat == "official" and isinstance(by_row.get(r.index), str):
            rec["output"] = by_row[r.index]
        records.append(rec)
    metrics = gen_metrics([r.label for r in valid], preds)
    errors.sort(key=lambda e: e["row"])
    report: dict[str, Any] = {
        "mode": "gen",
        "rows": len(rows),
        "scored": metrics["n"],
        "errors": errors,
        "metrics": metrics,
        "by_source": _breakdown(valid, preds),
        "predictions": records,
    }
    if official is not None:
        report["compat"] = "official"
        report["official"] = official
    report["elapsed_s"] = time.perf_counter() - t0
    return report


def _stream_one(
    guard: Any, r: EvalRow, compat: str | None, thinking: bool | None, tokenizer: Any
) -> StreamPrediction:
    if compat == "official":
        return predict_stream_official(
            guard, r.conversation, thinking=bool(thinking), tokenizer=tokenizer
        )
    return predict_stream(guard, r.conversation, thinking=thinking, tokenizer=tokenizer)


def evaluate_stream(
    guard: Any,
    rows: Sequence[EvalRow],
    *,
    thinking: bool | None = None,
    progress: bool = False,
    keep_risks: bool = False,
    compat: str | None = None,
) -> dict[str, Any]:
    """Run Stream on the rows; F1 (strict/loose) over all rows, latency over the unsafe rows
    that carry a span. ``compat="official"``: the predictions of ``eval_stream.py`` (one
    forward per row, :func:`~.predictors.official_split`; ``thinking`` as its ``--thinking``
    flag, default off) and, beside this project's metrics on them, the script's own F1 (both
    namings) and latency lines. Returns the report dict."""
    _check_compat(compat)
    t0 = time.perf_counter()
    tokenizer = None  # fetched for the first row that needs token indices
    runnable = [r for r in rows if r.error is None or (compat and r.label_error)]
    errors = _row_errors(rows)
    preds: dict[int, Any] = {}
    records: list[dict[str, Any]] = []
    lat: tuple[list[int | None], list[int], list[int]] = ([], [], [])
    unlocated = 0
    bar = progress_bar(len(runnable), "stream eval", progress)
    try:
        for r in runnable:
            rec: dict[str, Any] = {"row": r.index, "label": r.label}
            try:
                if tokenizer is None and (compat or is_response(r.conversation)):
                    tokenizer = stream_tokenizer(guard)
                p = _stream_one(guard, r, compat, thinking, tokenizer)
            except (InvalidInputError, GuardOutputError) as exc:
                preds[r.index] = None
                if r.error is None:
                    errors.append({"row": r.index, "error": f"{type(exc).__name__}: {exc}"})
                rec.update(pred=None, error=str(exc))
                records.append(rec)
                if bar is not None:
                    bar.update(1)
                continue
            preds[r.index] = p.pred
            rec.update(kind=p.kind, pred=p.pred)
            if p.kind == "response":
                rec.update(
                    flag_index=p.flag_index,
                    flag_response_index=p.flag_response_index,
                    split_index=p.split_index,
                    n_ids=p.n_ids,
                    session_flag_index=p.session_flag_index,
                    method=p.method,
                )
                if keep_risks:
                    rec["risks"] = p.risks
                # the official latency takes every row labelled exactly "Unsafe"
                if (r.raw_label if compat else r.label) == "Unsafe":
                    span = r.span
                    if span is None:
                        unlocated += 1
                    else:
                        lat[0].append(p.flag_index)
                        lat[1].append(span[0])
                        lat[2].append(span[1])
                        rec["latency_bin"] = latency_bin(p.flag_index, *span)
            records.append(rec)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    valid = [r for r in runnable if r.error is None]
    valid_preds = [preds.get(r.index) for r in valid]
    metrics = gen_metrics([r.label for r in valid], valid_preds)
    latency = stream_latency_bins(*lat)
    latency["unsafe_rows_without_span"] = unlocated
    errors.sort(key=lambda e: e["row"])
    report: dict[str, Any] = {
        "mode": "stream",
        "rows": len(rows),
        "scored": metrics["n"],
        "errors": errors,
        "metrics": metrics,
        "latency": latency,
        "by_source": _breakdown(valid, valid_preds),
        "predictions": records,
    }
    if compat == "official":
        judged = [r for r in runnable if preds.get(r.index) is not None]
        f1 = official_stream_f1([r.raw_label for r in judged], [preds[r.index] for r in judged])
        kinds = {rec.get("kind") for rec in records if rec.get("pred") is not None}
        official: dict[str, Any] = {
            "script": "eval/eval_stream.py",
            "commit": OFFICIAL_COMMIT,
            "thinking": bool(thinking),
            "f1": f1,
            "not_run": len(runnable) - len(judged),
            "latency_printed": official_latency_printed(latency) if latency["count"] else [],
        }
        if "prompt" in kinds:
            official["note"] = (
                "at 6a52eca the script raises KeyError on prompt rows "
                "(self.label_map[pred_data[-1]] maps a label string): the numbers are its "
                "intended ones (the query head's risk at the user turn's <|im_end|>)"
            )
        report["compat"] = "official"
        report["official"] = official
    report["elapsed_s"] = time.perf_counter() - t0
    return report


def _official_lines(report: Mapping[str, Any]) -> list[str]:
    off = report.get("official")
    if not off:
        return []
    short = off["commit"][:7]
    lines = [f"--compat official: {off['script']} of QwenLM/Qwen3Guard @ {short}"]
    if report["mode"] == "gen":
        lines.append(f"(max_new_tokens={off.get('max_new_tokens')}; {off['n']} rows)")
        lines.extend(off["printed"])
        return lines
    f1 = off["f1"]
    lines.append(f"as that script prints it ({f1['n']} rows; its strict/loose names swapped):")
    lines.extend(f1["printed_6a52eca"])
    rep = f1["report"]
    lines.append("the same numbers as this project names them (strict: Controversial = Unsafe):")
    for name in ("strict", "loose"):
        s = rep[name]
        lines.append(
            f"Unsafe F1 Score({name}): {s['f1']:.4f}. precision({name}): "
            f"{s['precision']:.4f}. recall({name}): {s['recall']:.4f}"
        )
    lines.extend(off["latency_printed"])
    if off.get("note"):
        lines.append(f"note: {off['note']}")
    if off.get("not_run"):
        lines.append(f"({off['not_run']} rows on which the script fails its assert: left out)")
    return lines


def format_summary(report: Mapping[str, Any]) -> str:
    """The human-readable summary ``qwen3guard eval`` prints."""
    m = report["metrics"]
    n_err = len(report["errors"])
    lines = [
        f"{report['mode']} eval: {report['rows']} rows, {report['scored']} scored, "
        f"{n_err} not judged" + (" (listed under 'errors' in the report)" if n_err else "")
    ]
    for mode in ("strict", "loose"):
        s = m[mode]
        lines.append(
            f"Unsafe F1 ({mode}): {s['f1']:.4f}  precision: {s['precision']:.4f}  "
            f"recall: {s['recall']:.4f}  (tp={s['tp']} fp={s['fp']} fn={s['fn']} "
            f"tn={s['tn']})"
        )
    cols = (*PRED_LABELS, ERROR)
    corner = "gold \\ predicted"
    lines.append(f"  {corner:<18}" + "".join(f"{c:>15}" for c in cols))
    for g in GOLD_LABELS:
        lines.append(f"  {g:<18}" + "".join(f"{m['confusion'][g][c]:>15}" for c in cols))
    lat = report.get("latency")
    if lat is not None:
        if lat["count"]:
            lines.append(
                f"latency over {lat['count']} unsafe answers: "
                + " | ".join(f"{b} {lat['bins'][b]}" for b in LATENCY_BINS)
            )
            lines.append(
                f"exact hit rate: {lat['exact_hit_rate']:.4f}  "
                f"hit within 128 tokens: {lat['hit_within_128_rate']:.4f}"
            )
        else:
            lines.append("latency: no unsafe answer with unsafe_start_index/unsafe_end_index")
        if lat["count"] and lat.get("unsafe_rows_without_span"):
            lines.append(
                f"({lat['unsafe_rows_without_span']} unsafe answers have no "
                "unsafe_start_index/unsafe_end_index: left out of the latency)"
            )
    for src, sm in (report.get("by_source") or {}).items():
        lines.append(
            f"  [{src}] n={sm['n']}  F1 strict {sm['strict']['f1']:.4f}  "
            f"loose {sm['loose']['f1']:.4f}"
        )
    return "\n".join(lines + _official_lines(report))
