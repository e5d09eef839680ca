"""``Qwen3GuardMiddleware``: Qwen3Guard for agents built with ``langchain.agents.create_agent``.

    agent = create_agent(model, tools=[...], middleware=[Qwen3GuardMiddleware(guard)])

Shaped like ``langchain_openai``'s ``OpenAIModerationMiddleware``:

- ``check_input``: a new user message is judged before the model is called (``before_model``);
- ``check_output``: the model's answer is moderated *while it streams* (``wrap_model_call``
  runs the model wrapped in :class:`Qwen3GuardChatModel`, so even ``stream_mode="messages"``
  clients only see moderated chunks), or with ``stream_output=False`` judged whole after the
  call (``after_model``);
- ``check_tool_calls``: each tool call's arguments are judged before the tool runs
  (``wrap_tool_call``): a blocked call never runs;
- ``check_tool_results``: each tool result is judged before the model reads it
  (``wrap_tool_call``): a blocked result is never shown to the model.

``exit_behavior``:

- ``"error"``: raise :class:`qwen3guard.Qwen3GuardViolation` (``stage`` = the surface:
  ``input``, ``output``, ``tool_call``, ``tool_result``; ``verdict``; ``content``);
- ``"end"``: end the run with an AI message carrying the violation message (a blocked answer
  is replaced by it; a blocked tool call or result becomes a tool message with the violation
  message and the run ends before the model is called again);
- ``"replace"``: put the violation message in place of the blocked content and carry on
  (the user message, the answer, or the tool message the model will read).

Every hook has its async form; all guard work in the async forms is awaited (never blocks the
event loop). Messages the middleware wrote carry ``response_metadata["qwen3guard"]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from qwen3guard import Decision, Policy, Qwen3Guard, Qwen3GuardViolation, Surface

from ._convert import (
    METADATA_KEY,
    GuardMessage,
    answer_conversation,
    decision_metadata,
    format_violation,
    message_text,
    message_to_guard,
)
from ._screen import ascreen, screen, violation
from .callbacks import tool_call_conversation, tool_result_conversation
from .chat_model import Qwen3GuardChatModel

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
    from langchain.agents.middleware.types import ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - exercised without the `langchain` package
    raise ImportError(
        "Qwen3GuardMiddleware needs the `langchain` package (for create_agent): "
        "pip install 'langchain-qwen3guard[agents]'"
    ) from exc

if TYPE_CHECKING:
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.runtime import Runtime
    from langgraph.types import Command

ExitBehavior = Literal["error", "end", "replace"]

_END_MARK = "end"


class Qwen3GuardMiddleware(AgentMiddleware[AgentState[Any], Any]):
    """Moderate an agent's input, output, tool calls and tool results with Qwen3Guard."""

    def __init__(
        self,
        guard: Qwen3Guard | None = None,
        *,
        policy: Policy | None = None,
        check_input: bool = True,
        check_output: bool = True,
        check_tool_calls: bool = True,
        check_tool_results: bool = True,
        stream_output: bool = True,
        exit_behavior: ExitBehavior = "end",
        violation_message: str | None = None,
        holdback_tokens: int = 1,
    ) -> None:
        """
        Args:
            guard: the :class:`qwen3guard.Qwen3Guard`; ``None`` uses the process-wide default.
            policy: a :class:`qwen3guard.Policy` for this agent; ``None`` uses the guard's.
            check_input / check_output / check_tool_calls / check_tool_results: what to judge.
            stream_output: moderate the answer while it is generated (through a Stream
                session, in ``wrap_model_call``) rather than judging it whole afterwards.
            exit_behavior: ``"error"``, ``"end"`` or ``"replace"`` (see the module docstring).
            violation_message: template of the violation message; may use ``{stage}``,
                ``{categories}``, ``{risk}``, ``{reason}``.
            holdback_tokens: see :class:`langchain_qwen3guard.Qwen3GuardRunnable`.
        """
        super().__init__()
        if exit_behavior not in ("error", "end", "replace"):
            raise ValueError(
                f"exit_behavior must be 'error', 'end' or 'replace', not {exit_behavior!r}"
            )
        self.guard = guard
        self.policy = policy
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_calls = check_tool_calls
        self.check_tool_results = check_tool_results
        self.stream_output = stream_output
        self.exit_behavior = exit_behavior
        self.violation_message = violation_message
        self.holdback_tokens = holdback_tokens

    # -- before the model: new user input, and runs ended by a tool check ------------------------

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        messages = list(state.get("messages", []))
        if (ended := self._ended_by_tool(messages)) is not None:
            return ended
        target = self._new_input(messages) if self.check_input else None
        if target is None:
            return None
        idx, conv = target
        decision = screen(self.guard, self.policy, conv, Surface.INPUT)
        return None if decision.allowed else self._apply(messages, idx, decision, conv)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:  # type: ignore[override]
        messages = list(state.get("messages", []))
        if (ended := self._ended_by_tool(messages)) is not None:
            return ended
        target = self._new_input(messages) if self.check_input else None
        if target is None:
            return None
        idx, conv = target
        decision = await ascreen(self.guard, self.policy, conv, Surface.INPUT)
        return None if decision.allowed else self._apply(messages, idx, decision, conv)

    # -- the model call: streamed moderation ----------------------------------------------------

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> Any:
        if not self._streams(request):
            return handler(request)
        try:
            response = handler(request.override(model=self._guarded(request.model)))
        except Qwen3GuardViolation as exc:
            return self._model_blocked(exc)
        return _mark_checked(response)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> Any:
        if not self._streams(request):
            return await handler(request)
        try:
            response = await handler(request.override(model=self._guarded(request.model)))
        except Qwen3GuardViolation as exc:
            return self._model_blocked(exc)
        return _mark_checked(response)

    # -- after the model: the whole answer (when it was not moderated while streaming) ------------

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:  # type: ignore[override]
        messages = list(state.get("messages", []))
        target = self._new_output(messages) if self.check_output else None
        if target is None:
            return None
        idx, conv = target
        decision = screen(self.guard, self.policy, conv, Surface.OUTPUT)
        return None if decision.allowed else self._apply(messages, idx, decision, conv)

    @hook_config(can_jump_to=["end"])
    async def aafter_model(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:  # type: ignore[override]
        messages = list(state.get("messages", []))
        target = self._new_output(messages) if self.check_output else None
        if target is None:
            return None
        idx, conv = target
        decision = await ascreen(self.guard, self.policy, conv, Surface.OUTPUT)
        return None if decision.allowed else self._apply(messages, idx, decision, conv)

    # -- tools: arguments before the tool runs, results before the model reads them -------------

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        call = request.tool_call
        if self.check_tool_calls:
            conv = tool_call_conversation(call.get("name"), call.get("args", {}))
            decision = screen(self.guard, self.policy, conv, Surface.TOOL_CALL)
            if decision.blocked:
                return self._tool_blocked(call, decision, conv)
        result = handler(request)
        if not self.check_tool_results:
            return result
        targets = _tool_messages(result)
        if not targets:
            return result
        decisions = [
            screen(
                self.guard,
                self.policy,
                tool_result_conversation(message_text(m)),
                Surface.TOOL_RESULT,
            )
            for m in targets
        ]
        return self._tool_results(result, targets, decisions)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        call = request.tool_call
        if self.check_tool_calls:
            conv = tool_call_conversation(call.get("name"), call.get("args", {}))
            decision = await ascreen(self.guard, self.policy, conv, Surface.TOOL_CALL)
            if decision.blocked:
                return self._tool_blocked(call, decision, conv)
        result = await handler(request)
        if not self.check_tool_results:
            return result
        targets = _tool_messages(result)
        if not targets:
            return result
        decisions = [
            await ascreen(
                self.guard,
                self.policy,
                tool_result_conversation(message_text(m)),
                Surface.TOOL_RESULT,
            )
            for m in targets
        ]
        return self._tool_results(result, targets, decisions)

    # -- internals ------------------------------------------------------------------------------

    def _text(self, decision: Decision) -> str:
        return format_violation(self.violation_message, decision)

    def _meta(self, decision: Decision, exit_behavior: str | None = None) -> dict[str, Any]:
        meta = decision_metadata(decision)
        meta["exit_behavior"] = exit_behavior or self.exit_behavior
        return {METADATA_KEY: meta}

    def _streams(self, request: ModelRequest[Any]) -> bool:
        return (
            self.check_output
            and self.stream_output
            and not isinstance(request.model, Qwen3GuardChatModel)
        )

    def _guarded(self, model: Any) -> Qwen3GuardChatModel:
        return Qwen3GuardChatModel(
            llm=model,
            guard=self.guard,
            policy=self.policy,
            check_input=False,
            check_output=True,
            exit_behavior="error",
            holdback_tokens=self.holdback_tokens,
        )

    def _model_blocked(self, exc: Qwen3GuardViolation) -> Any:
        if self.exit_behavior == "error":
            raise exc
        decision = getattr(exc, "decision", None) or Decision(
            False, exc.verdict, Surface(exc.stage), "blocked"
        )
        # An answer without tool calls: the agent stops here ("end" and "replace" alike).
        return ModelResponse(
            result=[AIMessage(content=self._text(decision), response_metadata=self._meta(decision))]
        )

    def _new_input(self, messages: Sequence[BaseMessage]) -> tuple[int, list[GuardMessage]] | None:
        """The last user message, when no AI message came after it (a new turn)."""
        for idx in range(len(messages) - 1, -1, -1):
            m = messages[idx]
            if isinstance(m, AIMessage):
                return None
            if isinstance(m, HumanMessage):
                if _marked(m):
                    return None
                g = message_to_guard(m)
                return (idx, [g]) if g is not None else None
        return None

    def _new_output(self, messages: Sequence[BaseMessage]) -> tuple[int, list[GuardMessage]] | None:
        if not messages or not isinstance(messages[-1], AIMessage):
            return None
        last = messages[-1]
        if _marked(last):
            return None
        judged = message_to_guard(last)
        if judged is None:
            return None
        prompt = next(
            (message_to_guard(m) for m in reversed(messages[:-1]) if isinstance(m, HumanMessage)),
            None,
        )
        return len(messages) - 1, answer_conversation([prompt] if prompt else [], judged["content"])

    def _apply(
        self,
        messages: Sequence[BaseMessage],
        idx: int,
        decision: Decision,
        conv: list[GuardMessage],
    ) -> dict[str, Any]:
        text = self._text(decision)
        if self.exit_behavior == "error":
            raise violation(decision, conv[-1]["content"] if conv else "")
        original = messages[idx]
        meta = self._meta(decision)
        if isinstance(original, AIMessage):
            # Replace the answer in place (same id), so the unsafe text leaves the state too.
            replaced = AIMessage(content=text, id=original.id, response_metadata=meta)
            update: dict[str, Any] = {"messages": [replaced]}
            if self.exit_behavior == "end":
                update["jump_to"] = "end"
            return update
        if self.exit_behavior == "end":
            return {"jump_to": "end", "messages": [AIMessage(content=text, response_metadata=meta)]}
        replaced_msg = original.model_copy(
            update={
                "content": text,
                "response_metadata": {**original.response_metadata, **meta},
            }
        )
        return {
            "messages": [replaced_msg]
            if original.id
            else [*messages[:idx], replaced_msg, *messages[idx + 1 :]]
        }

    def _ended_by_tool(self, messages: Sequence[BaseMessage]) -> dict[str, Any] | None:
        """A tool check with ``exit_behavior="end"`` left its mark: end before the model."""
        for m in reversed(messages):
            if isinstance(m, AIMessage):
                return None
            if isinstance(m, ToolMessage):
                meta = m.response_metadata.get(METADATA_KEY) or {}
                if meta.get("exit_behavior") == _END_MARK and not meta.get("allowed", True):
                    return {
                        "jump_to": "end",
                        "messages": [
                            AIMessage(
                                content=message_text(m), response_metadata={METADATA_KEY: meta}
                            )
                        ],
                    }
        return None

    def _tool_blocked(
        self, call: dict[str, Any], decision: Decision, conv: list[GuardMessage]
    ) -> ToolMessage:
        if self.exit_behavior == "error":
            raise violation(decision, conv[-1]["content"] if conv else "")
        return ToolMessage(
            content=self._text(decision),
            tool_call_id=call.get("id") or "",
            name=call.get("name"),
            status="error",
            response_metadata=self._meta(decision),
        )

    def _tool_results(
        self, result: Any, targets: list[ToolMessage], decisions: list[Decision]
    ) -> Any:
        replacements: dict[int, ToolMessage] = {}
        for m, decision in zip(targets, decisions):
            if decision.allowed:
                continue
            if self.exit_behavior == "error":
                raise violation(decision, message_text(m))
            replacements[id(m)] = cast(
                ToolMessage,
                m.model_copy(
                    update={
                        "content": self._text(decision),
                        "artifact": None,
                        "response_metadata": {**m.response_metadata, **self._meta(decision)},
                    }
                ),
            )
        if not replacements:
            return result
        if isinstance(result, ToolMessage):
            return replacements.get(id(result), result)
        update = dict(result.update)
        update["messages"] = [replacements.get(id(m), m) for m in update["messages"]]
        return type(result)(
            graph=result.graph, update=update, resume=result.resume, goto=result.goto
        )


def _marked(message: BaseMessage) -> bool:
    return METADATA_KEY in (message.response_metadata or {})


def _mark_checked(response: Any) -> Any:
    """Record on the answer that it was moderated while streaming (``after_model`` skips it)."""
    messages = getattr(response, "result", None)
    if messages is None and isinstance(response, AIMessage):
        messages = [response]
    for m in messages or ():
        if isinstance(m, AIMessage) and METADATA_KEY not in m.response_metadata:
            m.response_metadata[METADATA_KEY] = {
                "allowed": True,
                "surface": "output",
                "reason": "moderated while streaming",
            }
    return response


def _tool_messages(result: Any) -> list[ToolMessage]:
    if isinstance(result, ToolMessage):
        return [result]
    update = getattr(result, "update", None)
    if isinstance(update, dict):
        return [m for m in update.get("messages", []) or () if isinstance(m, ToolMessage)]
    return []
