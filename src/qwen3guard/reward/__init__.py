"""Rewards for reinforcement learning, judged by Qwen3Guard-Gen.

    from trl import GRPOTrainer
    from qwen3guard.reward import Qwen3GuardReward

    trainer = GRPOTrainer(model=..., reward_funcs=[Qwen3GuardReward(guard)], ...)

**Safety reward** (Qwen3Guard technical report, "Intervention and reward"): 1.0 when the guard
judges both the completion's thinking (the ``<think>...</think>`` part, when there is one) and
its answer Safe, else 0.0. Each part is judged as the assistant's response to the prompt. With
``mode="loose"`` a Controversial part also counts as safe; the default is the guard policy's
mode (strict unless configured), so "Safe" means exactly ``Safety: Safe``.

**Hybrid reward**: the report adds a helpfulness score and penalises refusals, so that the
policy cannot reach a high reward by refusing everything. This module's formula, per
completion::

    hybrid = safety + helpfulness_weight * helpfulness * safety - refusal_penalty * refused

- ``safety`` is the safety reward above (1 or 0);
- ``helpfulness`` comes from ``helpfulness`` (a callable ``f(prompts, completions) ->
  list[float]``, e.g. a reward model's scores, or a list of precomputed scores; 0 when not
  given); it is credited only to safe completions, so an unsafe answer gains nothing by being
  helpful;
- ``refused`` is 1 when Gen says ``Refusal: Yes`` about the answer; with
  ``refusal_scope="unnecessary"`` (the default) only when the prompt itself was judged safe
  (a refusal of a harmful prompt is the right answer), with ``"all"`` for every refusal.

With helpfulness in [0, 1] and ``refusal_penalty`` <= 1 every safe completion scores at least
as much as any unsafe one. The report gives no numbers; the defaults here
(``helpfulness_weight=1.0``, ``refusal_penalty=0.5``) are this project's.

**Failures fail closed.** A completion the guard could not judge (guard unreachable, an answer
that does not parse, an empty answer) is scored as unsafe: 0.0 in both forms, and never raises
during training unless ``raise_on_error=True``. An empty answer (nothing after the thinking, or
a thinking block that never closes) also gets 0.0, or the policy could learn that saying
nothing is safe. A prompt whose own verdict failed is not known to be safe, so a refusal of it
is not penalised. Mismatched argument lengths are a caller bug and always raise ``ValueError``.

Every reward is computed with a single ``guard.check_batch`` call per invocation (identical
items are judged once).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..verdict import RiskLevel, Verdict
from .completions import (
    CompletionParts,
    completion_parts,
    prompt_messages,
    split_thinking,
)

log = logging.getLogger(__name__)

HelpfulnessFn = Callable[[Sequence[Any], Sequence[Any]], Sequence[float]]

__all__ = [
    "CompletionParts",
    "HelpfulnessFn",
    "Qwen3GuardReward",
    "completion_parts",
    "hybrid_reward",
    "prompt_messages",
    "safety_reward",
    "split_thinking",
]

# -- the rewards --------------------------------------------------------------------------------


def _is_safe(verdict: Verdict, mode: str) -> bool:
    if verdict.risk is RiskLevel.SAFE:
        return True
    return verdict.risk is RiskLevel.CONTROVERSIAL and mode == "loose"


@dataclass
class _Judged:
    """The guard's view of one completion."""

    safe: bool  # thinking and answer both safe (False on any failure)
    refused: bool  # Gen said Refusal: Yes about the answer
    prompt_safe: bool | None  # None: the prompt was not judged (or its verdict failed)
    failed: bool


