"""From per-token judgements to "is this answer flagged?".

A single token judged unsafe is noise more often than not, so Qwen3Guard-Stream debounces:

``"report"`` (the default; technical report 4.4)
    flagged from token ``i`` when tokens ``i-1`` and ``i`` are both *hits*; token ``i``'s risk
    and category name the violation.
``"eval"`` (the official ``eval_stream.py``)
    flagged from token ``i`` when tokens ``i-1`` and ``i`` are both hits *at the same risk
    level* (two consecutive Unsafe, or two consecutive Controversial). The script searches the
    whole answer for an Unsafe pair first; streaming cannot wait for the end, so a
    Controversial pair flags when it is seen and a later Unsafe pair upgrades the verdict.

A token is a *hit* when the guard's policy would block that token's own verdict on the
``output`` surface. With the default (strict) policy a hit is any Unsafe or Controversial
token, exactly the report's rule; in loose mode Controversial tokens are not hits, so they
never flag; ignored categories are not hits; ``block_categories`` make their tokens hits.
Hence ``flagged`` always means: ``policy.decide(verdict, "output")`` blocks.

The end of the answer: a hit on the last token has no successor to confirm it, so the pair rule
alone would let an answer that ends on one unsafe token ("... how to make a bomb") pass.
:meth:`Debouncer.finish` flags it (the last token's verdict decides), so a closed session never
reports Safe for an answer whose last token the policy blocks.

The verdict is the first flagging pair's (token ``i``'s risk and category); it is upgraded,
never downgraded, when a later pair is more severe, while ``flag_offset`` and
``flag_token_index`` keep pointing at the first one. ``flag_offset`` is where token ``i-1``
starts in the answer: the span that was flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidInputError
from ..policy import Policy, Surface
from ..verdict import Category, RiskLevel, Role, Verdict
from .types import TokenVerdict

DebounceMode = Literal["report", "eval"]
MODES = ("report", "eval")


def token_to_verdict(tv: TokenVerdict) -> Verdict:
    """The verdict of one token on its own (categories only when it is not Safe)."""
    cats: tuple[Category, ...] = (
        (tv.category,) if tv.risk is not RiskLevel.SAFE and tv.category else ()
    )
    safe = max(0.0, 1.0 - tv.unsafe_prob - tv.controversial_prob)
    return Verdict(
        risk=tv.risk,
        categories=cats,
        role=Role.RESPONSE,
        scores={
            RiskLevel.SAFE.value: safe,
            RiskLevel.UNSAFE.value: tv.unsafe_prob,
            RiskLevel.CONTROVERSIAL.value: tv.controversial_prob,
        },
    )


@dataclass
class _Prev:
    index: int
    risk: RiskLevel
    hit: bool
    start: int
    tv: TokenVerdict | None = None


class Debouncer:
    """Consumes token verdicts in order; says whether (and where) the answer is flagged."""

    def __init__(
        self,
        policy: Policy | None = None,
        mode: str = "report",
        surface: Surface | str = Surface.OUTPUT,
    ) -> None:
        if mode not in MODES:
            raise InvalidInputError(f"debounce must be one of {MODES}, not {mode!r}")
        self.policy = policy or Policy()
        self.mode = mode
        self.surface = Surface(surface)
        self._hit_cache: dict[tuple[RiskLevel, Category | None], bool] = {}
        self._prev: _Prev | None = None
        self.flagged = False
        self.verdict: Verdict | None = None  # worst debounced verdict (None until flagged)
        self.flag_offset: int | None = None
        self.flag_token_index: int | None = None

    def is_hit(self, tv: TokenVerdict) -> bool:
        key = (tv.risk, tv.category if tv.risk is not RiskLevel.SAFE else None)
        hit = self._hit_cache.get(key)
        if hit is None:
            hit = self.policy.decide(token_to_verdict(tv), self.surface).blocked
            self._hit_cache[key] = hit
        return hit

    def settled(self, scored_end: int) -> int:
        """The offset before which no future flag can start, given that the answer has been
        scored up to ``scored_end``: a flag needs a hit, and the earliest one still possible is
        a pair starting at the last token when that token is itself a hit."""
        if self.flagged:
            assert self.flag_offset is not None
            return self.flag_offset
        prev = self._prev
        if prev is not None and prev.hit:
            return max(0, min(prev.start, scored_end))
        return scored_end

    def finish(self) -> bool:
        """The answer has ended: a last token that is a hit is flagged on its own (there is no
        next token to confirm it). Returns True when this flagged."""
        prev = self._prev
        if self.flagged or prev is None or not prev.hit or prev.tv is None:
            return False
        verdict = token_to_verdict(prev.tv)
        self.flagged = True
        self.verdict = Verdict(
            risk=verdict.risk,
            categories=verdict.categories,
            role=Role.RESPONSE,
            raw=(
                f"the last token ({prev.index}) is {prev.risk.value}; the answer ended before "
                f"a second token could confirm it ({self.mode} debounce)"
            ),
            scores=verdict.scores,
            metadata={"token_index": prev.index, "pair_offset": prev.start,
                      "debounce": self.mode, "at_close": True},
        )
        self.flag_offset = max(0, prev.start)
        self.flag_token_index = prev.index
        return True

    def push(self, tv: TokenVerdict, start: int) -> bool:
        """Add the next token (``start`` = its character offset in the answer). Returns True
        when this token made (or upgraded) the flag."""
        hit = self.is_hit(tv)
        prev = self._prev
        self._prev = _Prev(tv.index, tv.risk, hit, start, tv)
        if not (hit and prev is not None and prev.hit and prev.index == tv.index - 1):
            return False
        if self.mode == "eval" and prev.risk is not tv.risk:
            return False
        verdict = token_to_verdict(tv)
        verdict = Verdict(
            risk=verdict.risk,
            categories=verdict.categories,
            role=Role.RESPONSE,
            raw=(
                f"tokens {prev.index} and {tv.index} are {prev.risk.value} and "
                f"{tv.risk.value} ({self.mode} debounce)"
            ),
            scores=verdict.scores,
            metadata={"token_index": tv.index, "pair_offset": prev.start, "debounce": self.mode},
        )
        if not self.flagged:
            self.flagged = True
            self.verdict = verdict
            self.flag_offset = max(0, prev.start)
            self.flag_token_index = tv.index
            return True
        assert self.verdict is not None
        if verdict.risk.severity > self.verdict.risk.severity:
            self.verdict = verdict
            return True
        if verdict.risk is self.verdict.risk:
            new = [c for c in verdict.categories if c not in self.verdict.categories]
            if new:
                self.verdict = Verdict(
                    risk=self.verdict.risk,
                    categories=self.verdict.categories + tuple(new),
                    role=Role.RESPONSE,
                    raw=self.verdict.raw,
                    scores=self.verdict.scores,
                    metadata=self.verdict.metadata,
                )
        return False
