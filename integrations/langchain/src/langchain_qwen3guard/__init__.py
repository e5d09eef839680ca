"""Qwen3Guard safety guardrails for LangChain.

- :class:`Qwen3GuardRunnable`: a guard step for either side of a chain (invoke, batch,
  and streaming moderated chunk by chunk);
- :class:`Qwen3GuardCallbackHandler` / :class:`AsyncQwen3GuardCallbackHandler`: judge prompts,
  stream tokens, tool calls and results, and retrieved documents of any run;
- :class:`Qwen3GuardChatModel` (:func:`guard_chat_model`): a chat model that moderates itself,
  wherever it is called from;
- :class:`Qwen3GuardMiddleware`: for ``langchain.agents.create_agent`` (needs ``langchain``);
- :class:`Qwen3GuardDocumentFilter`: drop or annotate unsafe and injected retrieved documents;
- :func:`guard_tool`: a tool whose arguments and result are screened.

Blocked content raises :class:`Qwen3GuardViolation` (``stage``, ``verdict``, ``content``,
``decision``) unless a component is told to replace it (by default with
``qwen3guard.DEFAULT_REFUSAL_MESSAGE``; what was decided is recorded under
``qwen3guard.METADATA_KEY`` as ``Decision.to_dict()``). ``guard=None`` everywhere means the
process-wide default guard (``qwen3guard.get_default_guard()``), built from the environment on
first use.

What is judged is every text a message holds (:mod:`qwen3guard.content`): text, reasoning /
thinking blocks, tool calls (also invalid ones and those in ``additional_kwargs``) and
structured output; a content block the guard cannot read raises
:class:`qwen3guard.InvalidInputError`. Streaming goes through the core
:class:`qwen3guard.StreamGate`: only text the guard has settled is passed on.

Every guard check is also a LangChain custom event named ``"qwen3guard"`` (``EVENT_NAME``) of
the run that made it, with the decision (``qwen3guard.tracing.CheckEvent.to_dict()``): it
shows up in ``astream_events(version="v2")`` as ``on_custom_event`` and in callback handlers'
``on_custom_event``, so LangSmith and Langfuse record it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwen3guard import Qwen3GuardViolation

from ._convert import DEFAULT_VIOLATION_MESSAGE, METADATA_KEY, NO_PROMPT
from ._events import EVENT_NAME, register
from .callbacks import AsyncQwen3GuardCallbackHandler, Qwen3GuardCallbackHandler
from .chat_model import Qwen3GuardChatModel, guard_chat_model
from .documents import Qwen3GuardDocumentFilter
from .runnable import PROMPT_CONFIG_KEY, Qwen3GuardRunnable
from .tools import guard_tool

if TYPE_CHECKING:
    from .middleware import Qwen3GuardMiddleware

__version__ = "0.1.0"

register()  # every guard check becomes a custom event "qwen3guard" of the current run

__all__ = [
    "DEFAULT_VIOLATION_MESSAGE",
    "EVENT_NAME",
    "METADATA_KEY",
    "NO_PROMPT",
    "PROMPT_CONFIG_KEY",
    "AsyncQwen3GuardCallbackHandler",
    "Qwen3GuardCallbackHandler",
    "Qwen3GuardChatModel",
    "Qwen3GuardDocumentFilter",
    "Qwen3GuardMiddleware",
    "Qwen3GuardRunnable",
    "Qwen3GuardViolation",
    "guard_chat_model",
    "guard_tool",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The middleware needs the `langchain` package; import it only when asked for.
    if name == "Qwen3GuardMiddleware":
        from .middleware import Qwen3GuardMiddleware

        return Qwen3GuardMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
