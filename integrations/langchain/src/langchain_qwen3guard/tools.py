"""``guard_tool``: a tool whose arguments and result are screened.

    search = guard_tool(search, guard)      # same name, description and schema

The arguments are judged before the tool runs (surface ``tool_call``) and the result before it
is returned (surface ``tool_result``, judged as input the model will read, so instructions
injected into it count). Blocked: :class:`qwen3guard.Qwen3GuardViolation`, or with
``exit_behavior="replace"`` the violation message as the tool's result.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForToolRun,
    CallbackManagerForToolRun,
)
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, Tool
from pydantic import BaseModel, ConfigDict

from qwen3guard import Decision, Policy, Qwen3Guard, Surface

from ._convert import format_violation
from ._screen import ascreen, screen, violation
from .callbacks import tool_call_conversation, tool_result_conversation

ExitBehavior = Literal["error", "replace"]


class _Screens:
    """The checks of one guarded tool."""

    def __init__(
        self,
        tool: BaseTool,
        guard: Qwen3Guard | None,
        policy: Policy | None,
        check_args: bool,
        check_result: bool,
        exit_behavior: ExitBehavior,
        violation_message: str | None,
    ) -> None:
        self.name = tool.name
        self.model_args = _model_arg_names(tool)
        self.guard = guard
        self.policy = policy
        self.check_args = check_args
        self.check_result = check_result
        self.exit_behavior = exit_behavior
        self.violation_message = violation_message
        self.content_and_artifact = tool.response_format == "content_and_artifact"

    def args_conversation(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        shown: Any
        if self.model_args is not None:
            shown = {k: v for k, v in kwargs.items() if k in self.model_args}
        else:
            shown = {k: v for k, v in kwargs.items() if _plain(v)}
        if args:
            shown = " ".join(str(a) for a in args) if not shown else {"args": args, **shown}
        return tool_call_conversation(self.name, shown)

    def result_conversation(self, result: Any) -> Any:
        content = result[0] if self.content_and_artifact and isinstance(result, tuple) else result
        return tool_result_conversation(content)

    def blocked(self, decision: Decision, conv: Any) -> Any:
        if self.exit_behavior != "replace":
            raise violation(decision, conv[-1]["content"] if conv else "")
        text = format_violation(self.violation_message, decision)
        return (text, None) if self.content_and_artifact else text

    def run(self, call: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.check_args:
            conv = self.args_conversation(args, kwargs)
            decision = screen(self.guard, self.policy, conv, Surface.TOOL_CALL)
            if decision.blocked:
                return self.blocked(decision, conv)
        result = call()
        if self.check_result and _judgeable(result):
            conv = self.result_conversation(result)
            decision = screen(self.guard, self.policy, conv, Surface.TOOL_RESULT)
            if decision.blocked:
                return self.blocked(decision, conv)
        return result

    async def arun(
        self, call: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.check_args:
            conv = self.args_conversation(args, kwargs)
            decision = await ascreen(self.guard, self.policy, conv, Surface.TOOL_CALL)
            if decision.blocked:
                return self.blocked(decision, conv)
        result = await call()
        if self.check_result and _judgeable(result):
            conv = self.result_conversation(result)
            decision = await ascreen(self.guard, self.policy, conv, Surface.TOOL_RESULT)
            if decision.blocked:
                return self.blocked(decision, conv)
        return result


def guard_tool(
    tool: BaseTool | Callable[..., Any],
    guard: Qwen3Guard | None = None,
    *,
    policy: Policy | None = None,
    check_args: bool = True,
    check_result: bool = True,
    exit_behavior: ExitBehavior = "error",
    violation_message: str | None = None,
) -> BaseTool:
    """A copy of ``tool`` (same name, description, schema, ``return_direct``,
    ``response_format``) that screens its arguments and its result.

    ``tool`` may be a ``BaseTool`` or a plain function (made a tool with ``@tool`` rules).
    """
    if not isinstance(tool, BaseTool):
        from langchain_core.tools import tool as make_tool

        tool = make_tool(tool)
    screens = _Screens(
        tool, guard, policy, check_args, check_result, exit_behavior, violation_message
    )
    if isinstance(tool, (StructuredTool, Tool)) and (tool.func or tool.coroutine):
        update: dict[str, Any] = {}
        if tool.func is not None:
            update["func"] = _wrap_sync(tool.func, screens)
        if tool.coroutine is not None:
            update["coroutine"] = _wrap_async(tool.coroutine, screens)
        return tool.model_copy(update=update)
    return _GuardedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema or tool.get_input_schema(),
        return_direct=tool.return_direct,
        response_format=tool.response_format,
        tags=tool.tags,
        metadata=tool.metadata,
        inner=tool,
        screens=screens,
    )


def _wrap_sync(func: Callable[..., Any], screens: _Screens) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return screens.run(lambda: func(*args, **kwargs), args, kwargs)

    return guarded


def _wrap_async(func: Callable[..., Any], screens: _Screens) -> Callable[..., Any]:
    @functools.wraps(func)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        return await screens.arun(lambda: func(*args, **kwargs), args, kwargs)

    return guarded


class _GuardedTool(BaseTool):
    """The wrapper for tools that are not built from a function: the inner tool is invoked
    with a tool call, so its content and artifact both come back."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseTool
    screens: Any

    def _call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "tool_call",
            "name": self.inner.name,
            "args": kwargs,
            "id": f"qwen3guard-{uuid.uuid4()}",
        }

    def _unpack(self, out: Any) -> Any:
        if isinstance(out, ToolMessage):
            return (
                (out.content, out.artifact)
                if self.response_format == "content_and_artifact"
                else out.content
            )
        return out

    def _run(
        self,
        *args: Any,
        run_manager: CallbackManagerForToolRun | None = None,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        child = {"callbacks": run_manager.get_child()} if run_manager else {}

        def call() -> Any:
            value: Any = args[0] if args and not kwargs else self._call(kwargs)
            return self._unpack(self.inner.invoke(value, child))  # type: ignore[arg-type]

        return self.screens.run(call, args, kwargs)

    async def _arun(
        self,
        *args: Any,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        child = {"callbacks": run_manager.get_child()} if run_manager else {}

        async def call() -> Any:
            value: Any = args[0] if args and not kwargs else self._call(kwargs)
            return self._unpack(await self.inner.ainvoke(value, child))  # type: ignore[arg-type]

        return await self.screens.arun(call, args, kwargs)


def _model_arg_names(tool: BaseTool) -> set[str] | None:
    """The arguments the model fills in (injected ones are not judged)."""
    try:
        schema = tool.tool_call_schema
    except Exception:  # noqa: BLE001
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return set(schema.model_fields)
    if isinstance(schema, dict):
        return set((schema.get("properties") or {}).keys())
    return None


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, tuple, dict)) or value is None


def _judgeable(result: Any) -> bool:
    """A ``Command`` (a tool updating the graph state) is not a result to judge."""
    return not inspect.isawaitable(result) and type(result).__name__ != "Command"
