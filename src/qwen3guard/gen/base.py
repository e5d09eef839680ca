"""The interface every Gen backend implements.

A backend turns conversations into the model's raw text answers. Parsing, windowing policy,
combining windows and the policy decision live above it, in the facade, so every backend
gets them the same way.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence

from ..messages import Message


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
