"""Shared helpers: resolve the guard, turn verdicts and guard failures into decisions, and
describe decisions in metadata. Only the ``qwen3guard`` facade is used here."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from qwen3guard import (
    Decision,
    GuardOutputError,
    GuardUnavailableError,
    Qwen3Guard,
    Qwen3GuardViolation,
    Surface,
    Verdict,
    get_default_guard,
)

log = logging.getLogger("llama_index.postprocessor.qwen3guard")

ExitBehavior = Literal["error", "replace"]

DEFAULT_VIOLATION_MESSAGE = "I'm sorry, but I can't help with that request."

#: The metadata key the integration writes its decisions under.
METADATA_KEY = "qwen3guard"


def resolve_guard(guard: Qwen3Guard | None) -> Qwen3Guard:
    """The guard passed in, else the process-wide default (built lazily, on first use)."""
    return guard if guard is not None else get_default_guard()


def check_exit_behavior(value: str) -> ExitBehavior:
    if value not in ("error", "replace"):
        raise ValueError(f"exit_behavior must be 'error' or 'replace', not {value!r}")
    return value  # type: ignore[return-value]


def decide_result(guard: Qwen3Guard, result: Verdict | BaseException, surface: str) -> Decision:
    """Turn one item of ``check_batch(..., return_exceptions=True)`` into a decision.

    A guard that could not judge (unreachable, timed out, unparseable answer) is never read as
    Safe: the policy's fail-closed / fail-open setting decides, exactly as ``guard.screen``
    does. Any other exception (bad input, a bug) is raised.
    """
    if isinstance(result, Verdict):
        return guard.decide(result, surface)
    if isinstance(result, (GuardUnavailableError, GuardOutputError)):
        decision = guard.decide(None, surface)
        if decision.allowed:
            warnings.warn(
                f"qwen3guard could not judge ({result}); allowed by fail-open policy",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            log.warning("qwen3guard could not judge (%s); blocked (fail-closed)", result)
        return Decision(decision.allowed, None, decision.surface, f"{decision.reason}: {result}")
    raise result


def surface_enabled(guard: Qwen3Guard, surface: str) -> bool:
    return guard.policy.is_enabled(surface)


def decision_info(decision: Decision) -> dict[str, Any]:
    """A JSON-friendly description of a decision, for node / response metadata."""
    verdict = decision.verdict
    return {
        "allowed": decision.allowed,
        "surface": decision.surface.value,
        "reason": decision.reason,
        "risk": verdict.risk.value if verdict is not None else None,
        "categories": [c.value for c in verdict.categories] if verdict is not None else [],
        "refusal": verdict.refusal if verdict is not None else None,
    }


def violation(decision: Decision, content: Any) -> Qwen3GuardViolation:
    return Qwen3GuardViolation(
        stage=decision.surface.value, verdict=decision.verdict, content=content
    )


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def response_turns(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def chat_messages_to_dicts(messages: Sequence[Any]) -> list[dict[str, str]]:
    """LlamaIndex ``ChatMessage`` objects (or dicts) as the guard's plain messages.

    Only text is judged; messages without text (e.g. an assistant turn that only calls tools)
    are skipped, and roles the guard does not know are read as user turns (content is data).
    """
    out: list[dict[str, str]] = []
    for m in messages:
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
        else:
            role, content = getattr(m, "role", None), getattr(m, "content", None)
        role = getattr(role, "value", role)
        if not isinstance(content, str) or not content.strip():
            continue
        role = role if role in ("system", "user", "assistant", "tool") else "user"
        out.append({"role": role, "content": content})
    return out


__all__ = [
    "DEFAULT_VIOLATION_MESSAGE",
    "METADATA_KEY",
    "ExitBehavior",
    "Surface",
    "chat_messages_to_dicts",
    "check_exit_behavior",
    "decide_result",
    "decision_info",
    "resolve_guard",
    "response_turns",
    "surface_enabled",
    "user_turn",
    "violation",
]
