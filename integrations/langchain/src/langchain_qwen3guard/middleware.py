"""``Qwen3GuardMiddleware``: Qwen3Guard for agents built with ``langchain.agents.create_agent``.

    agent = create_agent(model, tools=[...], middleware=[Qwen3GuardMiddleware(guard)])

Shaped like ``langchain_openai``'s ``OpenAIModerationMiddleware``. What is judged:

- ``check_input`` (``before_model``): **every message the middleware has not judged yet**, not
  only the last user message: each user-authored message (``HumanMessage``,
  ``ChatMessage(role="user")``, a ``{"role": "user"}`` dict), a system message, and an AI or tool
  message the client put in the input, each on its own (all texts it holds: content blocks,
  reasoning, tool calls, ``additional_kwargs``), and the new user-authored ones together, after
  the last few user turns already judged (a request split over messages or turns). A message the
  guard cannot read (an image block, a lone surrogate) is blocked with the reason.
- ``check_output`` (``wrap_model_call``, before the answer enters the agent's state): the
  answer (text and reasoning) is moderated *while it streams* (the model runs wrapped in
  :class:`Qwen3GuardChatModel`, whose streaming gate is the core's ``StreamGate``, so even
  ``stream_mode="messages"`` clients only see moderated chunks), or with
  ``stream_output=False`` judged whole before any of it is passed on (the model then runs
  unstreamed; a streaming client gets the answer in one piece once it is allowed). The
  structured output of ``response_format=`` (``ToolStrategy`` and ``ProviderStrategy``) is
  judged too, on ``output``.
- ``check_tool_calls``: each tool call the model emits (parsed or invalid, or in
  ``additional_kwargs``) is judged with the answer, before it enters the state (surface
  ``tool_call``), and before the tool runs (``wrap_tool_call``) unless it is, unchanged, a call
  of a recorded answer: a blocked call never runs.
- ``check_tool_results`` (``wrap_tool_call``): a tool's result before the model reads it: a
  ``ToolMessage``, or every message and any other text in the update of a LangGraph
  ``Command`` the tool returned. A tool's *artifact* (``response_format="content_and_artifact"``)
  is not judged: it is for the application and is not sent to the LLM (LangChain chat models
  send ``ToolMessage.content`` only); a blocked result loses its artifact with it.

The record of what was judged is kept where a client cannot write it: private graph state
(``Qwen3GuardMiddleware.STATE_KEY``, marked ``PrivateStateAttr``, so ``create_agent`` leaves it
out of the agent's input and output schemas; langchain 1.5.2 ``agents/middleware/types.py``,
``agents/factory.py::_resolve_schema``), holding keyed digests (HMAC-SHA256 with the
middleware's ``record_key``) of the messages judged or produced under the middleware. A
message's metadata is never trusted, a message replaced by its id is new input, and even a
record written into the state by other means (``update_state``) cannot vouch for content without
the key. With a checkpointer, a thread's judged turns are not judged again; a new process with
another key judges them once more (pass the same ``record_key`` to every worker to avoid it).

``exit_behavior``:

- ``"error"``: raise :class:`qwen3guard.Qwen3GuardViolation` (``stage`` = the surface:
  ``input``, ``output``, ``tool_call``, ``tool_result``; ``verdict``; ``decision``; ``content``);
- ``"end"``: end the run with an AI message carrying the violation message. Blocked input
  messages are replaced in the state by the violation message (the next turn of the thread does
  not show them to the model); a blocked answer, or an answer whose tool call is blocked, is
  replaced by it (the call never runs, its arguments never enter the state); a tool call blocked
  before it runs, or a blocked result, becomes a tool message with it, and the run ends before
  the model is called again;
- ``"replace"``: put the violation message in place of the blocked content and carry on (the
  input message, or the tool message the model will read); a blocked answer ends the run as
  with ``"end"``;
- ``"regenerate"`` (issue 13): the agent's model runs as
  ``guard_chat_model(model, guard, on_unsafe="regenerate", ...)`` (see
  :mod:`langchain_qwen3guard._regenerate`): a flagged answer is rolled back to the start of the
  flagged sentence and the model continues the kept prefix (``buffer_tokens``, ``max_retries``,
  ``instruction``, ``continuation``), so the reader gets one clean answer; retries, closing the
  abandoned tries' streams and keeping their tokens from ``stream_mode="messages"`` are that
  code's. The model sees the request's system prompt, so the answer is judged against it too.
  The middleware does not judge that answer again. An answer still unsafe after
  ``max_retries``, or whose tool call is blocked, ends the run with the violation message, as
  with ``"end"``; so do blocked input, tool calls and tool results. With
  ``stream_output=False`` the regenerated answer is passed on whole, once it is done.

Every hook has its async form; they share one core and differ only in how they wait for the
guard (awaited in the async forms: the event loop is never blocked).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    RemoveMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from pydantic import Field
from typing_extensions import NotRequired

from qwen3guard import (
    METADATA_KEY,
    Decision,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    Surface,
    UnsafeContentError,
    get_default_guard,
)
from qwen3guard.content import (
    answer_conversation,
    as_text,
    tool_call_conversation,
    tool_result_conversation,
)
from qwen3guard.stream.intervene import (
    DEFAULT_BUFFER_TOKENS,
    DEFAULT_INSTRUCTION,
    DEFAULT_MAX_RETRIES,
)

from ._convert import format_violation, message_content
from ._regenerate import Continuation, RegenerateRules
from .chat_model import Qwen3GuardChatModel
from .tools import command_update, is_command

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
    from langchain.agents.middleware.types import (
        ExtendedModelResponse,
        ModelCallResult,
        ModelRequest,
        ModelResponse,
        PrivateStateAttr,
    )
except ImportError as exc:  # pragma: no cover - exercised without the `langchain` package
    raise ImportError(
        "Qwen3GuardMiddleware needs the `langchain` package (for create_agent): "
        "pip install 'langchain-qwen3guard[agents]'"
    ) from exc

if TYPE_CHECKING:
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.runtime import Runtime
    from langgraph.types import Command

ExitBehavior = Literal["error", "end", "replace", "regenerate"]
Conversation = list[dict[str, str]]
Item = tuple[Conversation, Surface]

_STATE_KEY = "qwen3guard_judged"
_MEMO_SIZE = 4096
#: Judged user turns put before new input when it is judged as one conversation.
_CONTEXT_TURNS = 3


class Qwen3GuardState(AgentState[Any]):
    """The agent state with the middleware's private record (digests of judged messages)."""

    qwen3guard_judged: NotRequired[Annotated[list[str], PrivateStateAttr]]


