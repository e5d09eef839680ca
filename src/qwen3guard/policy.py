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
    """``"strict"`` or ``"loose"`` on this surface; ``None``: the policy's mode."""
    ignore_categories: frozenset[Category] | None = None
    """Replaces the policy's ``ignore_categories`` on this surface; ``None``: the policy's."""
    block_categories: frozenset[Category] | None = None
    """Replaces the policy's ``block_categories`` on this surface; ``None``: the policy's."""
    enabled: bool = True
    """``False``: nothing on this surface is judged, every decision allows it."""

    def __post_init__(self) -> None:
        if self.mode not in (None, "strict", "loose"):
            raise ValueError(f"mode must be 'strict' or 'loose', not {self.mode!r}")
        for name in ("ignore_categories", "block_categories"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _categories(value))


DEFAULT_REFUSAL_MESSAGE = "I'm sorry, but I can't help with that request."
"""What integrations show in place of blocked content unless configured otherwise."""

METADATA_KEY = "qwen3guard"
"""The metadata key under which every integration records its decisions
(:meth:`Decision.to_dict`)."""


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one piece of content on one surface.

    ``verdict`` is None when nothing was judged (the surface is off, the content was empty) or
    when the guard could not judge; ``error`` then holds why it could not (the guard's failure,
    or an :class:`~qwen3guard.InvalidInputError` for content that cannot be judged as given).
    """

    allowed: bool
    """Whether the content may pass."""
    verdict: Verdict | None
    """What the model said; ``None`` when nothing was judged or the guard could not judge."""
    surface: Surface
    """Where the content was checked."""
    reason: str
    """Why, in a few words: ``"safe"``, ``"unsafe; strict mode"``, ``"controversial; loose
    mode"``, ``"only ignored categories"``, ``"category always blocked"``, ``"surface not
    checked"``, ``"guard unavailable; fail-closed"`` (or ``fail-open``), ..."""
    error: BaseException | None = field(default=None, compare=False)
    """Why the guard could not judge, when it could not."""

    @property
    def blocked(self) -> bool:
        """``not allowed``."""
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
    """How verdicts become decisions: strict or loose, categories ignored or always blocked,
    rules per surface, and what happens when the guard could not judge.

    ``Policy()`` is strict and fail-closed. Category and surface values may be given as
    strings (``Policy(block_categories={"PII"}, surfaces={"retrieval": SurfaceRule(...)})``).
    """

    mode: Mode = "strict"
    """``"strict"``: Controversial is blocked like Unsafe; ``"loose"``: Controversial passes."""
    ignore_categories: frozenset[Category] = frozenset()
    """A non-Safe verdict whose categories are all in this set is allowed."""
    block_categories: frozenset[Category] = frozenset()
    """A verdict with any of these categories is blocked, whatever its risk."""
    surfaces: Mapping[Surface, SurfaceRule] = field(default_factory=dict)
    """Overrides per :class:`Surface`; a surface without a rule follows the fields above."""
    fail_open: bool = False
    """``False`` (fail-closed): what could not be judged is blocked; ``True``: it is allowed,
    with a warning."""

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
        """``Policy(mode="strict", **kw)``."""
        return cls(mode="strict", **kw)  # type: ignore[arg-type]

    @classmethod
    def loose(cls, **kw: object) -> Policy:
        """``Policy(mode="loose", **kw)``."""
        return cls(mode="loose", **kw)  # type: ignore[arg-type]

    def rule(self, surface: Surface | str) -> tuple[Mode, frozenset[Category], frozenset[Category], bool]:
        """The effective ``(mode, ignore_categories, block_categories, enabled)`` on
        ``surface``."""
        r = self.surfaces.get(Surface(surface), SurfaceRule())
        return (
            r.mode or self.mode,
            r.ignore_categories if r.ignore_categories is not None else self.ignore_categories,
            r.block_categories if r.block_categories is not None else self.block_categories,
            r.enabled,
        )

    def is_enabled(self, surface: Surface | str) -> bool:
        """Whether content on ``surface`` is judged at all."""
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
        """``decide(verdict, surface).blocked``."""
        return self.decide(verdict, surface).blocked
