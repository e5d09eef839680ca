"""What a streaming-moderation session reports. Shared by the local session, the Gen
fallback and the remote (server) session, so callers never need two code paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..verdict import Category, RiskLevel, Verdict


@dataclass(frozen=True)
class TokenVerdict:
    """The Stream model's judgement of one response token."""

    index: int  # position of the token in the response (0 = first response token)
    token_id: int | None
    text: str  # the token's text (may be empty or a partial character for byte tokens)
    risk: RiskLevel
    category: Category | None  # argmax category; meaningful when risk is not Safe
    risk_prob: float  # probability of ``risk``
    unsafe_prob: float = 0.0  # probability of Unsafe
    controversial_prob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "token_id": self.token_id,
            "text": self.text,
            "risk": self.risk.value,
            "category": self.category.value if self.category else None,
            "risk_prob": self.risk_prob,
            "unsafe_prob": self.unsafe_prob,
            "controversial_prob": self.controversial_prob,
        }


@dataclass(frozen=True)
class StreamUpdate:
    """The result of feeding one chunk (or closing).

    ``flagged`` is sticky: once a session is flagged every later update says so.
    ``verdict`` is the debounced verdict of the response so far (Safe until flagged).
    ``flag_offset`` is the character offset in the response where the flagged span starts.
    ``settled_offset`` is the offset before which no future flag can start: text before it has
    been judged and will stay allowed, whatever comes next. It only grows; once flagged it is
    ``flag_offset``. A reader may be shown exactly the text before it (see
    :class:`~qwen3guard.stream.gate.StreamGate`).
    """

    token_verdicts: tuple[TokenVerdict, ...] = ()
    flagged: bool = False
    verdict: Verdict | None = None
    flag_offset: int | None = None
    flag_token_index: int | None = None
    tokens_seen: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    settled_offset: int = 0