class Qwen3GuardMiddleware(AgentMiddleware[Qwen3GuardState, Any]):
    """Moderate an agent's input, output, tool calls and tool results with Qwen3Guard."""

    state_schema = Qwen3GuardState
    #: The private state key of the record of judged messages.
    STATE_KEY = _STATE_KEY

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
        record_key: bytes | None = None,
        hold_back_tokens: int | None = None,
        holdback_tokens: int | None = None,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        instruction: str = DEFAULT_INSTRUCTION,
        continuation: Continuation = "auto",
    ) -> None:
        """
        Args:
            guard: the :class:`qwen3guard.Qwen3Guard`; ``None`` uses the process-wide default.
            policy: a :class:`qwen3guard.Policy` for this agent; ``None`` uses the guard's.
            check_input / check_output / check_tool_calls / check_tool_results: what to judge.
            stream_output: moderate the answer while it is generated (through a Stream
                session, in ``wrap_model_call``) rather than judging it whole afterwards.
            exit_behavior: ``"error"``, ``"end"``, ``"replace"`` or ``"regenerate"`` (see the
                module docstring).
            violation_message: template of the violation message; may use ``{stage}``,
                ``{categories}``, ``{risk}``, ``{reason}``.
            record_key: the key of the record of judged messages (random per middleware when
                not given; give every worker of a deployment the same one).
            hold_back_tokens / holdback_tokens: deprecated, no effect: what a streamed answer
                holds back is decided by the core :class:`qwen3guard.StreamGate` (only text
                the guard has settled is passed on).
            buffer_tokens / max_retries / instruction / continuation: with
                ``exit_behavior="regenerate"``, the options of
                :class:`~langchain_qwen3guard.Qwen3GuardChatModel` of the same names (how far
                the released text stays behind the moderation head, how many continuations at
                most, the corrective instruction template, ``"auto"`` / ``"prefill"`` /
                ``"instruction"``).
        """
        super().__init__()
        if hold_back_tokens is not None or holdback_tokens is not None:
            warnings.warn(
                "Qwen3GuardMiddleware(hold_back_tokens=...) has no effect: the core StreamGate "
                "decides what a streamed answer holds back",
                DeprecationWarning,
                stacklevel=2,
            )
        if exit_behavior not in ("error", "end", "replace", "regenerate"):
            raise ValueError(
                "exit_behavior must be 'error', 'end', 'replace' or 'regenerate', not "
                f"{exit_behavior!r}"
            )
        if buffer_tokens < 0 or max_retries < 0:
            raise ValueError("buffer_tokens and max_retries must not be negative")
        if continuation not in ("auto", "prefill", "instruction"):
            raise ValueError(
                f"continuation must be 'auto', 'prefill' or 'instruction', not {continuation!r}"
            )
        self.buffer_tokens = buffer_tokens
        self.max_retries = max_retries
        self.instruction = instruction
        self.continuation: Continuation = continuation
        self.guard = guard
        self.policy = policy
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_calls = check_tool_calls
        self.check_tool_results = check_tool_results
        self.stream_output = stream_output
        self.exit_behavior: ExitBehavior = exit_behavior
        self.violation_message = violation_message
        self._key = record_key if record_key is not None else os.urandom(32)
        # In-process notes (digests, bounded): tool results produced under this middleware
        # (the tools node cannot write the private record), texts judged allowed on a surface
        # (a tool call judged with the answer is not judged again before it runs), and the
        # tool messages that end the run.
        self._lock = threading.Lock()
        self._produced: OrderedDict[str, None] = OrderedDict()
        self._allowed: OrderedDict[str, None] = OrderedDict()
        self._ending: OrderedDict[str, None] = OrderedDict()

    # -- hooks: each builds a plan, waits for the guard (the only difference between the sync
    # -- and async forms), and finishes the plan -------------------------------------------------

    @hook_config(can_jump_to=["end"])
    def before_model(
        self, state: Qwen3GuardState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        plan = self._input_plan(state)
        return plan.finish(self._screen(plan.items))

    @hook_config(can_jump_to=["end"])
    async def abefore_model(
        self, state: Qwen3GuardState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        plan = self._input_plan(state)
        return plan.finish(await self._ascreen(plan.items))

    def after_model(
        self, state: Qwen3GuardState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        # What the model node added was judged in wrap_model_call: record it.
        return self._record_update(state)

    async def aafter_model(
        self, state: Qwen3GuardState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return self._record_update(state)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelCallResult[Any]:
        guarded = self._guarded_request(request)
        try:
            response = handler(guarded or request)
        except UnsafeContentError as exc:
            return self._answer_blocked(exc.decision, exc.content)
        plan = self._output_plan(request, response, judged=guarded is not None)
        return plan.finish(self._screen(plan.items))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelCallResult[Any]:
        guarded = self._guarded_request(request)
        try:
            response = await handler(guarded or request)
        except UnsafeContentError as exc:
            return self._answer_blocked(exc.decision, exc.content)
        plan = self._output_plan(request, response, judged=guarded is not None)
        return plan.finish(await self._ascreen(plan.items))

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        call = self._call_plan(request)
        if (blocked := call.finish(self._screen(call.items))) is not None:
            return blocked
        plan = self._result_plan(request, handler(request))
        return plan.finish(self._screen(plan.items))

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        call = self._call_plan(request)
        if (blocked := call.finish(await self._ascreen(call.items))) is not None:
            return blocked
        plan = self._result_plan(request, await handler(request))
        return plan.finish(await self._ascreen(plan.items))

    # -- waiting for the guard --------------------------------------------------------------------

    def _resolved(self) -> Qwen3Guard:
        return self.guard if self.guard is not None else get_default_guard()

    def _screen(self, items: list[Item]) -> list[Decision]:
        if not items:
            return []
        return self._resolved().screen_batch(items, policy=self.policy)

    async def _ascreen(self, items: list[Item]) -> list[Decision]:
        if not items:
            return []
        return await self._resolved().ascreen_batch(items, policy=self.policy)

    # -- the record ------------------------------------------------------------------------------

    def _digest(self, *parts: Any) -> str:
        data = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=repr)
        return hmac.new(self._key, data.encode("ascii"), hashlib.sha256).hexdigest()[:40]

    def digest_of(self, message: BaseMessage) -> str:
        """The record's digest of a message: everything of it an LLM can see (not its id or
        metadata)."""
        return self._digest(
            "message",
            message.type,
            getattr(message, "role", None),
            message.content,
            getattr(message, "tool_calls", None),
            getattr(message, "invalid_tool_calls", None),
            message.additional_kwargs,
            getattr(message, "tool_call_id", None),
        )

    def _note(self, memo: OrderedDict[str, None], digest: str) -> None:
        with self._lock:
            memo[digest] = None
            memo.move_to_end(digest)
            while len(memo) > _MEMO_SIZE:
                memo.popitem(last=False)

    def _noted(self, memo: OrderedDict[str, None], digest: str) -> bool:
        with self._lock:
            return digest in memo

    def _item_digest(self, item: Item) -> str:
        return self._digest("judged", item[1].value, item[0])

    def _known(self, state: Qwen3GuardState | dict[str, Any]) -> set[str]:
        record: list[str] = cast("list[str]", state.get(_STATE_KEY) or [])
        return set(record)

    def _record_update(self, state: Qwen3GuardState | dict[str, Any]) -> dict[str, Any] | None:
        """The record of the messages now in the state (all of them judged or produced under
        the middleware by the time this runs); ``None`` when it has not changed."""
        record = [self.digest_of(m) for m in state.get("messages", [])]
        return None if set(record) == self._known(state) else {_STATE_KEY: record}

    # -- building the plans ------------------------------------------------------------------------

    def _input_plan(self, state: Qwen3GuardState) -> _InputPlan:
        messages = list(state.get("messages", []))
        known = self._known(state)
        plan = _InputPlan(self, messages, known=known)
        if (ending := self._ended_by_tool(messages)) is not None:
            plan.ending = ending
            return plan
        joint: list[int] = []
        for idx, m in enumerate(messages):
            digest = self.digest_of(m)
            if digest in known or self._noted(self._produced, digest):
                continue
            is_tool = isinstance(m, ToolMessage)
            if not (self.check_tool_results if is_tool else self.check_input):
                continue
            surface = Surface.TOOL_RESULT if is_tool else Surface.INPUT
            try:
                content = message_content(m)
            except InvalidInputError as exc:
                plan.pre.append(([idx], _unreadable(surface, exc)))
                continue
            text = content.full_text
            if not text.strip():
                continue
            plan.add([idx], ([{"role": "user", "content": text}], surface), text)
            if not is_tool:
                joint.append(idx)
        if joint:
            # A request split over several messages, or over turns: the new messages together,
            # after the last few user turns already judged. (Only the new ones are replaced.)
            before = _user_texts(messages[: joint[0]])[-_CONTEXT_TURNS:]
            texts = [*before, *(plan.texts[i] for i in joint)]
            if len(texts) > 1:
                conv = [{"role": "user", "content": t} for t in texts]
                plan.add(joint, (conv, Surface.INPUT), "\n".join(texts))
        return plan

    def _answer_items(
        self, message: AIMessage, context: Conversation
    ) -> list[tuple[Item, str] | Decision]:
        """What of a model's answer is judged: what it says (text and reasoning) on
        ``output``, each tool call on ``tool_call``; a decision when it cannot be read."""
        try:
            content = message_content(message)
        except InvalidInputError as exc:
            return [_unreadable(Surface.OUTPUT, exc)]
        out: list[tuple[Item, str] | Decision] = []
        if self.check_output and content.said.strip():
            out.append(((answer_conversation(context, content.said), Surface.OUTPUT), content.said))
        if self.check_tool_calls:
            for call in content.tool_calls:
                item = (tool_call_conversation(call.name, call.arguments), Surface.TOOL_CALL)
                out.append((item, call.render()))
        return out

    def _output_plan(self, request: ModelRequest[Any], response: Any, judged: bool) -> _OutputPlan:
        """What is judged after the model call: the structured output, and, when the model
        was not run guarded (it is a ``Qwen3GuardChatModel`` already), the answer itself."""
        plan = _OutputPlan(self, response)
        context = _last_request(request.messages)
        for m in plan.model_response.result if not judged else ():
            if isinstance(m, AIMessage):
                for entry in self._answer_items(m, context):
                    plan.add_entry(entry)
        structured = plan.model_response.structured_response
        if self.check_output and structured is not None:
            text = as_text(structured)
            plan.add((answer_conversation(context, text), Surface.OUTPUT), text)
        return plan

    def _call_plan(self, request: ToolCallRequest) -> _CallPlan:
        call = request.tool_call
        plan = _CallPlan(self, dict(call))
        if self.check_tool_calls:
            item: Item = (
                tool_call_conversation(call.get("name"), call.get("args", {})),
                Surface.TOOL_CALL,
            )
            if (
                item[0]
                and not self._noted(self._allowed, self._item_digest(item))
                and not self._judged_with_answer(request)
            ):
                plan.items.append(item)
        return plan

    def _judged_with_answer(self, request: ToolCallRequest) -> bool:
        """Whether the call is, unchanged, one of an answer of the model that the middleware
        recorded: with ``check_tool_calls`` its calls were judged (surface ``tool_call``) before
        the answer entered the state, so they are not judged twice."""
        state = request.state if isinstance(request.state, dict) else {}
        record = set(state.get(_STATE_KEY) or ())
        call = request.tool_call
        if not record or not call.get("id"):
            return False
        for m in reversed(state.get("messages") or ()):
            if not isinstance(m, AIMessage):
                continue
            for c in m.tool_calls:
                if c.get("id") == call.get("id"):
                    same = (c.get("name"), c.get("args")) == (call.get("name"), call.get("args"))
                    return same and self.digest_of(m) in record
        return False

    def _result_plan(self, request: ToolCallRequest, result: Any) -> _ResultPlan:
        plan = _ResultPlan(self, dict(request.tool_call), result)
        if not self.check_tool_results:
            return plan
        for m in plan.messages:
            try:
                text = message_content(m).full_text
            except InvalidInputError as exc:
                plan.pre.append(_unreadable(Surface.TOOL_RESULT, exc))
                continue
            plan.add(tool_result_conversation(text), text)
        if plan.other is not None:
            text = as_text(plan.other)
            plan.add(tool_result_conversation(text), text)
        return plan

    # -- outcomes ----------------------------------------------------------------------------------

    def _text(self, decision: Decision) -> str:
        return format_violation(self.violation_message, decision)

    def _meta(self, decision: Decision) -> dict[str, Any]:
        return {METADATA_KEY: {**decision.to_dict(), "exit_behavior": self.exit_behavior}}

    def _raise(self, decision: Decision, content: Any) -> NoReturn:
        raise UnsafeContentError(
            stage=decision.surface, verdict=decision.verdict, content=content, decision=decision
        )

    def _answer_blocked(self, decision: Decision, content: Any) -> ModelResponse[Any]:
        if self.exit_behavior == "error":
            self._raise(decision, content)
        # An answer without tool calls: the agent stops here ("end" and "replace" alike).
        return ModelResponse(
            result=[AIMessage(content=self._text(decision), response_metadata=self._meta(decision))]
        )

    def _tool_blocked(self, call: dict[str, Any], decision: Decision, content: Any) -> ToolMessage:
        if self.exit_behavior == "error":
            self._raise(decision, content)
        message = ToolMessage(
            content=self._text(decision),
            tool_call_id=call.get("id") or "",
            name=call.get("name"),
            status="error",
            response_metadata=self._meta(decision),
        )
        digest = self.digest_of(message)
        self._note(self._produced, digest)
        if self.exit_behavior in ("end", "regenerate"):
            self._note(self._ending, digest)
        return message

    def _ended_by_tool(self, messages: Sequence[BaseMessage]) -> dict[str, Any] | None:
        """A tool check with ``exit_behavior="end"`` blocked a call or result of the last
        step: end before the model. (Known by the middleware's own note, not by a field.)"""
        for m in reversed(messages):
            if isinstance(m, AIMessage):
                return None
            if isinstance(m, ToolMessage) and self._noted(self._ending, self.digest_of(m)):
                meta = m.response_metadata.get(METADATA_KEY)
                answer = AIMessage(content=m.content, response_metadata={METADATA_KEY: meta})
                record = [self.digest_of(x) for x in [*messages, answer]]
                return {"jump_to": "end", "messages": [answer], _STATE_KEY: record}
        return None

    def _guarded_request(self, request: ModelRequest[Any]) -> ModelRequest[Any] | None:
        """The request with its model guarded: moderated while it streams (through the core
        stream gate of :class:`Qwen3GuardChatModel`), or judged whole before anything of the
        answer is passed on (``stream_output=False``). ``None`` when the model is a
        ``Qwen3GuardChatModel`` already (the answer is then judged after the call)."""
        model = request.model
        if isinstance(model, Qwen3GuardChatModel) or not (
            self.check_output or self.check_tool_calls
        ):
            return None
        common: dict[str, Any] = {
            "llm": model,
            "guard": self.guard,
            "policy": self.policy,
            "check_input": False,
            "exit_behavior": "error",
        }
        guarded: Qwen3GuardChatModel
        if self.check_output and self.exit_behavior == "regenerate":
            guarded = _Regenerating(
                check_output=True,
                violation_message=self.violation_message,
                buffer_tokens=self.buffer_tokens,
                max_retries=self.max_retries,
                instruction=self.instruction,
                continuation=self.continuation,
                disable_streaming=not self.stream_output,
                **{**common, "exit_behavior": "regenerate"},
            )
        elif self.check_output and self.stream_output:
            guarded = Qwen3GuardChatModel(check_output=True, **common)
        else:
            guarded = _JudgedWhole(
                check_output=False,
                disable_streaming=True,
                middleware=self,
                context=_last_request(request.messages),
                **common,
            )
        return request.override(model=guarded)


# -- plans: what to judge, and what to do with the decisions (shared by sync and async) -------------


def _unreadable(surface: Surface, exc: InvalidInputError) -> Decision:
    return Decision(False, None, surface, f"cannot be judged: {exc}", error=exc)


def _first_blocked(decisions: Sequence[Decision]) -> int | None:
    return next((i for i, d in enumerate(decisions) if d.blocked), None)


@dataclass
class _InputPlan:
    mw: Qwen3GuardMiddleware
    messages: list[BaseMessage]
    items: list[Item] = field(default_factory=list)
    owners: list[list[int]] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    pre: list[tuple[list[int], Decision]] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    ending: dict[str, Any] | None = None

    def add(self, owners: list[int], item: Item, text: str) -> None:
        if len(owners) == 1:
            self.texts[owners[0]] = text
        self.owners.append(owners)
        self.items.append(item)
        self.contents.append(text)

    def finish(self, decisions: list[Decision]) -> dict[str, Any] | None:
        mw = self.mw
        if self.ending is not None:
            return self.ending
        blocked: dict[int, Decision] = {}
        joint: list[tuple[list[int], Decision]] = []
        for owners, decision in [*self.pre, *zip(self.owners, decisions)]:
            if decision.blocked:
                if len(owners) == 1:
                    blocked.setdefault(owners[0], decision)
                else:
                    joint.append((owners, decision))
        if not blocked:  # a request split over messages: none is blocked alone, all together
            for owners, decision in joint:
                for idx in owners:
                    blocked.setdefault(idx, decision)
        if not blocked:
            record = [mw.digest_of(m) for m in self.messages]
            return None if set(record) == self.known else {_STATE_KEY: record}
        first = min(blocked)
        if mw.exit_behavior == "error":
            mw._raise(blocked[first], self.texts.get(first, ""))
        replaced = list(self.messages)
        for idx, decision in blocked.items():
            replaced[idx] = _neutralized(self.messages[idx], mw._text(decision), mw._meta(decision))
        update: dict[str, Any] = {}
        if all(self.messages[i].id for i in blocked):
            update["messages"] = [replaced[i] for i in sorted(blocked)]
        else:  # pragma: no cover - add_messages gives every message in the state an id
            update["messages"] = [RemoveMessage(id=REMOVE_ALL_MESSAGES), *replaced]
        final = replaced
        if mw.exit_behavior in ("end", "regenerate"):
            decision = blocked[first]
            answer = AIMessage(content=mw._text(decision), response_metadata=mw._meta(decision))
            update["messages"].append(answer)
            update["jump_to"] = "end"
            final = [*replaced, answer]
        update[_STATE_KEY] = [mw.digest_of(m) for m in final]
        return update


def _neutralized(message: BaseMessage, text: str, meta: dict[str, Any]) -> BaseMessage:
    """``message`` with the violation message in place of everything it said."""
    update: dict[str, Any] = {
        "content": text,
        "additional_kwargs": {},
        "response_metadata": {**message.response_metadata, **meta},
    }
    if isinstance(message, AIMessage):
        update.update(tool_calls=[], invalid_tool_calls=[])
    if isinstance(message, ToolMessage):
        update["artifact"] = None
    return message.model_copy(update=update)


@dataclass
class _OutputPlan:
    mw: Qwen3GuardMiddleware
    response: Any
    items: list[Item] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    pre: list[Decision] = field(default_factory=list)

    @property
    def model_response(self) -> ModelResponse[Any]:
        r = self.response
        if isinstance(r, ExtendedModelResponse):
            return r.model_response
        if isinstance(r, AIMessage):
            return ModelResponse(result=[r])
        return cast("ModelResponse[Any]", r)

    def add(self, item: Item, text: str) -> None:
        if item[0]:
            self.items.append(item)
            self.contents.append(text)

    def add_entry(self, entry: tuple[Item, str] | Decision) -> None:
        if isinstance(entry, Decision):
            self.pre.append(entry)
        else:
            self.add(*entry)

    def blocked(self, decisions: list[Decision]) -> tuple[Decision, Any] | None:
        """The first block and the content it blocks; ``None`` when all is allowed."""
        mw = self.mw
        for item, decision in zip(self.items, decisions):
            if decision.allowed:
                mw._note(mw._allowed, mw._item_digest(item))
        if self.pre:
            return self.pre[0], None
        if (i := _first_blocked(decisions)) is not None:
            return decisions[i], self.contents[i]
        return None

    def finish(self, decisions: list[Decision]) -> Any:
        if (blocked := self.blocked(decisions)) is not None:
            return self.mw._answer_blocked(*blocked)
        return self.response


@dataclass
class _CallPlan:
    mw: Qwen3GuardMiddleware
    call: dict[str, Any]
    items: list[Item] = field(default_factory=list)

    def finish(self, decisions: list[Decision]) -> ToolMessage | None:
        for item, decision in zip(self.items, decisions):
            if decision.blocked:
                return self.mw._tool_blocked(self.call, decision, item[0][-1]["content"])
        return None


@dataclass
class _ResultPlan:
    mw: Qwen3GuardMiddleware
    call: dict[str, Any]
    result: Any
    messages: list[BaseMessage] = field(default_factory=list)
    other: Any = None
    items: list[Item] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    pre: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.messages, self.other = _result_parts(self.result)

    def add(self, conversation: Conversation, text: str) -> None:
        if conversation:
            self.items.append((conversation, Surface.TOOL_RESULT))
            self.contents.append(text)

    def finish(self, decisions: list[Decision]) -> ToolMessage | Command[Any]:
        mw = self.mw
        if self.pre:
            return mw._tool_blocked(self.call, self.pre[0], None)
        if (i := _first_blocked(decisions)) is not None:
            return mw._tool_blocked(self.call, decisions[i], self.contents[i])
        for m in self.messages:
            mw._note(mw._produced, mw.digest_of(m))
        return cast("ToolMessage | Command[Any]", self.result)


def _result_parts(result: Any) -> tuple[list[BaseMessage], Any]:
    """The messages a tool's result adds to the conversation, and any other content of a
    ``Command`` update (``None`` when there is none)."""
    if isinstance(result, BaseMessage):
        return [result], None
    if is_command(result):
        return command_update(result)
    return [], result


def _user_texts(messages: Sequence[BaseMessage]) -> list[str]:
    """The texts of the user turns among ``messages``, in order."""
    out: list[str] = []
    for m in messages:
        if isinstance(m, (AIMessage, ToolMessage)):
            continue
        try:
            content = message_content(m, non_text="skip")
        except InvalidInputError:
            continue
        if content.role == "user" and content.full_text.strip():
            out.append(content.full_text)
    return out


def _last_request(messages: Sequence[BaseMessage]) -> Conversation:
    """The context an answer is judged after: the last user turn the model was given."""
    texts = _user_texts(messages)
    return [{"role": "user", "content": texts[-1]}] if texts else []


def _inner_config() -> RunnableConfig:
    # No callbacks (an empty list, not None, so an enclosing run's are not inherited either):
    # the wrapped model's raw answer never reaches a streaming client or trace unjudged.
    return {"callbacks": [], "run_name": "Qwen3GuardInnerLLM"}


class _JudgedWhole(Qwen3GuardChatModel):
    """The agent's model when answers are judged whole (``stream_output=False``): the wrapped
    model runs outside LangChain's callbacks, its whole answer is judged, and only then is it
    handed on (``disable_streaming``: a ``stream_mode="messages"`` client receives it in one
    piece once it is allowed). A blocked answer raises :class:`UnsafeContentError`, which the
    middleware turns into its exit behaviour."""

    middleware: Any = Field(default=None, exclude=True)
    context: list[dict[str, str]] = Field(default_factory=list)

    def _plan(self, answer: Any) -> _OutputPlan:
        if not isinstance(answer, AIMessage):
            raise TypeError(
                f"the agent's model answered with {type(answer).__name__}, not an AIMessage"
            )
        plan = _OutputPlan(self.middleware, answer)
        for entry in self.middleware._answer_items(answer, self.context):
            plan.add_entry(entry)
        return plan

    @staticmethod
    def _allowed(plan: _OutputPlan, decisions: list[Decision]) -> ChatResult:
        if (blocked := plan.blocked(decisions)) is not None:
            decision, content = blocked
            raise UnsafeContentError(
                stage=decision.surface, verdict=decision.verdict, content=content,
                decision=decision,
            )
        return ChatResult(generations=[ChatGeneration(message=plan.response)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        plan = self._plan(self.llm.invoke(messages, config=_inner_config(), stop=stop, **kwargs))
        return self._allowed(plan, self.middleware._screen(plan.items))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        answer = await self.llm.ainvoke(messages, config=_inner_config(), stop=stop, **kwargs)
        plan = self._plan(answer)
        return self._allowed(plan, await self.middleware._ascreen(plan.items))


class _Regenerating(Qwen3GuardChatModel):
    """The agent's model with ``exit_behavior="regenerate"``: ``guard_chat_model(model, ...,
    on_unsafe="regenerate")`` whose refusal (an answer still unsafe after ``max_retries``, or a
    blocked tool call) raises :class:`UnsafeContentError` instead of ending the answer with the
    violation message, so that the middleware ends the run as with ``"end"`` (no structured
    output is parsed from a refusal; the state's answer carries the middleware's metadata)."""

    def _regenerate_rules(self, messages: list[BaseMessage]) -> RegenerateRules:
        rules = super()._regenerate_rules(messages)
        rules.refusal = _refused
        return rules


def _refused(decision: Decision) -> str:
    raise UnsafeContentError(
        stage=decision.surface, verdict=decision.verdict, content=None, decision=decision
    )
