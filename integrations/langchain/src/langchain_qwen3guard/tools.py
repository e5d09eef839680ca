"""``guard_tool``: a tool whose arguments and result are screened.

    search = guard_tool(search, guard)      # same name, description and schema

The arguments are judged before the tool runs (surface ``tool_call``) and the result before it
is returned (surface ``tool_result``, judged as input the model will read, so instructions
injected into it count). Blocked: :class:`qwen3guard.Qwen3GuardViolation`, or with
``exit_behavior="replace"`` the violation message as the tool's result.

What is judged of a result: its text (a string, content blocks, JSON of any other value); for a
LangGraph ``Command`` (a tool that updates the graph state), every message of its update and any
other text in it. A tool's *artifact* (``response_format="content_and_artifact"``) is not
judged: it is for the application, and LangChain does not send ``ToolMessage.artifact`` to a
model (``convert_to_openai_messages``, langchain-core 1.8.3, keeps the content only); a blocked
result is replaced without its artifact. A result that cannot be read as text blocks, with the
reason (``decision.error``).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from langchain_core.callbacks import (
    AsyncCallbackManagerForToolRun,
    CallbackManagerForToolRun,
)
from langchain_core.messages import BaseMessage, ToolMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, Tool
from pydantic import BaseModel, ConfigDict

from qwen3guard import (
    Decision,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    Surface,
    UnsafeContentError,
    get_default_guard,
)
from qwen3guard.content import as_text, tool_call_conversation, tool_result_conversation

from ._convert import format_violation, message_content

ExitBehavior = Literal["error", "replace"]
Item = tuple[list[dict[str, str]], Surface]


class _Screens:
    """The checks of one guarded tool. ``run`` and ``arun`` take the same steps and differ only
    in how they wait for the guard."""

    def __init__(
        self,
        tool: BaseTool,
        guard: Qwen3Guard | None,
        policy: Policy | None,
        check_arguments: bool,
        check_output: bool,
        exit_behavior: ExitBehavior,
        violation_message: str | None,
    ) -> None:
        self.name = tool.name
        self.model_args = _model_arg_names(tool)
        self.guard = guard
        self.policy = policy
        self.check_arguments = check_arguments
        self.check_output = check_output
        self.exit_behavior = exit_behavior
        self.violation_message = violation_message
        self.content_and_artifact = tool.response_format == "content_and_artifact"

    # -- what is judged ----------------------------------------------------------------------------

    def arguments_items(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Item]:
        if not self.check_arguments:
            return []
        shown: Any
        if self.model_args is not None:
            shown = {k: v for k, v in kwargs.items() if k in self.model_args}
        else:
            shown = {k: v for k, v in kwargs.items() if _plain(v)}
        if args:
            shown = " ".join(str(a) for a in args) if not shown else {"args": args, **shown}
        return [(tool_call_conversation(self.name, shown), Surface.TOOL_CALL)]

    def result_items(self, result: Any) -> list[Item | Decision]:
        """One item per text of the result (a decision for a part that cannot be read)."""
        if not self.check_output:
            return []
        if is_command(result):
            parts = _command_parts(result)
        elif self.content_and_artifact and isinstance(result, tuple) and len(result) == 2:
            parts = [result[0]]
        else:
            parts = [result]
        out: list[Item | Decision] = []
        for part in parts:
            try:
                text = message_content(part).full_text if isinstance(part, BaseMessage) else (
                    as_text(part)
                )
            except InvalidInputError as exc:
                out.append(
                    Decision(False, None, Surface.TOOL_RESULT, f"cannot be judged: {exc}", error=exc)
                )
                continue
            out.append((tool_result_conversation(text), Surface.TOOL_RESULT))
        return out

    # -- the steps ---------------------------------------------------------------------------------

    def run(self, call: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        items = self.arguments_items(args, kwargs)
        if (blocked := self.blocked(items, self._screen(items))) is not None:
            return blocked
        result = call()
        if inspect.isawaitable(result):
            _not_judgeable(result)
        judged = self.result_items(result)
        items = [i for i in judged if not isinstance(i, Decision)]
        decisions = _merge(judged, self._screen(items))
        return self.blocked_or(result, judged, decisions)

    async def arun(
        self, call: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        items = self.arguments_items(args, kwargs)
        if (blocked := self.blocked(items, await self._ascreen(items))) is not None:
            return blocked
        result = await call()
        judged = self.result_items(result)
        items = [i for i in judged if not isinstance(i, Decision)]
        decisions = _merge(judged, await self._ascreen(items))
        return self.blocked_or(result, judged, decisions)

    # -- the guard and the outcome -------------------------------------------------------------------

    def _guard(self) -> Qwen3Guard:
        return self.guard if self.guard is not None else get_default_guard()

    def _screen(self, items: Sequence[Item]) -> list[Decision]:
        return self._guard().screen_batch(list(items), policy=self.policy) if items else []

    async def _ascreen(self, items: Sequence[Item]) -> list[Decision]:
        if not items:
            return []
        return await self._guard().ascreen_batch(list(items), policy=self.policy)

    def blocked(self, items: Sequence[Item], decisions: Sequence[Decision]) -> Any:
        for item, decision in zip(items, decisions):
            if decision.blocked:
                return self.refuse(decision, item[0][-1]["content"] if item[0] else "")
        return None

    def blocked_or(
        self, result: Any, judged: Sequence[Item | Decision], decisions: Sequence[Decision]
    ) -> Any:
        for item, decision in zip(judged, decisions):
            if decision.blocked:
                content = item[0][-1]["content"] if not isinstance(item, Decision) else None
                return self.refuse(decision, content)
        return result

    def refuse(self, decision: Decision, content: Any) -> Any:
        if self.exit_behavior != "replace":
            raise UnsafeContentError(
                stage=decision.surface, verdict=decision.verdict, content=content,
                decision=decision,
            )
        text = format_violation(self.violation_message, decision)
        return (text, None) if self.content_and_artifact else text


def _merge(judged: Sequence[Item | Decision], decisions: Sequence[Decision]) -> list[Decision]:
    """Decisions in the order of ``judged``: the ones made already, and the guard's."""
    it = iter(decisions)
    return [j if isinstance(j, Decision) else next(it) for j in judged]


