"""Benchmark rows: a JSONL file of Qwen3GuardTest-shaped objects."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..labeling import row_conversation
from .metrics import gold_label


@dataclass
class EvalRow:
    """One input row: its conversation (or the reason it has none) and its gold data.

    ``label`` is the normalised gold (Safe/Unsafe) this project scores; ``raw_label`` is the
    row's ``label`` value as written, which the official scripts compare with ``"Unsafe"``.
    ``error`` set: the row is not scored by this project's metrics (``label_error``: only its
    label is unusable, so ``--compat official`` still runs it).
    """

    index: int  # line number (0-based) in the input file
    row: Any
    conversation: Any = None
    label: str | None = None
    error: str | None = None
    label_error: bool = False

    @property
    def raw_label(self) -> Any:
        return self.row.get("label") if isinstance(self.row, dict) else None

    @property
    def source(self) -> str | None:
        src = self.row.get("source") if isinstance(self.row, dict) else None
        return str(src) if src is not None else None

    @property
    def span(self) -> tuple[int, int] | None:
        if not isinstance(self.row, dict):
            return None
        s, e = self.row.get("unsafe_start_index"), self.row.get("unsafe_end_index")
        if isinstance(s, int) and isinstance(e, int) and not isinstance(s, bool):
            return s, e
        return None


def load_rows(path: str | os.PathLike[str]) -> list[EvalRow]:
    """Read a JSONL file. A row that is not JSON, has no conversation or no valid label is
    kept with ``error`` set (it is reported, not silently dropped)."""
    rows: list[EvalRow] = []
    with Path(path).open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                rows.append(EvalRow(k, line, error="row is not valid JSON"))
                continue
            r = EvalRow(k, obj)
            try:
                r.conversation = row_conversation(obj)
            except (InvalidInputError, ValueError) as exc:
                r.error = str(exc)
                rows.append(r)
                continue
            try:
                r.label = gold_label(obj.get("label") if isinstance(obj, dict) else None)
            except ValueError as exc:
                r.error = str(exc)
                r.label_error = True
            rows.append(r)
    return rows


def is_response(conversation: Any) -> bool:
    """Whether the row is response moderation (its last message is the assistant's)."""
    return (
        isinstance(conversation, Sequence)
        and not isinstance(conversation, str)
        and bool(conversation)
        and isinstance(conversation[-1], Mapping)
        and str(conversation[-1].get("role", "")).lower() in ("assistant", "ai")
    )
