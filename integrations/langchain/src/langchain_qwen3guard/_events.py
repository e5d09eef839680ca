"""Guard decisions as LangChain custom events, so LangSmith, Langfuse and any callback handler
record them.

Every check the core reports (:mod:`qwen3guard.tracing`: each screened item, each gated
stream's prompt and answer) becomes one custom event named ``"qwen3guard"`` whose data is
:meth:`qwen3guard.tracing.CheckEvent.to_dict` (surface, allowed, risk, categories, reason,
refusal, error, latency_s, model, kind; content only when content tracing is on). It shows up
in ``astream_events(version="v2")`` as ``on_custom_event`` and in a callback handler's
``on_custom_event``, under the run that made the check.

``langchain_core.callbacks.manager.dispatch_custom_event`` (langchain-core 1.8.3) takes its
parent run from the runnable config in the current context (``ensure_config()`` reads
``var_child_runnable_config``) and raises ``RuntimeError`` when there is none: a check made
outside any LangChain run sends nothing. Sync checks dispatch with
``dispatch_custom_event``; async ones await ``adispatch_custom_event``.
"""

from __future__ import annotations

from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event

from qwen3guard import tracing
from qwen3guard.tracing import CheckEvent

#: The name of the custom event every check dispatches.
EVENT_NAME = "qwen3guard"

_NO_RUN = "without a parent run id"  # langchain-core's message when no run is current


class LangChainEvents:
    """A :class:`qwen3guard.tracing.CheckObserver` that dispatches each check as a LangChain
    custom event (nothing outside a LangChain run)."""

    def on_check(self, event: CheckEvent) -> None:
        try:
            dispatch_custom_event(EVENT_NAME, event.to_dict())
        except RuntimeError as exc:
            if _NO_RUN not in str(exc):
                raise

    async def aon_check(self, event: CheckEvent) -> None:
        try:
            await adispatch_custom_event(EVENT_NAME, event.to_dict())
        except RuntimeError as exc:
            if _NO_RUN not in str(exc):
                raise


_observer = LangChainEvents()


def register() -> None:
    """Register the observer (once; done on ``import langchain_qwen3guard``)."""
    tracing.add_observer(_observer)


def unregister() -> None:
    tracing.remove_observer(_observer)
