"""Issue 12, item 6: every output the official README parser accepts, decided deliberately.

The official parsers are ``extract_label_and_categories`` (prompt) and
``extract_label_categories_refusal`` (response) in QwenLM/Qwen3Guard ``README.md`` at commit
6a52eca94b3d2aedb8aebd36baa353828d4166f1 (lines 77-83, 129-139). ``official()`` below restates
their three regular expressions (the test does not import upstream code) so each case shows
what they read beside what we read.
"""

from __future__ import annotations

import re

import pytest

from qwen3guard import Category, GuardOutputError, RiskLevel, Role, parse_gen_output

_CATS = ("Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|Suicide & Self-Harm|"
         "Unethical Acts|Politically Sensitive Topics|Copyright Violation")


def official(content: str, role: str) -> tuple[str | None, list[str], str | None]:
    cats = f"({_CATS}|Jailbreak|None)" if role == "prompt" else f"({_CATS}|None)"
    label = re.search(r"Safety: (Safe|Unsafe|Controversial)", content)
    refusal = re.search(r"Refusal: (Yes|No)", content)
    return (
        label.group(1) if label else None,
        re.findall(cats, content),
        refusal.group(1) if refusal and role == "response" else None,
    )


# (output, role, our risk, our categories, our refusal): the outputs the official parser
# accepts that the old parser rejected, and the ones where the two read different values.
SAME_RISK = [
    # 1. no Categories line: the risk is read; no categories
    ("Safety: Unsafe", "prompt", "Unsafe", (), None),
    ("Safety: Safe\nRefusal: Yes", "response", "Safe", (), True),
    # 2. two levels on one line: the official regex reads the first; the worst is the same here
    ("Safety: Unsafe, Controversial\nCategories: Violent", "prompt", "Unsafe", ("Violent",), None),
    # 3. leading spaces / text before the field
    ("  Safety: Unsafe\n  Categories: Violent", "prompt", "Unsafe", ("Violent",), None),
    ("Answer: Safety: Controversial\nCategories: PII", "prompt", "Controversial", ("PII",), None),
    # 4. a category in another letter case (the official regex, case-sensitive, finds none)
    ("Safety: Unsafe\nCategories: violent", "prompt", "Unsafe", ("Violent",), None),
    ("Safety: Unsafe\nCategories: non-violent illegal acts", "prompt", "Unsafe",
     ("Non-violent Illegal Acts",), None),
    # 5. a response without its Refusal line
    ("Safety: Unsafe\nCategories: Violent", "response", "Unsafe", ("Violent",), None),
    # 6. an unknown category name next to a known one: the risk stands
    ("Safety: Unsafe\nCategories: Violence, PII", "prompt", "Unsafe", ("PII",), None),
    # 7. no space after the colon
    ("Safety:Unsafe\nCategories:Violent", "prompt", "Unsafe", ("Violent",), None),
]


@pytest.mark.parametrize(("text", "role", "risk", "cats", "refusal"), SAME_RISK)
def test_official_accepts_so_do_we_with_the_same_risk(
    text: str, role: str, risk: str, cats: tuple[str, ...], refusal: bool | None
) -> None:
    v = parse_gen_output(text, role)
    assert v.risk.value == risk
    assert tuple(c.value for c in v.categories) == cats
    assert v.refusal is refusal
    off_label, _, _ = official(text, role)
    # where the official regex reads a label at all, it is the same risk (the "no space" case
    # is the one it does not read: we accept more there, never less)
    assert off_label in (risk, None)


def test_unknown_category_names_are_kept_in_metadata() -> None:
    v = parse_gen_output("Safety: Unsafe\nCategories: Violence, PII")
    assert v.metadata["unknown_categories"] == ("Violence",)


def test_two_verdicts_differ_deliberately_worst_wins() -> None:
    text = "Safety: Safe\nCategories: None\nSafety: Unsafe\nCategories: Violent"
    assert official(text, "prompt")[0] == "Safe"  # the first match
    assert parse_gen_output(text).risk is RiskLevel.UNSAFE  # the worst: issue 10, class 10
    text = "Safety: Controversial, Unsafe\nCategories: Violent"
    assert official(text, "prompt")[0] == "Controversial"
    assert parse_gen_output(text).risk is RiskLevel.UNSAFE


def test_a_verdict_inside_a_closed_think_block_is_reasoning_not_the_answer() -> None:
    """Differs in value: the official regex reads the first "Safety:" anywhere, including one
    the model considered in its reasoning; the answer after </think> is the verdict."""
    text = ("<think>\nIs it Safety: Safe? No, it asks for a weapon.\n</think>\n\n"
            "Safety: Unsafe\nCategories: Violent")
    assert official(text, "prompt")[0] == "Safe"
    v = parse_gen_output(text)
    assert v.risk is RiskLevel.UNSAFE and v.categories == (Category.VIOLENT,)


def test_an_unterminated_think_block_stays_fail_closed() -> None:
    """Kept as a guard failure on purpose: generation stopped inside the reasoning (max new
    tokens), so the model never gave its answer. The official regex reads a "Safety:" the
    reasoning quoted, which may be a verdict the model was about to reject; with a fail-closed
    policy the content is blocked, with fail_open it passes, as for any guard failure."""
    for text in ("<think>\nSafety: Safe\nCategories: None", "<think>Safety: Unsafe"):
        assert official(text, "prompt")[0] is not None
        with pytest.raises(GuardOutputError):
            parse_gen_output(text)


def test_jailbreak_on_a_response_is_kept() -> None:
    """Differs in value: the official response regex has no Jailbreak and drops it; the risk is
    the same, and we keep the category the model named rather than lose it."""
    text = "Safety: Unsafe\nCategories: Jailbreak\nRefusal: No"
    off_label, off_cats, off_refusal = official(text, "response")
    assert (off_label, off_cats, off_refusal) == ("Unsafe", [], "No")
    v = parse_gen_output(text, Role.RESPONSE)
    assert v.risk is RiskLevel.UNSAFE and v.categories == (Category.JAILBREAK,)
    assert v.refusal is False


def test_lowercase_risk_word_is_rejected_like_the_official_parser() -> None:
    text = "Safety: unsafe\nCategories: Violent"
    assert official(text, "prompt")[0] is None
    with pytest.raises(GuardOutputError):
        parse_gen_output(text)
