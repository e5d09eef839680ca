"""The Gen output parser: the official format in, a Verdict out, anything else an error."""

import pytest

from qwen3guard import Category, GuardOutputError, RiskLevel, Role, parse_gen_output
from qwen3guard.verdict import Verdict, worst


def test_prompt_verdict() -> None:
    v = parse_gen_output("Safety: Unsafe\nCategories: Violent", Role.PROMPT)
    assert v.risk is RiskLevel.UNSAFE
    assert v.categories == (Category.VIOLENT,)
    assert v.refusal is None
    assert v.role is Role.PROMPT


def test_response_verdict_with_refusal() -> None:
    v = parse_gen_output("Safety: Safe\nCategories: None\nRefusal: Yes", "response")
    assert v.risk is RiskLevel.SAFE and v.categories == () and v.refusal is True


def test_several_categories_and_case_sensitivity() -> None:
    # "Violent" must not be read out of "Non-violent Illegal Acts".
    v = parse_gen_output("Safety: Unsafe\nCategories: Non-violent Illegal Acts", Role.PROMPT)
    assert v.categories == (Category.NON_VIOLENT_ILLEGAL_ACTS,)
    v = parse_gen_output(
        "Safety: Controversial\nCategories: Violent, Suicide & Self-Harm, Jailbreak", Role.PROMPT
    )
    assert v.risk is RiskLevel.CONTROVERSIAL
    assert v.categories == (Category.VIOLENT, Category.SUICIDE_SELF_HARM, Category.JAILBREAK)


def test_thinking_block_is_ignored() -> None:
    text = "<think>\nSafety: Safe\nCategories: None\n</think>\n\nSafety: Unsafe\nCategories: PII"
    v = parse_gen_output(text, Role.PROMPT)
    assert v.risk is RiskLevel.UNSAFE and v.categories == (Category.PII,)


def test_end_tokens_are_tolerated() -> None:
    v = parse_gen_output("Safety: Safe\nCategories: None<|im_end|>", Role.PROMPT)
    assert v.is_safe


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "safety: safe\ncategories: none",  # wrong case: the official regex reads no label either
        "Safety: Fine\nCategories: None",
        "Safety: unsafe\nCategories: Violent",  # the risk word is case-sensitive, as there
        "Categories: Violent",  # no Safety line
        "<think>Safety: Safe\nCategories: None",  # unterminated thinking
    ],
)
def test_unparseable_output_is_an_error_never_safe(text: str) -> None:
    with pytest.raises(GuardOutputError) as info:
        parse_gen_output(text, Role.PROMPT)
    assert info.value.raw == text


def test_two_verdicts_the_worst_wins_not_the_first() -> None:
    """Issue 10, class 10: "Safety: Safe ... Safety: Unsafe" was read as Safe (first line won).
    The official README parser (re.search, QwenLM/Qwen3Guard README.md @ 6a52eca) still reads
    the first; a guard must not."""
    v = parse_gen_output("Safety: Safe\nCategories: None\nSafety: Unsafe\nCategories: Violent")
    assert v.risk is RiskLevel.UNSAFE and v.categories == (Category.VIOLENT,)
    v = parse_gen_output("Safety: Controversial\nCategories: PII\n\nSafety: Safe\nCategories: None")
    assert v.risk is RiskLevel.CONTROVERSIAL
    v = parse_gen_output("Safety: Safe\nCategories: None\nRefusal: Yes\nSafety: Unsafe", "response")
    assert v.risk is RiskLevel.UNSAFE


def test_response_refusal_is_optional_and_conflicts_read_as_not_refusing() -> None:
    # The official response parser returns refusal None for a missing line; so do we (the risk
    # was read: the verdict is not a guard failure).
    v = parse_gen_output("Safety: Safe\nCategories: None", Role.RESPONSE)
    assert v.is_safe and v.refusal is None
    v = parse_gen_output("Safety: Safe\nCategories: None\nRefusal: Maybe", Role.RESPONSE)
    assert v.refusal is None
    v = parse_gen_output("Safety: Safe\nCategories: None\nRefusal: Yes\nRefusal: No", "response")
    assert v.refusal is False


def test_non_text_output_is_an_error() -> None:
    with pytest.raises(GuardOutputError):
        parse_gen_output(None, Role.PROMPT)  # type: ignore[arg-type]


def test_worst_of_windows() -> None:
    a = Verdict(RiskLevel.SAFE, (), Role.RESPONSE, refusal=True, raw="a")
    b = Verdict(RiskLevel.CONTROVERSIAL, (Category.PII,), Role.RESPONSE, refusal=False, raw="b")
    c = Verdict(RiskLevel.UNSAFE, (Category.VIOLENT,), Role.RESPONSE, refusal=False, raw="c")
    d = Verdict(RiskLevel.UNSAFE, (Category.PII, Category.VIOLENT), Role.RESPONSE, refusal=False)
    w = worst([a, b, c, d])
    assert w.risk is RiskLevel.UNSAFE
    assert w.categories == (Category.VIOLENT, Category.PII)
    assert w.refusal is True  # how the response begins decides refusal
    assert w.windows == 4
    with pytest.raises(ValueError):
        worst([])
