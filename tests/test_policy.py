"""Policy: strict/loose, category rules, per-surface overrides, fail-closed by default."""

import pytest

from qwen3guard import Category, Policy, RiskLevel, Role, Surface, SurfaceRule, Verdict

SAFE = Verdict(RiskLevel.SAFE)
CONTROVERSIAL = Verdict(RiskLevel.CONTROVERSIAL, (Category.POLITICALLY_SENSITIVE,))
UNSAFE = Verdict(RiskLevel.UNSAFE, (Category.VIOLENT,))
UNSAFE_PII = Verdict(RiskLevel.UNSAFE, (Category.PII,))


def test_strict_blocks_controversial_loose_allows_it() -> None:
    assert Policy().mode == "strict"
    assert Policy.strict().blocks(CONTROVERSIAL)
    assert not Policy.loose().blocks(CONTROVERSIAL)
    for p in (Policy.strict(), Policy.loose()):
        assert p.blocks(UNSAFE)
        assert not p.blocks(SAFE)


def test_fail_closed_by_default_and_fail_open_when_configured() -> None:
    d = Policy().decide(None, Surface.OUTPUT)
    assert d.blocked and "fail-closed" in d.reason
    assert Policy(fail_open=True).decide(None).allowed


def test_ignore_and_always_block_categories() -> None:
    p = Policy(ignore_categories={"PII"})
    assert not p.blocks(UNSAFE_PII)
    assert p.blocks(UNSAFE)
    # An Unsafe verdict that names no category is never waved through by an ignore list.
    assert p.blocks(Verdict(RiskLevel.UNSAFE, ()))
    p = Policy.loose(block_categories=[Category.POLITICALLY_SENSITIVE])
    assert p.blocks(CONTROVERSIAL)


def test_per_surface_rules() -> None:
    p = Policy(
        mode="loose",
        surfaces={
            Surface.RETRIEVAL: SurfaceRule(mode="strict"),
            "tool_result": SurfaceRule(ignore_categories={"PII"}),
            "output": SurfaceRule(enabled=False),
        },
    )
    assert not p.blocks(CONTROVERSIAL, "input")
    assert p.blocks(CONTROVERSIAL, "retrieval")
    assert not p.blocks(UNSAFE_PII, "tool_result")
    assert p.blocks(UNSAFE_PII, "input")
    assert not p.blocks(UNSAFE, "output")


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        Policy(mode="lenient")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Policy(ignore_categories={"Violence"})
    with pytest.raises(ValueError):
        Policy().decide(SAFE, "stdout")


def test_response_verdict_refusal_does_not_change_decision() -> None:
    v = Verdict(RiskLevel.SAFE, (), Role.RESPONSE, refusal=True)
    assert Policy().decide(v, "output").allowed
