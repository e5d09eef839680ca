"""Judge-and-decide with an optional per-component policy, singly or batched, sync or async.

``Qwen3Guard.screen`` decides with the guard's own policy; every component of this package can
carry its own (``policy=``), so the decision is made here with whichever applies. Failures
follow the same rule as the core: the guard failing is a block unless the policy fails open.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from qwen3guard import (
    Decision,
    GuardOutputError,
    GuardUnavailableError,
    Policy,
    Qwen3Guard,
    Qwen3GuardViolation,
    Surface,
    get_default_guard,
)

log = logging.getLogger("langchain_qwen3guard")

_FAILURES = (GuardUnavailableError, GuardOutputError)

Conversation = Sequence[dict[str, str]]


def resolve_guard(guard: Qwen3Guard | None) -> Qwen3Guard:
    """The guard given, else the process-wide default (built from the environment once)."""
    return guard if guard is not None else get_default_guard()


def policy_of(guard: Qwen3Guard, policy: Policy | None) -> Policy:
    return policy if policy is not None else guard.policy


def _nothing(conversation: Conversation | None) -> bool:
    return not conversation or not conversation[-1].get("content", "").strip()


def _skip(policy: Policy, conversation: Conversation | None, surface: Surface) -> Decision | None:
    if not policy.is_enabled(surface):
        return Decision(True, None, surface, "surface not checked")
    if _nothing(conversation):
        return Decision(True, None, surface, "nothing to judge")
    return None


def failed(policy: Policy, exc: BaseException, surface: Surface | str) -> Decision:
    """The decision for content the guard could not judge: fail-closed unless ``fail_open``."""
    decision = policy.decide(None, surface)
    if decision.allowed:
        warnings.warn(
            f"qwen3guard could not judge ({exc}); allowed by fail-open policy",
            RuntimeWarning,
            stacklevel=3,
        )
    else:
        log.warning("qwen3guard could not judge (%s); blocked (fail-closed)", exc)
    return Decision(decision.allowed, None, decision.surface, f"{decision.reason}: {exc}")


def screen(
    guard: Qwen3Guard | None,
    policy: Policy | None,
    conversation: Conversation | None,
    surface: Surface | str,
) -> Decision:
    g = resolve_guard(guard)
    pol = policy_of(g, policy)
    surface = Surface(surface)
    if (skip := _skip(pol, conversation, surface)) is not None:
        return skip
    try:
        verdict = g.check(list(conversation or ()))
    except _FAILURES as exc:
        return failed(pol, exc, surface)
    return pol.decide(verdict, surface)


async def ascreen(
    guard: Qwen3Guard | None,
    policy: Policy | None,
    conversation: Conversation | None,
    surface: Surface | str,
) -> Decision:
    g = resolve_guard(guard)
    pol = policy_of(g, policy)
    surface = Surface(surface)
    if (skip := _skip(pol, conversation, surface)) is not None:
        return skip
    try:
        verdict = await g.acheck(list(conversation or ()))
    except _FAILURES as exc:
        return failed(pol, exc, surface)
    return pol.decide(verdict, surface)


def _plan(
    pol: Policy, items: Sequence[tuple[Conversation | None, Surface | str]]
) -> tuple[list[Decision | None], list[int], list[list[dict[str, str]]]]:
    out: list[Decision | None] = []
    todo: list[int] = []
    convs: list[list[dict[str, str]]] = []
    for i, (conv, surface) in enumerate(items):
        skip = _skip(pol, conv, Surface(surface))
        out.append(skip)
        if skip is None:
            todo.append(i)
            convs.append(list(conv or ()))
    return out, todo, convs


def _finish(
    pol: Policy,
    items: Sequence[tuple[Any, Surface | str]],
    out: list[Decision | None],
    todo: list[int],
    results: Sequence[Any],
) -> list[Decision]:
    for i, res in zip(todo, results):
        surface = Surface(items[i][1])
        if isinstance(res, _FAILURES):
            out[i] = failed(pol, res, surface)
        elif isinstance(res, BaseException):
            raise res
        else:
            out[i] = pol.decide(res, surface)
    return [d for d in out if d is not None]


def screen_many(
    guard: Qwen3Guard | None,
    policy: Policy | None,
    items: Sequence[tuple[Conversation | None, Surface | str]],
) -> list[Decision]:
    """One decision per ``(conversation, surface)``, judged in one batched call."""
    g = resolve_guard(guard)
    pol = policy_of(g, policy)
    out, todo, convs = _plan(pol, items)
    if not convs:
        return [d for d in out if d is not None]
    try:
        results: Sequence[Any] = g.check_batch(convs, return_exceptions=True)
    except _FAILURES as exc:
        results = [exc] * len(convs)
    return _finish(pol, items, out, todo, results)


async def ascreen_many(
    guard: Qwen3Guard | None,
    policy: Policy | None,
    items: Sequence[tuple[Conversation | None, Surface | str]],
) -> list[Decision]:
    g = resolve_guard(guard)
    pol = policy_of(g, policy)
    out, todo, convs = _plan(pol, items)
    if not convs:
        return [d for d in out if d is not None]
    try:
        results: Sequence[Any] = await g.acheck_batch(convs, return_exceptions=True)
    except _FAILURES as exc:
        results = [exc] * len(convs)
    return _finish(pol, items, out, todo, results)


def violation(decision: Decision, content: Any) -> Qwen3GuardViolation:
    """The exception for a blocked decision (``stage`` is the surface name)."""
    exc = Qwen3GuardViolation(
        stage=decision.surface.value, verdict=decision.verdict, content=content
    )
    exc.decision = decision  # type: ignore[attr-defined]
    return exc