def _judge(
    guard: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    mode: str | None,
    judge_prompts: bool,
    raise_on_error: bool,
) -> list[_Judged]:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if mode is None:
        policy = getattr(guard, "policy", None)
        mode = getattr(policy, "mode", "strict")
    if mode not in ("strict", "loose"):
        raise ValueError(f"mode must be 'strict' or 'loose', not {mode!r}")

    items: list[list[dict[str, str]]] = []
    index: dict[str, int] = {}

    def slot(conv: list[dict[str, str]]) -> int:
        key = json.dumps(conv, ensure_ascii=False, sort_keys=True)
        if key not in index:
            index[key] = len(items)
            items.append(conv)
        return index[key]

    plans: list[tuple[int | None, int, int | None] | None] = []
    for p, c in zip(prompts, completions):
        try:
            context = prompt_messages(p)
            parts = completion_parts(c)
        except Exception as exc:
            if raise_on_error:
                raise
            log.warning("qwen3guard reward: cannot read a completion (%s); reward 0", exc)
            plans.append(None)
            continue
        if not parts.answer:  # nothing answered: unsafe by construction (see module doc)
            plans.append(None)
            continue
        think_slot = (
            slot([*context, {"role": "assistant", "content": parts.thinking}])
            if parts.thinking
            else None
        )
        answer_slot = slot([*context, {"role": "assistant", "content": parts.answer}])
        prompt_slot = (
            slot(context)
            if judge_prompts and context and context[-1]["role"] in ("user", "tool", "human")
            else None
        )
        plans.append((think_slot, answer_slot, prompt_slot))

    results: list[Any]
    if items:
        try:
            results = list(guard.check_batch(items, return_exceptions=True))
            if len(results) != len(items):
                raise RuntimeError(
                    f"the guard returned {len(results)} verdicts for {len(items)} items"
                )
        except Exception as exc:
            if raise_on_error:
                raise
            log.warning(
                "qwen3guard reward: the guard failed (%s); every reward of this "
                "batch is 0 (fail-closed)",
                exc,
            )
            results = [exc] * len(items)
    else:
        results = []

    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        if raise_on_error:
            raise failures[0]
        log.warning(
            "qwen3guard reward: %d of %d guard checks failed; those completions get "
            "the unsafe reward (fail-closed)",
            len(failures),
            len(results),
        )

    out: list[_Judged] = []
    for plan in plans:
        if plan is None:
            out.append(_Judged(False, False, None, True))
            continue
        think_slot, answer_slot, prompt_slot = plan
        verdicts = [results[s] for s in (think_slot, answer_slot) if s is not None]
        answer = results[answer_slot]
        prompt_v = results[prompt_slot] if prompt_slot is not None else None
        prompt_safe = _is_safe(prompt_v, mode) if isinstance(prompt_v, Verdict) else None
        if any(not isinstance(v, Verdict) for v in verdicts):
            out.append(_Judged(False, False, prompt_safe, True))
            continue
        out.append(
            _Judged(
                safe=all(_is_safe(v, mode) for v in verdicts),
                refused=bool(answer.refusal),
                prompt_safe=prompt_safe,
                failed=False,
            )
        )
    return out


def safety_reward(
    guard: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    mode: str | None = None,
    raise_on_error: bool = False,
) -> list[float]:
    """1.0 for each completion whose thinking and answer the guard judges Safe, else 0.0
    (failures included). ``prompts`` / ``completions``: strings or lists of messages."""
    judged = _judge(
        guard, prompts, completions, mode=mode, judge_prompts=False, raise_on_error=raise_on_error
    )
    return [1.0 if j.safe else 0.0 for j in judged]


def _helpfulness_scores(
    helpfulness: HelpfulnessFn | Sequence[float] | None,
    prompts: Sequence[Any],
    completions: Sequence[Any],
) -> list[float]:
    if helpfulness is None:
        return [0.0] * len(completions)
    scores = helpfulness(prompts, completions) if callable(helpfulness) else helpfulness
    scores = [float(s) for s in scores]
    if len(scores) != len(completions):
        raise ValueError(f"{len(scores)} helpfulness scores for {len(completions)} completions")
    return scores


def hybrid_reward(
    guard: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    helpfulness: HelpfulnessFn | Sequence[float] | None = None,
    helpfulness_weight: float = 1.0,
    refusal_penalty: float = 0.5,
    refusal_scope: str = "unnecessary",
    mode: str | None = None,
    raise_on_error: bool = False,
) -> list[float]:
    """``safety + helpfulness_weight * helpfulness * safety - refusal_penalty * refused``
    per completion (see the module docstring). A completion the guard could not judge
    scores 0.0."""
    if refusal_scope not in ("unnecessary", "all"):
        raise ValueError(f"refusal_scope must be 'unnecessary' or 'all', not {refusal_scope!r}")
    judged = _judge(
        guard,
        prompts,
        completions,
        mode=mode,
        judge_prompts=refusal_scope == "unnecessary",
        raise_on_error=raise_on_error,
    )
    helpful = _helpfulness_scores(helpfulness, prompts, completions)
    return _combine(judged, helpful, helpfulness_weight, refusal_penalty, refusal_scope)


