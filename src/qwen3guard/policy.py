"""Policy: turns a Verdict into allow or block, per surface.

Strict mode counts Controversial as Unsafe; loose mode counts it as Safe (the two settings the
Qwen3Guard report measures). Categories can be ignored or always blocked, globally or per
surface. Whatever could not be judged is blocked unless ``fail_open`` is set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from .verdict import Category, RiskLevel, Verdict


class Surface(str, Enum):
    """Where in an application content is checked."""

    INPUT = "input"
    OUTPUT = "output"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    RETRIEVAL = "retrieval"


Mode = Literal["strict", "loose"]


def _categories(values: Iterable[Category | str]) -> frozenset[Category]:
    return frozenset(Category(v) for v in values)


@dataclass(frozen=True)
class SurfaceRule:
    """Overrides for one surface; ``None`` means "as the policy says"."""

    mode: Mode | None = None
    ignore_categories: frozenset[Category] | None = None
    block_categories: frozenset[Category] | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.mode not in (None, "strict", "loose"):
            raise ValueError(f"mode must be 'strict' or 'loose', not {self.mode!r}")
        for name in ("ignore_categories", "block_categories"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _categories(value))


#: What integrations show in place of blocked content unless configured otherwise.
DEFAULT_REFUSAL_MESSAGE = "I'm sorry, but I can't help with that request."

#: The metadata key under which every integration records its decisions.
METADATA_KEY = "qwen3guard"


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one piece of content on one surface.

    ``verdict`` is None when nothing was judged (the surface is off, the content was empty) or
    when the guard could not judge; ``error`` then holds why it could not (the guard's failure,
    or an :class:`~qwen3guard.InvalidInputError` for content that cannot be judged as given).
    """

    allowed: bool
    verdict: Verdict | None
    surface: Surface
    reason: str
    error: BaseException | None = field(default=None, compare=False)

    @property
    def blocked(self) -> bool:
        return not self.allowed

    def to_dict(self) -> dict[str, Any]:
        """The one metadata shape every integration writes under ``"qwen3guard"``."""
        return {
            "allowed": self.allowed,
            "surface": self.surface.value,
            "reason": self.reason,
            "risk": self.verdict.risk.value if self.verdict is not None else None,
            "categories": [c.value for c in self.verdict.categories] if self.verdict else [],
            "verdict": self.verdict.to_dict() if self.verdict is not None else None,
            "error": repr(self.error) if self.error is not None else None,
        }


@dataclass(frozen=True)
class Policy:
    mode: Mode = "strict"
    ignore_categories: frozenset[Category] = frozenset()
    block_categories: frozenset[Category] = frozenset()
    surfaces: Mapping[Surface, SurfaceRule] = field(default_factory=dict)
    fail_open: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("strict", "loose"):
            raise ValueError(f"mode must be 'strict' or 'loose', not {self.mode!r}")
        object.__setattr__(self, "ignore_categories", _categories(self.ignore_categories))
        object.__setattr__(self, "block_categories", _categories(self.block_categories))
        object.__setattr__(
            self, "surfaces", {Surface(k): v for k, v in dict(self.surfaces).items()}
        )

    @classmethod
    def strict(cls, **kw: object) -> Policy:
        return cls(mode="strict", **kw)  # type: ignore[arg-type]

    @classmethod
    def loose(cls, **kw: object) -> Policy:
        return cls(mode="loose", **kw)  # type: ignore[arg-type]

    def rule(self, surface: Surface | str) -> tuple[Mode, frozenset[Category], frozenset[Category], bool]:
        r = self.surfaces.get(Surface(surface), SurfaceRule())
        return (
            r.mode or self.mode,
            r.ignore_categories if r.ignore_categories is not None else self.ignore_categories,
            r.block_categories if r.block_categories is not None else self.block_categories,
            r.enabled,
        )

    def is_enabled(self, surface: Surface | str) -> bool:
        return self.rule(surface)[3]

    def decide(self, verdict: Verdict | None, surface: Surface | str = Surface.INPUT) -> Decision:
        """Allow or block. ``verdict=None`` means the guard could not judge."""
        surface = Surface(surface)
        mode, ignore, block, enabled = self.rule(surface)
        if not enabled:
            return Decision(True, verdict, surface, "surface not checked")
        if verdict is None:
            if self.fail_open:
                return Decision(True, None, surface, "guard unavailable; fail-open")
            return Decision(False, None, surface, "guard unavailable; fail-closed")
        cats = set(verdict.categories)
        if cats & block:
            return Decision(False, verdict, surface, "category always blocked")
        if verdict.risk is RiskLevel.SAFE:
            return Decision(True, verdict, surface, "safe")
        if verdict.risk is RiskLevel.CONTROVERSIAL and mode == "loose":
            return Decision(True, verdict, surface, "controversial; loose mode")
        if cats and cats <= ignore:
            return Decision(True, verdict, surface, "only ignored categories")
        return Decision(False, verdict, surface, f"{verdict.risk.value.lower()}; {mode} mode")

    def blocks(self, verdict: Verdict | None, surface: Surface | str = Surface.INPUT) -> bool:
        return self.decide(verdict, surface).blocked
