"""guard_tool: screen a LlamaIndex tool's arguments before it runs and its output before the
LLM reads it."""

from __future__ import annotations

import functools
from typing import Any

from llama_index.core.tools import FunctionTool
from llama_index.core.tools.types import (
    AsyncBaseTool,
    BaseTool,
    ToolMetadata,
    ToolOutput,
    adapt_to_async_tool,
)

from qwen3guard import (
    DEFAULT_REFUSAL_MESSAGE,
    METADATA_KEY,
    Decision,
    Policy,
    Qwen3Guard,
    Surface,
)
from qwen3guard.guard import raise_if_blocked

from ._common import (
    ExitBehavior,
    Messages,
    arguments_messages,
    check_exit_behavior,
    is_context,
    output_messages,
    resolve_guard,
    tool_arguments,
)
from ._events import check_span


class _ToolGuard:
    """The screening shared by :class:`GuardedTool` and :class:`GuardedFunctionTool`; ``call``
    and ``acall`` take the same steps and differ only in how they wait."""

    _inner: BaseTool
    _guard: Qwen3Guard | None
    policy: Policy | None
    check_arguments: bool
    check_output: bool
    exit_behavior: ExitBehavior
    violation_message: str

    def _setup(
        self,
        tool: BaseTool,
        guard: Qwen3Guard | None,
        policy: Policy | None,
        check_arguments: bool,
        check_output: bool,
        exit_behavior: ExitBehavior,
        violation_message: str,
    ) -> None:
        self._inner = tool
        self._guard = guard
        self.policy = policy
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

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Messages | None:
        if not self.check_arguments:
            return None
        skip = getattr(self._inner, "ctx_param_name", None)
        arguments = tool_arguments(args, kwargs, skip=skip)
        return arguments_messages(self._inner.metadata.name, arguments)

    def _output(self, output: ToolOutput) -> Messages | Decision | None:
        return output_messages(output) if self.check_output else None

    def _outcome(
        self, decision: Decision, content: Any, args: Any, kwargs: Any
    ) -> ToolOutput | None:
        """None when allowed; else raise, or the error output that replaces the call."""
        if decision.allowed:
            return None
        if self.exit_behavior == "error":
            raise_if_blocked(decision, content)
        return ToolOutput(
            content=self.violation_message,
            tool_name=self._inner.metadata.get_name(),
            raw_input={"args": args, "kwargs": _public_kwargs(kwargs)},
            raw_output={METADATA_KEY: decision.to_dict()},
            is_error=True,
        )

    def _screen(self, messages: Messages, surface: Surface) -> Decision:
        with check_span(self):
            return self.guard.screen(messages, surface, policy=self.policy)

    async def _ascreen(self, messages: Messages, surface: Surface) -> Decision:
        with check_span(self):
            return await self.guard.ascreen(messages, surface, policy=self.policy)

    # -- calls --------------------------------------------------------------------------------

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        if (msgs := self._arguments(args, kwargs)) is not None:
            decision = self._screen(msgs, Surface.TOOL_CALL)
            if (out := self._outcome(decision, msgs[0]["content"], args, kwargs)) is not None:
                return out
        output = _call_sync(self._inner, args, kwargs)
        judged = self._output(output)
        if isinstance(judged, list):
            judged = self._screen(judged, Surface.TOOL_RESULT)
        if judged is not None and (out := self._outcome(judged, output.content, args, kwargs)):
            return out
        return output

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        if (msgs := self._arguments(args, kwargs)) is not None:
            decision = await self._ascreen(msgs, Surface.TOOL_CALL)
            if (out := self._outcome(decision, msgs[0]["content"], args, kwargs)) is not None:
                return out
        output = await adapt_to_async_tool(self._inner).acall(*args, **kwargs)
        judged = self._output(output)
        if isinstance(judged, list):
            judged = await self._ascreen(judged, Surface.TOOL_RESULT)
        if judged is not None and (out := self._outcome(judged, output.content, args, kwargs)):
            return out
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
        policy: Policy | None = None,
        check_arguments: bool = True,
        check_output: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_REFUSAL_MESSAGE,
    ) -> None:
        self._setup(
            tool, guard, policy, check_arguments, check_output, exit_behavior, violation_message
        )

    @property
    def metadata(self) -> ToolMetadata:
        return self._inner.metadata


