"""What the guard says about a piece of content, and the parser for Gen's text answers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from .errors import GuardOutputError


class RiskLevel(str, Enum):
    """The model's risk level; the values are the model's own words."""

    SAFE = "Safe"
    CONTROVERSIAL = "Controversial"
    UNSAFE = "Unsafe"

    @property
    def severity(self) -> int:
        """0 Safe, 1 Controversial, 2 Unsafe."""
        return _SEVERITY[self]


_SEVERITY = {RiskLevel.SAFE: 0, RiskLevel.CONTROVERSIAL: 1, RiskLevel.UNSAFE: 2}


class Category(str, Enum):
    """The model's categories; the values are the model's own words. ``JAILBREAK`` is only
    given for prompts (and retrieved content, judged as a prompt)."""

    VIOLENT = "Violent"
    NON_VIOLENT_ILLEGAL_ACTS = "Non-violent Illegal Acts"
    SEXUAL_CONTENT = "Sexual Content or Sexual Acts"
    PII = "PII"
    SUICIDE_SELF_HARM = "Suicide & Self-Harm"
    UNETHICAL_ACTS = "Unethical Acts"
    POLITICALLY_SENSITIVE = "Politically Sensitive Topics"
    COPYRIGHT_VIOLATION = "Copyright Violation"
    JAILBREAK = "Jailbreak"  # prompts only


class Role(str, Enum):
    """Which side of the conversation was judged."""

    PROMPT = "prompt"
    RESPONSE = "response"


@dataclass(frozen=True)
class Verdict:
    """One judgement.

    ``raw`` is the model's own answer (Gen text; for Stream a short description of the
    per-token decision). ``scores`` holds probabilities where the model gives them (Stream).
    ``windows`` > 1 means the content was longer than the model's context and was judged in
    overlapping windows; the verdict is the worst of them.
    """

    risk: RiskLevel
    """Safe, Controversial or Unsafe."""
    categories: tuple[Category, ...] = ()
    """The categories the model named (none when Safe)."""
    role: Role = Role.PROMPT
    """Whether a prompt or a response was judged."""
    refusal: bool | None = None
    """For a response: whether it refuses; ``None`` for a prompt."""
    raw: str | None = None
    """The model's own answer."""
    scores: Mapping[str, float] | None = None
    """Probabilities, where the model gives them (Stream)."""
    latency_s: float = 0.0
    """Seconds the judgement took."""
    windows: int = 1
    """How many windows the content was judged in (more than one when it was too long)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Extra facts, e.g. ``unknown_categories``: category names the model wrote that are not
    :class:`Category` values."""

    @property
    def is_safe(self) -> bool:
        """``risk is RiskLevel.SAFE``."""
        return self.risk is RiskLevel.SAFE

    @property
    def is_unsafe(self) -> bool:
        """``risk is RiskLevel.UNSAFE``."""
        return self.risk is RiskLevel.UNSAFE

    @property
    def is_controversial(self) -> bool:
        """``risk is RiskLevel.CONTROVERSIAL``."""
        return self.risk is RiskLevel.CONTROVERSIAL

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their values; without ``metadata``)."""
        return {
            "risk": self.risk.value,
            "categories": [c.value for c in self.categories],
            "role": self.role.value,
            "refusal": self.refusal,
            "raw": self.raw,
            "scores": dict(self.scores) if self.scores is not None else None,
            "latency_s": self.latency_s,
            "windows": self.windows,
        }

    def with_timing(self, latency_s: float) -> Verdict:
        """A copy with ``latency_s`` set."""
        return replace(self, latency_s=latency_s)


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """Combine the verdicts of several windows of one content: the worst risk wins.

    Categories are the union over the windows that share the worst risk. Refusal is read from
    the first window: whether a response refuses is decided by how it begins.
    """
    items = list(verdicts)
    if not items:
        raise ValueError("worst() needs at least one verdict")
    if len(items) == 1:
        return items[0]
    top = max(v.risk.severity for v in items)
    cats: list[Category] = []
    for v in items:
        if v.risk.severity == top:
            cats.extend(c for c in v.categories if c not in cats)
    first = items[0]
    raws = [v.raw for v in items if v.raw is not None]
    return replace(
        next(v for v in items if v.risk.severity == top),
        categories=tuple(cats),
        refusal=first.refusal,
        raw="\n---\n".join(raws) if raws else None,
        latency_s=sum(v.latency_s for v in items),
        windows=len(items),
    )


# -- the Gen answer parser ----------------------------------------------------------------------
#
# The official parsers are the README's ``extract_label_and_categories`` (prompt) and
# ``extract_label_categories_refusal`` (response) of QwenLM/Qwen3Guard, README.md at commit
# 6a52eca94b3d2aedb8aebd36baa353828d4166f1 (lines 77-83 and 129-139):
#
#     re.search(r"Safety: (Safe|Unsafe|Controversial)", content)        # the first match wins
#     re.findall(r"(Violent|...|Copyright Violation|Jailbreak|None)", content)  # anywhere
#     re.search(r"Refusal: (Yes|No)", content)                          # optional
#
# (the response pattern has no ``Jailbreak``). They read the whole text, thinking included, and
# return ``None`` for a missing field. This parser reads every verdict they read, deliberately
# differing in four ways, each one towards the more severe reading or towards not guessing:
#
# 1. Several ``Safety:`` verdicts (or several levels on one line, ``Safety: Unsafe,
#    Controversial``): the worst wins, not the first (issue 10, class 10).
# 2. A closed ``<think>`` block is reasoning, not the answer: verdicts inside it are ignored (the
#    official regex would read a ``Safety: Safe`` the model considered there).
# 3. An unterminated ``<think>`` means the answer never came (generation stopped inside the
#    reasoning): no verdict, a GuardOutputError (fail closed), where the official regex would
#    read whatever the reasoning last quoted.
# 4. ``Categories: Jailbreak`` on a response is kept (the official response regex drops it).
#
# What it accepts like the official parser: a missing ``Categories:`` line (no categories), a
# missing ``Refusal:`` line on a response (``refusal=None``), leading spaces or text before
# ``Safety:``, a category in another letter case (``violent``), and unknown category names
# (kept out of ``categories`` and listed in ``metadata["unknown_categories"]``). What it rejects
# like the official parser: no ``Safety: Safe|Unsafe|Controversial`` (the risk word is
# case-sensitive, as there).

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SAFETY = re.compile(r"Safety:[ \t]*([^\n]*)")
_RISK_WORD = re.compile(r"\b(Safe|Unsafe|Controversial)\b")
_CATEGORIES = re.compile(r"Categories:[ \t]*([^\n]*)")
_REFUSAL = re.compile(r"Refusal:[ \t]*(Yes|No)\b")
_RISKS = {r.value: r for r in RiskLevel}
_CATEGORY_NAMES = {c.value.lower(): c for c in Category}
_REFUSALS = {"Yes": True, "No": False}


def parse_gen_output(text: str, role: Role | str = Role.PROMPT) -> Verdict:
    """Parse Qwen3Guard-Gen's answer (see the comment above for how it relates to the official
    README parser).

    The risk is the worst level named on any ``Safety:`` line outside a closed ``<think>``
    block. Category names are matched whole and case-insensitively after splitting on commas,
    so ``Violent`` never matches inside ``Non-violent Illegal Acts``. Anything without a
    readable ``Safety:`` verdict raises :class:`GuardOutputError`: it is never read as Safe.
    """
    role = Role(role)
    if not isinstance(text, str):
        raise GuardOutputError(f"guard output is not text: {type(text).__name__}", raw=None)
    body = _THINK.sub("", text)
    if "<think>" in body:  # an unterminated thinking block: there is no answer after it
        raise GuardOutputError("guard output has an unterminated <think> block", raw=text)
    body = body.replace("<|im_end|>", "\n").replace("<|endoftext|>", "\n")

    levels = [_RISKS[w] for line in _SAFETY.findall(body) for w in _RISK_WORD.findall(line)]
    if not levels:
        raise GuardOutputError(
            "guard output has no 'Safety: Safe|Unsafe|Controversial' line", raw=text
        )
    risk = max(levels, key=lambda r: r.severity)

    categories: list[Category] = []
    unknown: list[str] = []
    for line in _CATEGORIES.findall(body):
        for name in (n.strip().strip(".;").strip() for n in line.split(",")):
            if not name or name.lower() == "none":
                continue
            cat = _CATEGORY_NAMES.get(name.lower())
            if cat is None:
                unknown.append(name)
            elif cat not in categories:
                categories.append(cat)

    refusal: bool | None = None
    if role is Role.RESPONSE:
        answers = [_REFUSALS[a] for a in _REFUSAL.findall(body)]
        if answers:  # conflicting lines: not a refusal (the answer may still comply)
            refusal = all(answers)

    return Verdict(
        risk=risk,
        categories=tuple(categories),
        role=role,
        refusal=refusal,
        raw=text,
        metadata={"unknown_categories": tuple(unknown)} if unknown else {},
    )
