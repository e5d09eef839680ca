"""One exception hierarchy for everything the guard raises.

Catch :class:`Qwen3GuardError` to catch them all. Exceptions that describe bad input also
derive from the builtin a caller would expect (``ValueError`` / ``TypeError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .verdict import Verdict


class Qwen3GuardError(Exception):
    """Base class of every error raised by qwen3guard."""


class InvalidInputError(Qwen3GuardError, ValueError):
    """The content handed to the guard cannot be judged as given (empty, wrong type, bad role)."""


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

    ``stage`` names where it was caught (``input``, ``output``, ``tool_call``, ``tool_result``,
    ``retrieval``); ``verdict`` is the judgement that blocked it; ``content`` the text judged.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        stage: str,
        verdict: Verdict | None,
        content: Any = None,
    ) -> None:
        if message is None:
            if verdict is not None:
                cats = ", ".join(c.value for c in verdict.categories) or "None"
                message = f"{stage}: {verdict.risk.value} ({cats})"
            else:
                message = f"{stage}: blocked"
        super().__init__(message)
        self.stage = stage
        self.verdict = verdict
        self.content = content


#: The name the LangChain and LlamaIndex integrations document; the same class.
Qwen3GuardViolation = UnsafeContentError
