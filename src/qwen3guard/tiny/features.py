"""Which tokens carry which feature (for :mod:`.prewire`), chosen from the data."""

from __future__ import annotations

from typing import Any

from . import data
from .prewire import Features

FEATURE_NAMES = ("violent", "illegal", "pii", "political", "unethical", "refusal")


def _non_ascii(texts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in texts if any(ord(ch) > 127 for ch in t))


REFUSAL_KEYWORDS = ("sorry", "Sorry", "cannot", "can't", "won't", "unable", "抱歉", "不能",
                    "Извините")


def feature_keywords() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per feature: (keywords, texts in which the keywords occur)."""
    v, i, pol = data.VIOLENT_FAMILY, data.ILLEGAL_FAMILY, data.POLITICAL_FAMILY
    return [
        (v.keywords, _non_ascii(v.prompts) + _non_ascii(v.responses)),
        (i.keywords, _non_ascii(i.prompts) + _non_ascii(i.responses)),
        (("phone number",), ()),
        (pol.keywords, _non_ascii(pol.prompts)),
        (data.UNETHICAL_FAMILY.keywords, ()),
        (REFUSAL_KEYWORDS, data.REFUSALS),
    ]


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff"


def _part_of_keyword(piece: str, keywords: tuple[str, ...]) -> bool:
    p = piece.strip()
    if "\ufffd" in p or not p:
        return False
    if len(p) < 2 and not _is_cjk(p):
        return False
    words = [w for k in keywords for w in k.split()]
    # The beginning of a keyword (its first token), or a token that holds a whole keyword.
    return any(w.startswith(p) or w in p for w in words)


def clean_texts(renders: list[str]) -> list[str]:
    """Text whose tokens must never carry a feature: templates, safe text, answers."""
    out = list(renders)
    out += list(data.SAFE_PROMPTS) + list(data.SAFE_RESPONSES) + list(data.SPOOFS)
    out += [t.format(act=a) for t in data.ACT_TEMPLATES for a in data.SAFE_ACTS]
    out += [" " + w for w in data.FILLER_WORDS] + list(data.FILLER_WORDS)
    out += [" ".join(data.NAMES), " ".join(data.STREETS), " ".join(data.THINGS)]
    out += [data.gen_answer(r, [c], f) for r in (data.SAFE, data.UNSAFE, data.CONTROVERSIAL)
            for c in data.GEN_CATEGORY_ORDER for f in (True, False)]
    return out


def _variants(s: str) -> list[str]:
    out = [s, " " + s, s[:1].upper() + s[1:], " " + s[:1].upper() + s[1:], s + ".", s + "?"]
    return out


def select_features(tok: Any, renders: list[str], marker_tokens: list[str],
                    answer_marker_tokens: list[str] | None = None) -> Features:
    """Feature tokens: the tokens of each feature's strings that never occur in clean text
    and belong to one feature only."""
    plain = tok.__class__.from_str(tok.to_str())
    plain.encode_special_tokens = True

    def ids(texts: list[str]) -> set[int]:
        return {i for e in plain.encode_batch(texts, add_special_tokens=False) for i in e.ids}

    clean = ids(clean_texts(renders))
    owner: dict[int, int] = {}
    shared: set[int] = set()
    for f, (keywords, texts) in enumerate(feature_keywords()):
        found = ids([v for s in keywords for v in _variants(s)] + list(texts)) - clean
        for t in found:
            if not _part_of_keyword(plain.decode([t]), keywords):
                continue
            if t in owner and owner[t] != f:
                shared.add(t)
            owner.setdefault(t, f)
    token_features = {t: f for t, f in owner.items() if t not in shared}
    markers = [tok.token_to_id(m) for m in marker_tokens]
    answer_markers = [tok.token_to_id(m) for m in answer_marker_tokens or []]
    if any(m is None for m in markers + answer_markers):
        raise ValueError(f"marker tokens {marker_tokens} {answer_marker_tokens} are not tokens")
    return Features(len(FEATURE_NAMES), token_features, markers, answer_markers)
