"""The plans behind the facade's judging and screening, shared by sync and async callers.

``_BatchPlan`` normalises items, splits long ones into windows and puts the windows' verdicts
back together; ``ScreenPlan`` decides what needs no model (a surface that is off, empty content,
content that cannot be judged) and turns the judged items into decisions with one policy. A
sync caller and an async caller differ only in how they wait for the backend in between.
:func:`could_not_judge` is the one fail-closed rule every integration uses.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import (
    ContextLengthError,
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    UnsafeContentError,
)
from .gen.base import GenBackend
from .messages import Message, normalize_messages, require_text, role_of
from .policy import Decision, Policy, Surface
from .verdict import Verdict, parse_gen_output, worst

log = logging.getLogger("qwen3guard.guard")

#: A conversation: a prompt string, or a list of messages (dicts with role and content).
Conversation = str | Sequence[Any]


class BatchPlan:
    """Normalise every item, split long ones into windows, and put the windows back together
    once the backend has answered. Bad items fail alone; others still run."""

    def __init__(self, gen: GenBackend, items: Sequence[Conversation]) -> None:
        self.t0 = time.perf_counter()
        self.flat: list[list[Message]] = []
        self.slots: list[tuple[int, int, Any] | Exception] = []
        for item in items:
            try:
                conv = normalize_messages(item)
                windows = _windows_of(gen, conv)
            except (InvalidInputError, ValueError) as exc:
                self.slots.append(exc if isinstance(exc, InvalidInputError)
                                  else InvalidInputError(str(exc)))
                continue
            self.slots.append((len(self.flat), len(windows), role_of(conv)))
            self.flat.extend(windows)

    def finish(
        self, raws: Sequence[str | BaseException], return_exceptions: bool
    ) -> list[Verdict] | list[Verdict | Exception]:
        elapsed = time.perf_counter() - self.t0
        out: list[Verdict | Exception] = []
        for slot in self.slots:
            if isinstance(slot, Exception):
                out.append(slot)
                continue
            start, n, role = slot
            try:
                windows = [_parse(raws[i], role) for i in range(start, start + n)]
                out.append(worst(windows).with_timing(elapsed))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        if return_exceptions:
            return out
        verdicts: list[Verdict] = []
        for v in out:
            if isinstance(v, Exception):
                raise v
            verdicts.append(v)
        return verdicts


def _windows_of(gen: GenBackend, conv: list[Message]) -> list[list[Message]]:
    """The windows Gen judges ``conv`` in. Gen judges the last turn; earlier turns are context.
    When the template of a long conversation alone overflows the context (hundreds of short
    turns), the oldest turns are dropped until it fits: the judged turn is always whole."""
    # Backends raise ContextLengthError (older ones a bare ValueError) when it does not fit.
    try:
        return gen.split_windows(conv)
    except ValueError:
        if len(conv) < 2:
            raise
    lo, hi, found = 1, len(conv) - 1, None
    while lo <= hi:  # the fewest oldest turns to drop
        k = (lo + hi) // 2
        try:
            found = gen.split_windows(conv[k:])
            hi = k - 1
        except ValueError:
            lo = k + 1
    if found is None:
        raise ContextLengthError("not even the judged turn fits the Gen model's context")
    return found


def _parse(raw: str | BaseException, role: Any) -> Verdict:
    if isinstance(raw, (GuardUnavailableError, GuardOutputError, InvalidInputError)):
        raise raw
    if isinstance(raw, BaseException):
        raise GuardUnavailableError(f"the Gen backend failed: {raw!r}") from raw
    return parse_gen_output(raw, role)


def prompt_messages(text: Any, context: Sequence[Any] | None) -> list[Any]:
    return [*(context or []), {"role": "user", "content": require_text(text, "prompt")}]


def response_messages(prompt: Any, response: Any) -> list[Any]:
    if isinstance(prompt, str) or prompt is None:
        before: list[Any] = [{"role": "user", "content": require_text(prompt, "prompt")}]
    else:
        before = list(prompt)
    return [*before, {"role": "assistant", "content": require_text(response, "response")}]


def raise_if_blocked(decision: Decision, content: Any = None) -> Decision:
    """``decision`` if it allows; else raise :class:`UnsafeContentError` carrying it."""
    if decision.blocked:
        raise UnsafeContentError(stage=decision.surface, verdict=decision.verdict,
                                 content=content, decision=decision)
    return decision


def could_not_judge(policy: Policy, exc: BaseException, surface: Surface | str) -> Decision:
    """The decision for content the guard could not judge: blocked (fail-closed) unless the
    policy fails open, and then allowed with a warning. The one place this rule lives."""
    decision = policy.decide(None, surface)
    if decision.allowed:
        warnings.warn(f"qwen3guard could not judge ({exc}); allowed by fail-open policy",
                      RuntimeWarning, stacklevel=3)
    else:
        log.warning("qwen3guard could not judge (%s); blocked (fail-closed)", exc)
    return Decision(decision.allowed, None, decision.surface, f"{decision.reason}: {exc}",
                    error=exc)


class ScreenPlan:
    """Screening of many items with one batched check: what needs no model (a surface that is
    off, empty content, content that cannot be judged) is decided here; the rest is judged
    together and decided with the policy once the results are in. Sync and async callers
    differ only in how they wait for ``results``."""

    def __init__(
        self,
        default_policy: Policy,
        items: Sequence[tuple[Conversation | None, Surface | str]],
        policy: Policy | None,
        *,
        strict_input: bool,
    ) -> None:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise InvalidInputError("screen_batch() takes a list of (conversation, surface)")
        self.policy = policy if policy is not None else default_policy
        self.decisions: list[Decision | None] = []
        self.surfaces: list[Surface] = []
        self.todo: list[int] = []
        self.convs: list[list[Message]] = []
        self.results: Sequence[Verdict | Exception] = []
        for conv, surface in items:
            surface = Surface(surface)
            self.surfaces.append(surface)
            decision: Decision | None = None
            if not self.policy.is_enabled(surface):
                decision = Decision(True, None, surface, "surface not checked")
            elif _is_empty(conv):
                decision = Decision(True, None, surface, "nothing to judge")
            else:
                try:
                    normalized = normalize_messages(conv)
                except InvalidInputError as exc:
                    if strict_input:
                        raise
                    decision = Decision(False, None, surface, f"cannot be judged: {exc}",
                                        error=exc)
                else:
                    self.todo.append(len(self.decisions))
                    self.convs.append(normalized)
            self.decisions.append(decision)

    def finish(self) -> list[Decision]:
        for i, result in zip(self.todo, self.results):
            surface = self.surfaces[i]
            if isinstance(result, Verdict):
                self.decisions[i] = self.policy.decide(result, surface)
            elif isinstance(result, (GuardUnavailableError, GuardOutputError)):
                self.decisions[i] = could_not_judge(self.policy, result, surface)
            elif isinstance(result, InvalidInputError):  # e.g. windows that cannot be made
                self.decisions[i] = Decision(False, None, surface,
                                             f"cannot be judged: {result}", error=result)
            else:
                raise result
        assert all(d is not None for d in self.decisions)
        return [d for d in self.decisions if d is not None]


def _is_empty(conv: Conversation | None) -> bool:
    """Nothing to judge: no content at all, or only blank text in every message. (A blank last
    message after real content is not "nothing": normalisation rejects it as bad input.)"""
    if conv is None:
        return True
    if isinstance(conv, str):
        return not conv.strip()
    if not isinstance(conv, Sequence):
        return False
    for m in conv:
        content = m.get("content") if isinstance(m, Mapping) else getattr(m, "content", None)
        if not isinstance(content, str) or content.strip():
            return False
    return True
