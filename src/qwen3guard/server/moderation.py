"""Qwen3Guard verdicts in the shape of OpenAI's moderation API (``POST /v1/moderations``).

OpenAI's categories and Qwen3Guard's do not line up one to one. The mapping (lossy, erring
towards flagging):

=============================== =====================================
Qwen3Guard                      OpenAI keys set to true
=============================== =====================================
Violent                         violence
Non-violent Illegal Acts        illicit
Sexual Content or Sexual Acts   sexual
Suicide & Self-Harm             self-harm
Unethical Acts                  harassment, hate (Qwen3Guard's category covers
                                hate speech, harassment, insults, threats)
PII, Politically Sensitive      none: read ``qwen3guard.categories``
Topics, Copyright Violation,
Jailbreak
=============================== =====================================

A category key is true only when the server's policy blocks the input, so ``flagged`` is true
exactly when some key is true or a category without an OpenAI key was blocked. Gen gives no
probabilities: a score is 1.0 for a mapped category of an Unsafe verdict, 0.5 of a
Controversial one, else 0.0. Qwen3Guard's own judgement is in each result's ``qwen3guard``
field (risk, categories, the raw answer, windows).
"""

from __future__ import annotations

from typing import Any

from ..policy import Decision
from ..verdict import Category, RiskLevel, Verdict

#: Every key the openai SDK's ``Moderation`` model requires, in its order.
OPENAI_CATEGORY_KEYS = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

CATEGORY_TO_OPENAI: dict[Category, tuple[str, ...]] = {
    Category.VIOLENT: ("violence",),
    Category.NON_VIOLENT_ILLEGAL_ACTS: ("illicit",),
    Category.SEXUAL_CONTENT: ("sexual",),
    Category.SUICIDE_SELF_HARM: ("self-harm",),
    Category.UNETHICAL_ACTS: ("harassment", "hate"),
    Category.PII: (),
    Category.POLITICALLY_SENSITIVE: (),
    Category.COPYRIGHT_VIOLATION: (),
    Category.JAILBREAK: (),
}

_SCORE = {RiskLevel.UNSAFE: 1.0, RiskLevel.CONTROVERSIAL: 0.5, RiskLevel.SAFE: 0.0}


def moderation_result(verdict: Verdict, decision: Decision) -> dict[str, Any]:
    """One entry of ``results``."""
    mapped: set[str] = set()
    for cat in verdict.categories:
        mapped.update(CATEGORY_TO_OPENAI.get(cat, ()))
    score = _SCORE[verdict.risk]
    return {
        "flagged": decision.blocked,
        "categories": {k: decision.blocked and k in mapped for k in OPENAI_CATEGORY_KEYS},
        "category_scores": {k: (score if k in mapped else 0.0) for k in OPENAI_CATEGORY_KEYS},
        "category_applied_input_types": {k: ["text"] for k in OPENAI_CATEGORY_KEYS},
        "qwen3guard": {
            "risk": verdict.risk.value,
            "categories": [c.value for c in verdict.categories],
            "role": verdict.role.value,
            "refusal": verdict.refusal,
            "decision": "block" if decision.blocked else "allow",
            "reason": decision.reason,
            "windows": verdict.windows,
            "raw": verdict.raw,
        },
    }