class GuardedFunctionTool(_ToolGuard, FunctionTool):
    """A :class:`~llama_index.core.tools.FunctionTool`, screened like :class:`GuardedTool`.

    It stays a ``FunctionTool`` (same metadata, same signature), so agents still hand it their
    workflow ``Context`` when the function asks for one; the Context is never judged. Its
    callables are guarded too: ``fn`` / ``real_fn`` / ``async_fn`` (what ``CodeActAgent`` runs
    and ``to_langchain_tool()`` hands over) screen like ``call`` / ``acall`` and return the
    function's own value (or ``violation_message`` when blocked with ``"replace"``).
    """

    def __init__(
        self,
        tool: FunctionTool,
        guard: Qwen3Guard | None = None,
        *,
        policy: Policy | None = None,
        check_arguments: bool = True,
        check_output: bool = True,
        exit_behavior: ExitBehavior = "error",
        violation_message: str = DEFAULT_REFUSAL_MESSAGE,
    ) -> None:
        # FunctionTool's own __init__ re-inspects the function; copy what the wrapped tool
        # already worked out instead. partial_params / defaults / callbacks stay on the inner.
        self._metadata = tool.metadata
        self._real_fn = _guarded_sync(self, tool.real_fn) if tool.real_fn is not None else None
        self._fn = _guarded_sync(self, tool.fn)
        self._async_fn = _guarded_async(self, tool.async_fn)
        self.requires_context = tool.requires_context
        self.ctx_param_name = tool.ctx_param_name
        self.partial_params = {}
        self._field_defaults = {}
        self._callback = None
        self._async_callback = None
        self._setup(
            tool, guard, policy, check_arguments, check_output, exit_behavior, violation_message
        )

    def __call__(self, *args: Any, **kwargs: Any) -> ToolOutput:
        return self.call(*args, **kwargs)


def _value(output: ToolOutput) -> Any:
    """What a guarded callable returns: the function's own value, or the violation message."""
    raw = output.raw_output
    if output.is_error and isinstance(raw, dict) and METADATA_KEY in raw:
        return output.content
    return raw


def _guarded_sync(owner: GuardedFunctionTool, fn: Any) -> Any:
    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return _value(owner.call(*args, **kwargs))

    return guarded


def _guarded_async(owner: GuardedFunctionTool, fn: Any) -> Any:
    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        return _value(await owner.acall(*args, **kwargs))

    return guarded


def guard_tool(
    tool: BaseTool,
    guard: Qwen3Guard | None = None,
    *,
    policy: Policy | None = None,
    check_arguments: bool = True,
    check_output: bool = True,
    exit_behavior: ExitBehavior = "error",
    violation_message: str = DEFAULT_REFUSAL_MESSAGE,
) -> AsyncBaseTool:
    """Screen a tool with Qwen3Guard, sync (``call``) and async (``acall``).

    The arguments are judged before the tool runs (surface ``tool_call``): blocked, the tool
    never runs. Its output is judged as content the model will read (surface ``tool_result``):
    every block the LLM is given, nested citable content included; blocked, it never reaches
    the caller. An output block no text guard can read (an image, audio, video or a binary
    document) blocks the output, with an :class:`~qwen3guard.InvalidInputError` in the
    decision saying which (pass ``check_output=False`` for tools whose output is not text). A blocked call raises
    :class:`~qwen3guard.Qwen3GuardViolation` (``exit_behavior="error"``; an agent reports the
    error, not the content, to its LLM) or returns an error ``ToolOutput`` carrying
    ``violation_message`` (``exit_behavior="replace"``). A ``FunctionTool`` stays a
    ``FunctionTool``.
    """
    kw: dict[str, Any] = {
        "policy": policy,
        "check_arguments": check_arguments,
        "check_output": check_output,
        "exit_behavior": exit_behavior,
        "violation_message": violation_message,
    }
    if isinstance(tool, FunctionTool):
        return GuardedFunctionTool(tool, guard, **kw)
    return GuardedTool(tool, guard, **kw)


def _public_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if not is_context(v)}


def _call_sync(tool: BaseTool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ToolOutput:
    if isinstance(tool, AsyncBaseTool):
        return tool.call(*args, **kwargs)
    return tool(*args, **kwargs)