def _not_judgeable(result: Any) -> NoReturn:
    raise TypeError(
        f"guard_tool: the tool's function returned an awaitable ({type(result).__name__}) to "
        "a synchronous call, whose result cannot be judged; give the tool a coroutine instead"
    )


def is_command(value: object) -> bool:
    """A LangGraph ``Command`` (or any object of that name with an ``update``)."""
    try:
        from langgraph.types import Command
    except ImportError:  # pragma: no cover - langgraph is not installed
        Command = None  # type: ignore[assignment,misc]  # noqa: N806
    if Command is not None and isinstance(value, Command):
        return True
    return type(value).__name__ == "Command" and hasattr(value, "update")


def command_update(command: object) -> tuple[list[BaseMessage], dict[str, Any] | None]:
    """What a ``Command``'s update adds to the conversation: its messages (dicts and tuples
    made messages), and the rest of the update (``None`` when there is none), whose text the
    guard judges too. Messages that cannot be made messages stay in the rest, as values."""
    update = getattr(command, "update", None)
    if update is None:
        return [], None
    pairs = list(update.items()) if isinstance(update, dict) else list(update)
    messages: list[Any] = []
    other: dict[str, Any] = {}
    for key, value in pairs:
        if key == "messages":
            messages.extend(value if isinstance(value, (list, tuple)) else [value])
        else:
            other[key] = value
    try:
        converted = list(convert_to_messages(messages))
    except (ValueError, TypeError, NotImplementedError):
        converted, other["messages"] = [], messages
    return converted, (other or None)


def _command_parts(command: Any) -> list[Any]:
    messages, other = command_update(command)
    return [*messages, other] if other is not None else list(messages)


def guard_tool(
    tool: BaseTool | Callable[..., Any],
    guard: Qwen3Guard | None = None,
    *,
    policy: Policy | None = None,
    check_arguments: bool = True,
    check_output: bool = True,
    exit_behavior: ExitBehavior = "error",
    violation_message: str | None = None,
) -> BaseTool:
    """A copy of ``tool`` (same name, description, schema, ``return_direct``,
    ``response_format``) that screens its arguments and its result.

    ``tool`` may be a ``BaseTool`` or a plain function (made a tool with ``@tool`` rules).
    ``check_arguments`` / ``check_output``: judge the arguments (surface ``tool_call``) / the
    result (surface ``tool_result``); the names of the LlamaIndex integration's ``guard_tool``.
    """
    if exit_behavior not in ("error", "replace"):
        raise ValueError(f"exit_behavior must be 'error' or 'replace', not {exit_behavior!r}")
    if not isinstance(tool, BaseTool):
        from langchain_core.tools import tool as make_tool

        tool = make_tool(tool)
    screens = _Screens(
        tool, guard, policy, check_arguments, check_output, exit_behavior, violation_message
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
    screens: _Screens

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