def _combine(
    judged: Sequence[_Judged],
    helpful: Sequence[float],
    helpfulness_weight: float,
    refusal_penalty: float,
    refusal_scope: str,
) -> list[float]:
    out: list[float] = []
    for j, h in zip(judged, helpful):
        if j.failed:
            out.append(0.0)
            continue
        safety = 1.0 if j.safe else 0.0
        refused = j.refused and (refusal_scope == "all" or j.prompt_safe is True)
        out.append(safety + helpfulness_weight * h * safety - (refusal_penalty if refused else 0.0))
    return out


class Qwen3GuardReward:
    """A reward function for TRL's ``GRPOTrainer`` (``reward_funcs=[Qwen3GuardReward(...)]``).

    TRL calls ``reward(prompts=..., completions=..., completion_ids=..., **dataset_columns)``;
    prompts and completions are strings (standard format) or lists of messages
    (conversational format, a completion being ``[{"role": "assistant", "content": ...}]``).
    Extra keyword arguments are ignored. ``__name__`` (TRL logs ``rewards/<__name__>``) is
    ``name``, by default ``qwen3guard_safety`` or ``qwen3guard_hybrid``.

    ``guard``: a :class:`~qwen3guard.Qwen3Guard`, a model path / hub id (loaded on first use),
    or ``None`` for the process-wide default guard (:func:`~qwen3guard.guard.get_default_guard`).
    ``hybrid=False`` gives :func:`safety_reward`, ``hybrid=True`` :func:`hybrid_reward` (with
    ``helpfulness``, ``helpfulness_weight``, ``refusal_penalty``, ``refusal_scope``).
    Failures score 0.0 and are counted in ``failures``; ``raise_on_error=True`` raises instead.
    """

    def __init__(
        self,
        guard: Any = None,
        hybrid: bool = False,
        *,
        helpfulness: HelpfulnessFn | None = None,
        helpfulness_weight: float = 1.0,
        refusal_penalty: float = 0.5,
        refusal_scope: str = "unnecessary",
        mode: str | None = None,
        raise_on_error: bool = False,
        name: str | None = None,
    ) -> None:
        if refusal_scope not in ("unnecessary", "all"):
            raise ValueError(f"refusal_scope must be 'unnecessary' or 'all', not {refusal_scope!r}")
        if mode not in (None, "strict", "loose"):
            raise ValueError(f"mode must be 'strict' or 'loose', not {mode!r}")
        if helpfulness is not None and not callable(helpfulness):
            raise TypeError("helpfulness must be a callable f(prompts, completions) -> scores")
        self._guard = guard
        self.hybrid = hybrid
        self.helpfulness = helpfulness
        self.helpfulness_weight = helpfulness_weight
        self.refusal_penalty = refusal_penalty
        self.refusal_scope = refusal_scope
        self.mode = mode
        self.raise_on_error = raise_on_error
        self.__name__ = name or ("qwen3guard_hybrid" if hybrid else "qwen3guard_safety")
        self.calls = 0
        self.failures = 0

    @property
    def guard(self) -> Any:
        if self._guard is None:
            from ..guard import get_default_guard

            self._guard = get_default_guard()
        elif isinstance(self._guard, str):
            from ..guard import Qwen3Guard

            self._guard = Qwen3Guard.from_pretrained(self._guard)
        return self._guard

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        if completions is None:
            raise ValueError("the reward needs completions=")
        if prompts is None:  # some callers pass completions only: judge them without context
            prompts = [""] * len(completions)
        self.calls += 1
        try:
            guard = self.guard
        except Exception as exc:
            if self.raise_on_error:
                raise
            log.warning("qwen3guard reward: cannot load the guard (%s); rewards are 0", exc)
            self.failures += len(completions)
            return [0.0] * len(completions)
        judged = _judge(
            guard,
            prompts,
            completions,
            mode=self.mode,
            judge_prompts=self.hybrid and self.refusal_scope == "unnecessary",
            raise_on_error=self.raise_on_error,
        )
        self.failures += sum(j.failed for j in judged)
        if not self.hybrid:
            return [1.0 if j.safe else 0.0 for j in judged]
        helpful = _helpfulness_scores(self.helpfulness, prompts, completions)
        return _combine(
            judged, helpful, self.helpfulness_weight, self.refusal_penalty, self.refusal_scope
        )

    def __repr__(self) -> str:
        return f"<Qwen3GuardReward {self.__name__} hybrid={self.hybrid}>"
