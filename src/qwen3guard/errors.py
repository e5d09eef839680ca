"""One exception hierarchy for everything the guard raises.

Catch :class:`Qwen3GuardError` to catch them all. Exceptions that describe bad input also
derive from the builtin a caller would expect (``ValueError`` / ``TypeError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .policy import Decision, Surface
    from .verdict import Verdict


class Qwen3GuardError(Exception):
    """Base class of every error raised by qwen3guard."""


class InvalidInputError(Qwen3GuardError, ValueError):
    """The content handed to the guard cannot be judged as given (empty, wrong type, bad role)."""


class ContextLengthError(InvalidInputError):
    """The content does not fit the model's context and cannot be split into windows (e.g. a
    chat template whose fixed part alone is longer than the context)."""


class RequestTooLargeError(InvalidInputError):
    """One call needs more model input than a per-request budget allows (a server's cost limit
    per request). No model work was done for it."""

    def __init__(self, message: str, *, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class ModelFormatError(Qwen3GuardError, ValueError):
    """A checkpoint is not what the loader expects (e.g. a Gen checkpoint given as Stream)."""


class GuardOutputError(Qwen3GuardError):
    """The guard model answered, but its answer is not a verdict.

    Never read as Safe: under the default (fail-closed) policy this blocks.
    """

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class GuardUnavailableError(Qwen3GuardError):
    """The guard could not be asked: server down, timed out, overloaded, or closed."""


class UnsafeContentError(Qwen3GuardError):
    """The policy blocked content.

    ``stage`` is the :class:`~qwen3guard.Surface` where it was caught (a ``str`` enum, so
    ``exc.stage == "input"`` holds); ``verdict`` is the judgement that blocked it (None when the
    guard could not judge and the policy failed closed); ``decision`` the policy's decision;
    ``content`` the content judged.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        stage: Surface | str,
        verdict: Verdict | None = None,
        content: Any = None,
        decision: Decision | None = None,
    ) -> None:
        from .policy import Decision, Surface

        surface = Surface(stage)
        if decision is None:
            reason = "blocked" if verdict is not None else "guard unavailable; fail-closed"
            decision = Decision(False, verdict, surface, reason)
        elif verdict is None:
            verdict = decision.verdict
        if message is None:
            if verdict is not None:
                cats = ", ".join(c.value for c in verdict.categories) or "None"
                message = f"{surface.value}: {verdict.risk.value} ({cats})"
            else:
                message = f"{surface.value}: blocked ({decision.reason})"
        super().__init__(message)
        self.stage: Surface = surface
        self.verdict = verdict
        self.decision: Decision = decision
        self.content = content


Qwen3GuardViolation = UnsafeContentError
"""The name the LangChain and LlamaIndex integrations document; the same class as
:class:`UnsafeContentError`."""
