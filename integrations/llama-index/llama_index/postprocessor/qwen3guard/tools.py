"""guard_tool: screen a LlamaIndex tool's arguments before it runs and its output before the
LLM reads it."""

from __future__ import annotations

import json
from typing import Any

from llama_index.core.tools import FunctionTool
from llama_index.core.tools.types import (
    AsyncBaseTool,
    BaseTool,
    ToolMetadata,
    ToolOutput,
    adapt_to_async_tool,
)

from qwen3guard import Decision, Qwen3Guard

from ._common import (
    DEFAULT_VIOLATION_MESSAGE,
    METADATA_KEY,
    ExitBehavior,
    check_exit_behavior,
    decision_info,
    resolve_guard,
    violation,
)

_TOOL_CALL = "tool_call"
_TOOL_RESULT = "tool_result"


class _ToolGuard:
    """The screening shared by :class:`GuardedTool` and :class:`GuardedFunctionTool`."""

    _inner: BaseTool
    _guard: Qwen3Guard | None
    check_arguments: bool
    check_output: bool
    exit_behavior: ExitBehavior
    violation_message: str

    def _setup(
        self,
        tool: BaseTool,
        guard: Qwen3Guard | None,
        check_arguments: bool,
        check_output: bool,
        exit_behavior: ExitBehavior,
        violation_message: str,
    ) -> None:
        self._inner = tool
        self._guard = guard
        self.check_arguments = check_arguments
        self.check_output = check_output
        self.exit_behavior = check_exit_behavior(exit_behavior)
        self.violation_message = violation_message

    @property
    def guard(self) -> Qwen3Guard:
        return resolve_guard(self._guard)

    @property
    def tool(self) -> BaseTool:
        """The wrapped tool."""
        return self._inner

    # -- what is judged -------------------------------------------------------------------------

    def _arguments_messages(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        text = render_arguments(args, kwargs, skip=getattr(self._inner, "ctx_param_name", None))
        return [{"role": "user", "content": text}] if text.strip() else None

    @staticmethod
    def _output_messages(output: ToolOutput) -> Any:
        text = output.content
        return [{"role": "tool", "content": text}] if text and text.strip() else None

    def _blocked(self, decision: Decision, content: Any, args: Any, kwargs: Any) -> ToolOutput:
        if self.exit_behavior == "error":
            raise violation(decision, content)
        return ToolOutput(
            content=self.violation_message,
            tool_name=self._inner.metadata.get_name(),
            raw_input={"args": args, "kwargs": _public_kwargs(kwargs)},
            raw_output={METADATA_KEY: decision_info(decision)},
            is_error=True,
        )

    # -- calls --------------------------------------------------------------------------------

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        guard = self.guard
        if self.check_arguments and (msgs := self._arguments_messages(args, kwargs)):
            decision = guard.screen(msgs, _TOOL_CALL)
            if decision.blocked:
                return self._blocked(decision, msgs[0]["content"], args, kwargs)
        output = _call_sync(self._inner, args, kwargs)
        if self.check_output and (msgs := self._output_messages(output)):
            decision = guard.screen(msgs, _TOOL_RESULT)
            if decision.blocked:
                return self._blocked(decision, output.content, args, kwargs)
        return output

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        guard = self.guard
        if self.check_arguments and (msgs := self._arguments_messages(args, kwargs)):
            decision = await guard.ascreen(msgs, _TOOL_CALL)
            if decision.blocked:
                return self._blocked(decision, msgs[0]["content"], args, kwargs)
        output = await adapt_to_async_tool(self._inner).acall(*args, **kwargs)
        if self.check_output and (msgs := self._output_messages(output)):
            decision = await guard.ascreen(msgs, _TOOL_RESULT)
            if decision.blocked:
                return self._blocked(decision, output.content, args, kwargs)
        return output


class GuardedTool(_ToolGuard, AsyncBaseTool):
    """Any LlamaIndex tool, screened by Qwen3Guard: arguments before it runs (surface
    ``tool_call``), output before the LLM reads it (surface ``tool_result``). Build it with
    :func:`guard_tool`."""

    def __init__(
        self,
        tool: BaseTool,
        guard: Qwen3Guard | None = None,
        *,
        check_arguments: bool = True,
        check_output: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_VIOLATION_MESSAGE,
    ) -> None:
        self._setup(tool, guard, check_arguments, check_output, exit_behavior, violation_message)

    @property
    def metadata(self) -> ToolMetadata:
        return self._inner.metadata


class GuardedFunctionTool(_ToolGuard, FunctionTool):
    """A :class:`~llama_index.core.tools.FunctionTool`, screened like :class:`GuardedTool`.

    It stays a ``FunctionTool`` (same metadata, same ``fn``), so agents still hand it their
    workflow ``Context`` when the function asks for one; the Context is never judged. Only
    ``call`` / ``acall`` / ``__call__`` are guarded: calling ``.fn`` directly bypasses it.
    """

    def __init__(
        self,
        tool: FunctionTool,
        guard: Qwen3Guard | None = None,
        *,
        check_arguments: bool = True,
        check_output: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_VIOLATION_MESSAGE,
    ) -> None:
        # FunctionTool's own __init__ re-inspects the function; copy what the wrapped tool
        # already worked out instead. partial_params / defaults / callbacks stay on the inner.
        self._metadata = tool.metadata
        self._real_fn = tool.real_fn
        self._fn = tool.fn
        self._async_fn = tool.async_fn
        self.requires_context = tool.requires_context
        self.ctx_param_name = tool.ctx_param_name
        self.partial_params = {}
        self._field_defaults = {}
        self._callback = None
        self._async_callback = None
        self._setup(tool, guard, check_arguments, check_output, exit_behavior, violation_message)

    def __call__(self, *args: Any, **kwargs: Any) -> ToolOutput:
        return self.call(*args, **kwargs)


def guard_tool(
    tool: BaseTool,
    guard: Qwen3Guard | None = None,
    *,
    check_arguments: bool = True,
    check_output: bool = True,
    exit_behavior: ExitBehavior = "error",
    violation_message: str = DEFAULT_VIOLATION_MESSAGE,
) -> AsyncBaseTool:
    """Screen a tool with Qwen3Guard, sync (``call``) and async (``acall``).

    The arguments are judged before the tool runs (surface ``tool_call``): blocked, the tool
    never runs. Its output is judged as content the model will read (surface ``tool_result``):
    blocked, it never reaches the caller. A blocked call raises
    :class:`~qwen3guard.Qwen3GuardViolation` (``exit_behavior="error"``; an agent reports the
    error, not the content, to its LLM) or returns an error ``ToolOutput`` carrying
    ``violation_message`` (``exit_behavior="replace"``). A ``FunctionTool`` stays a
    ``FunctionTool``.
    """
    kw: dict[str, Any] = {
        "check_arguments": check_arguments,
        "check_output": check_output,
        "exit_behavior": exit_behavior,
        "violation_message": violation_message,
    }
    if isinstance(tool, FunctionTool):
        return GuardedFunctionTool(tool, guard, **kw)
    return GuardedTool(tool, guard, **kw)


def render_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, skip: str | None = None
) -> str:
    """The text of a tool call's arguments, as judged: one ``name: value`` line each (a lone
    string argument alone). Workflow ``Context`` objects are not content and are left out."""
    values: list[tuple[str | None, Any]] = [(None, a) for a in args]
    values += [(k, v) for k, v in kwargs.items() if k != skip and not _is_context(v)]
    if len(values) == 1 and isinstance(values[0][1], str):
        return values[0][1]
    lines = []
    for name, value in values:
        text = value if isinstance(value, str) else _json(value)
        lines.append(text if name is None else f"{name}: {text}")
    return "\n".join(lines)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _is_context(value: Any) -> bool:
    try:
        from llama_index.core.workflow import Context
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Context)


def _public_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if not _is_context(v)}


def _call_sync(tool: BaseTool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ToolOutput:
    if isinstance(tool, AsyncBaseTool):
        return tool.call(*args, **kwargs)
    return tool(*args, **kwargs)
