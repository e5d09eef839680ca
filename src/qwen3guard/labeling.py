"""Offline dataset labeling: JSONL in, the same rows with a verdict added out.

Output row *k* is input row *k* plus a ``qwen3guard`` object (or ``qwen3guard_error`` when
the row cannot be judged as given). Rows are written batch by batch and flushed, so an
interrupted run loses at most the batch in flight; running again continues after the last
complete output row and never judges a row twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import GuardOutputError, InvalidInputError


def row_conversation(row: Any) -> Any:
    """The conversation a dataset row describes: ``message``/``messages`` (a list of
    role/content dicts), or ``prompt`` (+ ``response``), or ``text``."""
    if not isinstance(row, dict):
        raise InvalidInputError("a row must be a JSON object")
    for key in ("message", "messages"):
        if key in row:
            return row[key]
    if "prompt" in row:
        if row.get("response") is not None:
            return [{"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["response"]}]
        return [{"role": "user", "content": row["prompt"]}]
    if "text" in row:
        return [{"role": "user", "content": row["text"]}]
    raise InvalidInputError("a row needs 'message', 'messages', 'prompt' or 'text'")


def _completed_rows(out_path: Path) -> int:
    """Count complete output rows and cut off a torn last line from an interrupted run."""
    if not out_path.exists():
        return 0
    data = out_path.read_bytes()
    end = data.rfind(b"\n") + 1
    done = 0
    for k, line in enumerate(data[:end].splitlines()):
        try:
            row = json.loads(line)
            label = row.get("qwen3guard") or row.get("qwen3guard_error")
            index = label["row"]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{out_path}:{k + 1} is not a labeled row; refusing to resume") from exc
        if index != k:
            raise ValueError(f"{out_path}:{k + 1} labels row {index}, expected {k}; "
                             "is this output from another input?")
        done += 1
    if end < len(data):
        with out_path.open("r+b") as f:
            f.truncate(end)
    return done


def _rows(in_path: Path) -> Iterator[tuple[int, Any]]:
    with in_path.open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield k, json.loads(line)
            except ValueError:
                yield k, _BadRow(line)


class _BadRow:
    def __init__(self, line: str) -> None:
        self.line = line


def label_file(
    guard: Any, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
    batch_size: int = 16, progress: bool = True,
) -> dict[str, int]:
    in_path, out_path = Path(in_path), Path(out_path)
    rows = [row for _, row in _rows(in_path)]
    done = _completed_rows(out_path)
    if done > len(rows):
        raise ValueError(f"{out_path} has {done} rows but {in_path} only {len(rows)}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), initial=done, unit="row", desc="labeling")
    stats = {"rows": len(rows), "skipped": done, "labeled": 0, "errors": 0}
    with out_path.open("a", encoding="utf-8") as out:
        for start in range(done, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            convs = []
            for row in batch:
                try:
                    convs.append(InvalidInputError("row is not valid JSON") if isinstance(row, _BadRow)
                                 else row_conversation(row))
                except InvalidInputError as exc:
                    convs.append(exc)
            todo = [c for c in convs if not isinstance(c, Exception)]
            results = iter(guard.check_batch(todo, return_exceptions=True))
            lines = []
            for k, (row, conv) in enumerate(zip(batch, convs)):
                index = start + k
                result = conv if isinstance(conv, Exception) else next(results)
                if isinstance(result, (InvalidInputError, GuardOutputError)):
                    stats["errors"] += 1
                    label = {"qwen3guard_error": {"row": index, "error": str(result)}}
                elif isinstance(result, Exception):
                    raise result  # the guard is unavailable: stop; a re-run resumes here
                else:
                    stats["labeled"] += 1
                    label = {"qwen3guard": {**result.to_dict(), "row": index}}
                base = {"raw_line": row.line} if isinstance(row, _BadRow) else row
                if not isinstance(base, dict):
                    base = {"value": base}
                lines.append(json.dumps({**base, **label}, ensure_ascii=False) + "\n")
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return stats
