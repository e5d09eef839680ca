"""The Stream heads' label orders, in one place (no torch import).

A Qwen3Guard-Stream checkpoint has four heads: the response risk (3) and category (8) heads
and the query ("prompt") risk (3) and category (9) heads. The config's
``response_risk_level_map`` / ``response_category_map`` / ``query_risk_level_map`` /
``query_category_map`` name each index; a config without them gets the order of the official
evaluation script (``eval/eval_stream.py`` of QwenLM/Qwen3Guard at commit
``6a52eca94b3d2aedb8aebd36baa353828d4166f1``: ``label_map = {0: "Safe", 1: "Unsafe",
2: "Controversial"}`` and ``category_map`` / ``prompt_category_map``; the script writes the
first category as ``'"Violent"'`` with quotes, which is a typo there, not a label).

:func:`label_maps` gives the strings (what the model module and the tests read);
:func:`resolve_labels` gives the typed :class:`Labels` a session reports with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFormatError
from ..verdict import Category, RiskLevel

log = logging.getLogger(__name__)

# Official index order (eval_stream.py @ 6a52eca), used when the config has no label maps.
RISK_ORDER = (RiskLevel.SAFE, RiskLevel.UNSAFE, RiskLevel.CONTROVERSIAL)
RESPONSE_CATEGORY_ORDER = (
    Category.VIOLENT,
    Category.SEXUAL_CONTENT,
    Category.SUICIDE_SELF_HARM,
    Category.POLITICALLY_SENSITIVE,
    Category.PII,
    Category.COPYRIGHT_VIOLATION,
    Category.NON_VIOLENT_ILLEGAL_ACTS,
    Category.UNETHICAL_ACTS,
)
QUERY_CATEGORY_ORDER = (*RESPONSE_CATEGORY_ORDER, Category.JAILBREAK)

# The same orders as strings (the values written into a checkpoint's config).
RISK_LEVELS: tuple[str, ...] = tuple(r.value for r in RISK_ORDER)
RESPONSE_CATEGORIES: tuple[str, ...] = tuple(c.value for c in RESPONSE_CATEGORY_ORDER)
QUERY_CATEGORIES: tuple[str, ...] = tuple(c.value for c in QUERY_CATEGORY_ORDER)


@dataclass(frozen=True)
class Labels:
    """The typed label of each index of the four heads (``None``: a category we do not know)."""

    risk: tuple[RiskLevel, ...]
    category: tuple[Category | None, ...]
    query_risk: tuple[RiskLevel, ...]
    query_category: tuple[Category | None, ...]


def _as_list(m: Any) -> list[str] | None:
    if m is None:
        return None
    if isinstance(m, Mapping):
        try:
            return [str(m[k]) for k in sorted(m, key=lambda k: int(k))]
        except (TypeError, ValueError):
            return None
    if isinstance(m, (list, tuple)):
        return [str(x) for x in m]
    return None


def _ordered(mapping: Any, fallback: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(mapping, Mapping) or not mapping:
        return fallback
    out = _as_list(mapping)
    return tuple(out) if out else fallback


def _get(source: Any, name: str) -> Any:
    return source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)


def label_maps(config: Any) -> dict[str, tuple[str, ...]]:
    """Label strings by index, from the config's maps (a config object or a ``config.json``
    dict), else the official eval order."""
    return {
        "response_risk_level": _ordered(_get(config, "response_risk_level_map"), RISK_LEVELS),
        "response_category": _ordered(
            _get(config, "response_category_map"), RESPONSE_CATEGORIES
        ),
        "query_risk_level": _ordered(_get(config, "query_risk_level_map"), RISK_LEVELS),
        "query_category": _ordered(_get(config, "query_category_map"), QUERY_CATEGORIES),
    }


def _risk(name: str) -> RiskLevel:
    for r in RiskLevel:
        if r.value.lower() == name.strip().lower():
            return r
    raise ModelFormatError(f"the Stream checkpoint names an unknown risk level {name!r}")


def _category(name: str) -> Category | None:
    for c in Category:
        if c.value.lower() == name.strip().lower():
            return c
    log.warning("the Stream checkpoint names an unknown category %r; reported as None", name)
    return None


def resolve_labels(config: Any) -> Labels:
    """Label order of the four heads: the config's maps (``*_map``, or the list-valued
    ``response_risk_level`` / ``risk_level`` / ... spellings some exports use), else the
    official eval order. An unknown risk name is a :class:`ModelFormatError`; an unknown
    category is reported as ``None`` (with a warning)."""

    def pick(*names: str) -> list[str] | None:
        for n in names:
            out = _as_list(_get(config, n))
            if out:
                return out
        return None

    risk = pick("response_risk_level_map", "response_risk_level", "risk_level")
    cat = pick("response_category_map", "response_category", "category")
    qrisk = pick("query_risk_level_map", "query_risk_level")
    qcat = pick("query_category_map", "query_category")
    return Labels(
        risk=tuple(_risk(x) for x in risk) if risk else RISK_ORDER,
        category=tuple(_category(x) for x in cat) if cat else RESPONSE_CATEGORY_ORDER,
        query_risk=tuple(_risk(x) for x in qrisk) if qrisk else RISK_ORDER,
        query_category=tuple(_category(x) for x in qcat) if qcat else QUERY_CATEGORY_ORDER,
    )


__all__ = [
    "QUERY_CATEGORIES",
    "QUERY_CATEGORY_ORDER",
    "RESPONSE_CATEGORIES",
    "RESPONSE_CATEGORY_ORDER",
    "RISK_LEVELS",
    "RISK_ORDER",
    "Labels",
    "label_maps",
    "resolve_labels",
]
