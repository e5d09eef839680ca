"""What the guard says about a piece of content, and the parser for Gen's text answers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from .errors import GuardOutputError


class RiskLevel(str, Enum):
    SAFE = "Safe"
    CONTROVERSIAL = "Controversial"
    UNSAFE = "Unsafe"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {RiskLevel.SAFE: 0, RiskLevel.CONTROVERSIAL: 1, RiskLevel.UNSAFE: 2}


class Category(str, Enum):
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
    categories: tuple[Category, ...] = ()
    role: Role = Role.PROMPT
    refusal: bool | None = None
    raw: str | None = None
    scores: Mapping[str, float] | None = None
    latency_s: float = 0.0
    windows: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_safe(self) -> bool:
        return self.risk is RiskLevel.SAFE

    @property
    def is_unsafe(self) -> bool:
        return self.risk is RiskLevel.UNSAFE

    @property
    def is_controversial(self) -> bool:
        return self.risk is RiskLevel.CONTROVERSIAL

    def to_dict(self) -> dict[str, Any]:
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


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SAFETY = re.compile(r"^Safety:[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)
_CATEGORIES = re.compile(r"^Categories:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_REFUSAL = re.compile(r"^Refusal:[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)
_RISKS = {r.value: r for r in RiskLevel}
_CATEGORY_NAMES = {c.value: c for c in Category}
_REFUSALS = {"Yes": True, "No": False}


def parse_gen_output(text: str, role: Role | str = Role.PROMPT) -> Verdict:
    """Parse Qwen3Guard-Gen's answer.

    Case-sensitive, like the official parser, so ``Violent`` never matches inside
    ``Non-violent Illegal Acts``. A thinking block is ignored. Anything that is not a
    complete verdict raises :class:`GuardOutputError`: it is never read as Safe.
    """
    role = Role(role)
    if not isinstance(text, str):
        raise GuardOutputError(f"guard output is not text: {type(text).__name__}", raw=None)
    body = _THINK.sub("", text)
    if "<think>" in body:  # an unterminated thinking block: there is no answer after it
        raise GuardOutputError("guard output has an unterminated <think> block", raw=text)
    body = body.replace("<|im_end|>", "").replace("<|endoftext|>", "")

    m = _SAFETY.search(body)
    if m is None or m.group(1) not in _RISKS:
        raise GuardOutputError("guard output has no 'Safety: Safe|Unsafe|Controversial' line", raw=text)
    risk = _RISKS[m.group(1)]

    c = _CATEGORIES.search(body)
    if c is None:
        raise GuardOutputError("guard output has no 'Categories:' line", raw=text)
    names = [n.strip() for n in c.group(1).split(",")]
    categories: list[Category] = []
    if names != ["None"]:
        for name in names:
            if name not in _CATEGORY_NAMES:
                raise GuardOutputError(f"guard output names an unknown category {name!r}", raw=text)
            if _CATEGORY_NAMES[name] not in categories:
                categories.append(_CATEGORY_NAMES[name])

    refusal: bool | None = None
    if role is Role.RESPONSE:
        r = _REFUSAL.search(body)
        if r is None or r.group(1) not in _REFUSALS:
            raise GuardOutputError("response verdict has no 'Refusal: Yes|No' line", raw=text)
        refusal = _REFUSALS[r.group(1)]

    return Verdict(risk=risk, categories=tuple(categories), role=role, refusal=refusal, raw=text)
