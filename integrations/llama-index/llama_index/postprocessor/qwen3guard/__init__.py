"""Qwen3Guard safety guardrails for LlamaIndex.

- :class:`Qwen3GuardNodePostprocessor`: judge retrieved nodes before the LLM reads them
  (indirect prompt injection, jailbreaks and unsafe content in retrieved context).
- :class:`Qwen3GuardQueryEngine`: judge the query before retrieval and the answer after
  synthesis; streamed answers go through the core :class:`qwen3guard.StreamGate` and are cut
  off before the flagged span.
- :class:`Qwen3GuardChatEngine`: judge a chat engine's message and given history before it
  runs, and its answers (streamed ones through the core gate).
- :func:`guard_tool`: screen a tool's arguments and output (``call`` and ``acall``).
- :func:`moderate_agent_stream`: moderate what a ``FunctionAgent`` / ``AgentWorkflow`` run
  shows (streamed text, tool calls, tool results) and cancel the run when it turns unsafe.

Every check is reported to LlamaIndex's instrumentation: a :class:`Qwen3GuardCheckEvent` (the
decision; the judged text only when :func:`qwen3guard.tracing.set_trace_content` is on) inside a
span named after the component, e.g. ``Qwen3GuardQueryEngine.screen``.

Every class takes an optional ``guard`` (a :class:`qwen3guard.Qwen3Guard`); without one the
process-wide default (:func:`qwen3guard.get_default_guard`, configured from the environment) is
built on first use. ``policy`` overrides the guard's policy. Decisions are written under
:data:`qwen3guard.METADATA_KEY` in the shape of :meth:`qwen3guard.Decision.to_dict`.
"""

from qwen3guard import DEFAULT_REFUSAL_MESSAGE, METADATA_KEY, Qwen3GuardViolation

# first: this package's dispatcher exists before its modules' (the parent of their spans)
from ._events import Qwen3GuardCheckEvent  # isort: skip
from ._common import DEFAULT_VIOLATION_MESSAGE, NO_PROMPT
from .agent import moderate_agent_stream
from .base import Qwen3GuardNodePostprocessor
from .chat_engine import Qwen3GuardChatEngine
from .query_engine import Qwen3GuardQueryEngine
from .tools import GuardedFunctionTool, GuardedTool, guard_tool

__all__ = [
    "DEFAULT_REFUSAL_MESSAGE",
    "DEFAULT_VIOLATION_MESSAGE",
    "METADATA_KEY",
    "NO_PROMPT",
    "GuardedFunctionTool",
    "GuardedTool",
    "Qwen3GuardChatEngine",
    "Qwen3GuardCheckEvent",
    "Qwen3GuardNodePostprocessor",
    "Qwen3GuardQueryEngine",
    "Qwen3GuardViolation",
    "guard_tool",
    "moderate_agent_stream",
]
