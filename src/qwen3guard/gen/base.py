"""The interface every Gen backend implements.

A backend turns conversations into the model's raw text answers. Parsing, windowing policy,
combining windows and the policy decision live above it, in the facade, so every backend
gets them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from ..errors import RequestTooLargeError
from ..messages import Message

_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "qwen3guard_request_budget", default=None
)


@contextlib.contextmanager
def request_budget(max_tokens: int | None) -> Iterator[None]:
    """Within this block, one ``generate`` / ``agenerate`` call may feed the model at most
    ``max_tokens`` prompt tokens in all (every window of every conversation: the call's cost);
    over it, every conversation of the call fails with :class:`RequestTooLargeError` before any
    model work. A context variable: it holds in the thread or task that enters the block."""
    token = _BUDGET.set(max_tokens)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def over_budget(token_counts: Sequence[int]) -> RequestTooLargeError | None:
    """The error for a call whose conversations have these token counts, if the current
    :func:`request_budget` refuses it."""
    limit = _BUDGET.get()
    total = sum(token_counts)
    if limit is None or total <= limit:
        return None
    return RequestTooLargeError(
        f"the request needs {total} tokens of model input ({len(token_counts)} windows), over "
        f"the limit of {limit} tokens per request; send less text per request",
        tokens=total,
        limit=limit,
    )


class GenBackend(ABC):
    """Runs Qwen3Guard-Gen. Implementations must be safe to call from many threads."""

    #: A short name for logs and ``Verdict.metadata``.
    name: str = "gen"

    @abstractmethod
    def generate(self, conversations: Sequence[Sequence[Message]]) -> list[str | BaseException]:
        """The raw answer for each conversation, in order; a per-item failure is returned
        as the exception instead of raising, so one bad item does not sink a batch."""

    async def agenerate(
        self, conversations: Sequence[Sequence[Message]]
    ) -> list[str | BaseException]:
        return await asyncio.to_thread(self.generate, conversations)

    def split_windows(self, conversation: Sequence[Message]) -> list[list[Message]]:
        """Conversations that together cover the judged message within the model's context.
        The default trusts the server to take it whole."""
        return [list(conversation)]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the backend holds (threads, clients, memory)."""
