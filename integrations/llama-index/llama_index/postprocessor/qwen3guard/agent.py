"""moderate_agent_stream: moderate what a FunctionAgent / AgentWorkflow run shows its reader."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llama_index.core.agent.workflow.workflow_events import (
    AgentInput,
    AgentOutput,
    AgentStream,
    ToolCall,
    ToolCallResult,
)
from llama_index.core.workflow import Event, StopEvent
from llama_index.core.workflow.handler import WorkflowHandler

from qwen3guard import (
    Decision,
    InvalidInputError,
    Policy,
    Qwen3Guard,
    Qwen3GuardViolation,
    StreamGate,
    Surface,
    UnsafeContentError,
)
from qwen3guard.content import canonical_role, tool_result_conversation

from ._common import (
    _ROLES,
    Messages,
    arguments_messages,
    chat_messages_to_dicts,
    check_hold_back,
    log,
    output_messages,
    read_chat_message,
    resolve_guard,
    response_turns,
    user_turn,
)
from ._events import CheckSpan, check_span
from ._stream import Moderation

Item = tuple[Messages, Surface]


async def moderate_agent_stream(
    handler: WorkflowHandler,
    guard: Qwen3Guard | None = None,
    *,
    policy: Policy | None = None,
    check_input: bool = True,
    check_tools: bool = True,
    hold_back_tokens: int | None = None,
    cancel_timeout: float = 5.0,
) -> AsyncIterator[Event]:
    """Stream a workflow run's events, judging the agent's input and everything its LLM emits
    before the reader sees it.

    ``handler`` is what ``FunctionAgent.run(...)`` / ``AgentWorkflow.run(...)`` returns.

    - ``check_input``: the run's input is judged on the ``input`` surface before *any* event
      of the run is passed on (events are held until the decision is in): every message of
      the first ``AgentInput`` (the LLM's input: ``chat_history``, the ``user_msg``, the
      system prompt, an assistant turn the client put in the history), each on its own, and
      the user turns together (a request split over messages). A ``tool`` message in it is
      judged on ``tool_result`` (with ``check_tools``). A message with a block a text guard
      cannot read (an image, audio, a binary document) is blocked with the reason, never
      passed. Each later ``AgentInput`` (the next LLM call) is checked for user and system
      messages not judged yet: a tool that writes a user turn into the agent's memory (a
      human-in-the-loop answer), a memory block or summary the memory inserts, a handoff's
      new system prompt. Its assistant and tool messages are the run's own, judged on their
      surfaces as they were emitted (so is a ReActAgent's ``"Observation: ..."`` user turn,
      a tool result). The record of what was judged lives in this call, not in any message
      field. A blocked input raises with ``stage == "input"`` (``"tool_result"`` for a tool
      message in it) and the reader gets no event of the run. The gated stream's prompt verdict (``StreamGate.prompt_decision``)
      is not the input decision: it comes only when the LLM streams (after the
      ``AgentInput`` event, and never with ``streaming=False``), and it reads the last user
      turn only (the Stream model's query head), so it is not used; it costs no extra model
      call (the Stream model reads the prompt for the answer's context anyway).
    - Each LLM call's ``AgentStream`` events go through the core :class:`qwen3guard.StreamGate`
      (a Stream session opened on the messages of the ``AgentInput`` that started the call, so
      tool results are part of the context): an event is passed on once its text (thinking and
      answer deltas) is settled, so the flagged span is never shown; the event that straddles
      the flag is cut.
    - Tool calls the LLM makes (``AgentStream.tool_calls``, ``AgentOutput.tool_calls``,
      ``ToolCall``) are judged on the ``tool_call`` surface before an event carrying them is
      passed on; tool results (``ToolCallResult``) on the ``tool_result`` surface.
    - An ``AgentOutput`` whose text was not streamed (an agent with ``streaming=False``) is
      judged whole on the ``output`` surface.

    When something is blocked, ``await handler.cancel_run()`` stops the run and
    :class:`~qwen3guard.Qwen3GuardViolation` is raised (its ``decision`` says why); do not use
    the handler's result after it. ``check_tools=False`` leaves tool calls and results to
    :func:`guard_tool`. ``hold_back_tokens`` is deprecated and has no effect (the gate
    holds back exactly the text that is not settled).

    The workflow runs ahead of its event consumer, so a tool may already have run when its
    call is judged here: to keep unsafe tool input or output away from the tool and the LLM,
    guard the tools themselves with :func:`guard_tool`. Likewise the agent's LLM may already
    be reading the input when its decision comes (nothing it produces is shown): to keep an
    unsafe prompt from the LLM too, judge it before ``agent.run`` (``guard.aenforce``).

        handler = agent.run("...")
        async for ev in moderate_agent_stream(handler, guard=guard):
            if isinstance(ev, AgentStream):
                print(ev.delta, end="")
        response = await handler
    """
    check_hold_back(hold_back_tokens=hold_back_tokens)
    run = _AgentRun(resolve_guard(guard), policy, check_tools, check_input=check_input)
    stream = handler.stream_events()
    try:
        async for ev in stream:
            for out in await run.event(ev):
                yield out
            if run.error is not None:
                break
        else:
            for out in await run.end():
                yield out
    finally:
        await run.close()
        await _aclose(stream)
    if run.error is not None:
        await handler.cancel_run(timeout=cancel_timeout)
        log.info("qwen3guard cancelled an agent run: %s", run.error.decision.to_dict())
        raise run.error


#: The name of the instrumentation spans around the agent stream's checks.
SPAN_OWNER = "moderate_agent_stream"


class _Turn:
    """One LLM call's streamed answer: the gate for its text, then a hold for the events that
    carry tool calls (released once the calls are judged, when the call ends)."""

    def __init__(self, gate: StreamGate[AgentStream] | None, span: CheckSpan | None) -> None:
        self.mod: Moderation[AgentStream] = Moderation(self._text_of, self._cut)
        self.mod.opened(gate)
        self.gate = gate
        self.span = span  # the instrumentation span of the gate's check (open while it runs)
        self.response = ""  # ``response`` of the last event released
        self.calls_held: list[Event] = []  # released by the gate, waiting on tool calls
        self.answer = ""  # the answer's text so far (without thinking), as the reader sees it
        self._seen_response = ""  # ``response`` of the last event received
        self._texts: dict[int, str] = {}  # what each event adds to the answer

    def add(self, ev: AgentStream) -> str:
        """Record what ``ev`` adds to the answer the reader sees: its thinking, then its delta;
        or, when its delta is empty, what its ``response`` adds (text can arrive that way)."""
        delta = ev.delta or ""
        response = ev.response or ""
        if not delta and response and response != self._seen_response:
            seen = self._seen_response
            delta = response[len(seen) :] if response.startswith(seen) else response
        if response:
            self._seen_response = response
        self.answer += delta
        text = (ev.thinking_delta or "") + delta
        self._texts[id(ev)] = text
        return self.mod.text(ev)

    def _text_of(self, ev: AgentStream) -> str:
        return self._texts.get(id(ev), "")

    def _cut(self, ev: AgentStream, text: str) -> AgentStream | None:
        thinking = ev.thinking_delta or ""
        shown_thinking = text[: len(thinking)]
        delta = text[len(thinking) :]
        self._texts.pop(id(ev), None)
        return ev.model_copy(
            update={
                "delta": delta,
                "thinking_delta": shown_thinking or None,
                "response": self.response + delta,
                "tool_calls": [],
            }
        )

    def released(self, events: Sequence[AgentStream]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if self.calls_held or ev.tool_calls:
                self.calls_held.append(ev)
            else:
                out.append(ev)
                self.response = ev.response or self.response
        return out

    def tool_calls(self) -> list[Any]:
        for ev in reversed(self.calls_held):  # the last event has the most complete calls
            if isinstance(ev, AgentStream) and ev.tool_calls:
                return list(ev.tool_calls)
        return []


class _AgentRun:
    """The moderation state of one run. ``event`` and ``end`` say what the reader gets;
    ``error`` is set once something is blocked."""

    def __init__(
        self, guard: Qwen3Guard, policy: Policy | None, check_tools: bool, *,
        check_input: bool = True,
    ) -> None:
        self.guard = guard
        self.policy = policy if policy is not None else guard.policy
        self.check_tools = check_tools
        self.check_input = check_input and self.policy.is_enabled(Surface.INPUT)
        # Events held until the run's input is decided (the first AgentInput).
        self.held: list[Event] | None = [] if self.check_input else None
        self.judged_inputs: set[str] = set()  # texts of input messages judged (this run)
        self.user_turns: list[str] = []  # the user turns judged, in order
        self.blocked_input: Any = None  # the content of a blocked input message
        self.tool_outputs: set[str] = set()  # the tool results of the run (their text)
        self.prompt: Messages | None = None
        self.turn: _Turn | None = None
        self.streamed = False  # the current LLM call streamed its text through a gate
        self.streamed_text = ""  # what the gate judged of the last streamed answer
        self.judged_calls: set[str] = set()  # tool ids whose arguments were judged
        self.passed_outputs: list[str] = []  # texts of the AgentOutput events passed on
        self.error: UnsafeContentError | None = None

    async def event(self, ev: Event) -> list[Event]:
        held = self.held
        if held is None:
            return await self._event(ev)
        if not isinstance(ev, AgentInput):
            held.append(ev)  # nothing is passed on before the input is decided
            return []
        self.held = None
        if await self._input_blocked(ev, first=True):
            return []
        out: list[Event] = []
        for early in [*held, ev]:
            out += await self._event(early, input_judged=True)
            if self.error is not None:
                break
        return out

    async def end(self) -> list[Event]:
        """The stream ended: what is still held is passed on (a run that never reached an
        LLM call has no input to judge), then the LLM call being streamed ends."""
        held, self.held = self.held or [], None
        out: list[Event] = []
        for ev in held:
            out += await self._event(ev)
            if self.error is not None:
                return out
        return out + await self.end_turn()

    async def _event(self, ev: Event, *, input_judged: bool = False) -> list[Event]:
        if isinstance(ev, AgentStream):
            return await self._stream(ev)
        out = await self.end_turn()  # any other event ends the LLM call being streamed
        if self.error is not None:
            return out
        if isinstance(ev, AgentInput):
            if self.check_input and not input_judged and await self._input_blocked(ev):
                return out
            self.prompt = _prompt_of(ev.input)
            self.streamed = False
        elif (decision := await self._judge(ev)) is not None and decision.blocked:
            self.error = UnsafeContentError(
                stage=decision.surface, content=_content_of(ev), decision=decision
            )
            return out
        if isinstance(ev, ToolCallResult):
            self.tool_outputs.add(str(ev.tool_output.content))
        if isinstance(ev, AgentOutput):
            self.streamed = False
            if ev.response is not None and ev.response.content:
                self.passed_outputs.append(ev.response.content)
        out.append(ev)
        return out

    async def _stream(self, ev: AgentStream) -> list[Event]:
        if self.turn is None:
            gate: StreamGate[AgentStream] | None = None
            span: CheckSpan | None = None
            if self.policy.is_enabled(Surface.OUTPUT):
                span = CheckSpan(SPAN_OWNER, "stream", detached=True)
                span.enter()
                with span.active():
                    gate = await StreamGate.aopen(self.guard, self.prompt, policy=self.policy)
            self.turn = _Turn(gate, span)
            self.streamed = True
            if self.turn.mod.blocked:
                self.error = self.turn.mod.error()
                return []
        turn = self.turn
        text = turn.add(ev)
        if turn.gate is None or turn.span is None:
            return turn.released([ev])
        with turn.span.active():
            step = await turn.gate.afeed(ev, text)
        out = turn.released(turn.mod.step(step))
        if turn.mod.blocked:
            self.error = turn.mod.error()
        return out

    async def end_turn(self) -> list[Event]:
        turn, self.turn = self.turn, None
        if turn is None:
            return []
        self.streamed_text = turn.answer
        out: list[Event] = []
        try:
            if turn.gate is not None and turn.span is not None and not turn.gate.finished:
                with turn.span.active():
                    step = await turn.gate.afinish()
                out = turn.released(turn.mod.step(step))
                if turn.mod.blocked:
                    self.error = turn.mod.error()
                    return out
        except BaseException as exc:
            if turn.span is not None:
                turn.span.exit(exc)
            raise
        finally:
            if turn.span is not None:
                turn.span.exit()
        calls = turn.tool_calls()
        decision = await self._judge_calls(calls)
        if decision is not None and decision.blocked:
            self.error = UnsafeContentError(
                stage=Surface.TOOL_CALL, content=_calls_text(calls), decision=decision
            )
            return out
        return out + turn.calls_held

    async def close(self) -> None:
        turn = self.turn
        if turn is not None and turn.gate is not None and not turn.gate.finished:
            with contextlib.suppress(Exception):  # freeing is best effort
                if turn.span is not None:
                    with turn.span.active():
                        await turn.gate.aabort()
                else:
                    await turn.gate.aabort()
        if turn is not None and turn.span is not None:
            turn.span.exit()

    # -- the agent's input -----------------------------------------------------------------------

    async def _input_blocked(self, ev: AgentInput, *, first: bool = False) -> bool:
        """Judge ``ev``'s new input messages; when one is blocked, set :attr:`error`."""
        decision = await self._judge_input(ev, first=first)
        if decision is None or not decision.blocked:
            return False
        self.error = UnsafeContentError(
            stage=decision.surface, content=self.blocked_input, decision=decision
        )
        return True

    def _observation(self, text: str) -> bool:
        """A ReActAgent's tool result, which it hands its LLM as a user turn
        (``ObservationReasoningStep.get_content()``: ``"Observation: {output}"``, llama-index-core
        0.14.25 ``agent/react/types.py``; role ``observation_role``, USER by default): the run's
        own, judged on ``tool_result`` when it came (or left to :func:`guard_tool`)."""
        head = "Observation: "
        return text.startswith(head) and text[len(head):] in self.tool_outputs

    async def _judge_input(self, ev: AgentInput, *, first: bool) -> Decision | None:
        """Judge the messages of ``ev`` not judged yet in this run: on the first input all of
        them (each alone as a request; a tool message as a tool result), later only the user
        and system ones. Then the new user turns together, after the last few judged. The
        first blocked decision (its content in :attr:`blocked_input`), else an allow, or None
        when there was nothing new. A message that cannot be read as text blocks."""
        items: list[Item] = []
        texts: list[str] = []
        new_turns: list[str] = []
        for message in ev.input:
            role = _role_of(message)
            if not first and role not in ("user", "system"):
                continue  # the run's own turns, judged on their surfaces as they came
            surface = Surface.TOOL_RESULT if role == "tool" else Surface.INPUT
            if surface is Surface.TOOL_RESULT and not self.check_tools:
                continue
            try:
                text = read_chat_message(message).full_text
            except InvalidInputError as exc:  # a block a text guard cannot read
                error = InvalidInputError(f"a {role} message of the agent's input: {exc}")
                self.blocked_input = getattr(message, "content", None)
                return Decision(False, None, surface, f"cannot be judged: {error}", error=error)
            if not text.strip() or text in self.judged_inputs or self._observation(text):
                continue
            self.judged_inputs.add(text)
            if surface is Surface.TOOL_RESULT:
                items.append((tool_result_conversation(text), surface))
            else:  # each message on its own, as a request (the core's rule for input)
                items.append((user_turn(text), surface))
            texts.append(text)
            if role == "user":
                new_turns.append(text)
        if new_turns:
            # A request split over messages or turns: the new user turns together, after the
            # last few judged before them.
            turns = [*self.user_turns[-_CONTEXT_TURNS:], *new_turns]
            self.user_turns += new_turns
            if len(turns) > 1:
                items.append(([{"role": "user", "content": t} for t in turns], Surface.INPUT))
                texts.append("\n".join(turns))
        decisions = await self._screen(items)
        for text, decision in zip(texts, decisions):
            if decision.blocked:
                self.blocked_input = text
                return decision
        return decisions[0] if decisions else None

    # -- events other than the LLM's stream ---------------------------------------------------

    async def _judge(self, ev: Event) -> Decision | None:
        """The first blocked decision for what ``ev`` shows, else an allow, or None."""
        items: list[Item] = []
        if isinstance(ev, AgentOutput):
            text = ev.response.content if ev.response is not None else None
            if text and text.strip() and not (self.streamed and text.strip() in self.streamed_text):
                items.append((response_turns(self.prompt, text), Surface.OUTPUT))
            if self.check_tools:
                items += self._call_items(ev.tool_calls)
        elif isinstance(ev, StopEvent) and isinstance(getattr(ev, "result", None), AgentOutput):
            # A final answer not streamed as an AgentOutput event (a return_direct tool's).
            text = ev.result.response.content if ev.result.response is not None else None
            if text and text.strip() and text not in self.passed_outputs:
                items.append((response_turns(self.prompt, text), Surface.OUTPUT))
        elif self.check_tools and isinstance(ev, ToolCall):
            items += self._call_items([ev])
        elif self.check_tools and isinstance(ev, ToolCallResult):
            judged = output_messages(ev.tool_output)
            if isinstance(judged, Decision):
                return judged
            if judged is not None:
                items.append((judged, Surface.TOOL_RESULT))
        return await self._first_block(items)

    async def _judge_calls(self, calls: Sequence[Any]) -> Decision | None:
        if not self.check_tools:
            return None
        return await self._first_block(self._call_items(calls))

    def _call_items(self, calls: Sequence[Any]) -> list[Item]:
        items: list[Item] = []
        for call in calls:
            tool_id = getattr(call, "tool_id", None)
            if tool_id and tool_id in self.judged_calls:
                continue
            if tool_id:
                self.judged_calls.add(tool_id)
            msgs = arguments_messages(getattr(call, "tool_name", None), _call_arguments(call))
            if msgs is not None:
                items.append((msgs, Surface.TOOL_CALL))
        return items

    async def _first_block(self, items: list[Item]) -> Decision | None:
        decisions = await self._screen(items)
        return next((d for d in decisions if d.blocked), decisions[0]) if decisions else None

    async def _screen(self, items: list[Item]) -> list[Decision]:
        """One decision per item, judged in one batch inside a check span."""
        if not items:
            return []
        with check_span(SPAN_OWNER):
            return await self.guard.ascreen_batch(items, policy=self.policy)


#: User turns judged before the new ones, judged with them as one request.
_CONTEXT_TURNS = 3


def _role_of(message: Any) -> str:
    """A message's role as the core spells it (an unknown role reads as ``user``: the message
    is then judged, and reading it raises the core's error)."""
    role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
    role = str(getattr(role, "value", role))
    try:
        return canonical_role(_ROLES.get(role, role))
    except InvalidInputError:
        return "user"


def _call_arguments(call: Any) -> Any:
    """A tool call's arguments (``ToolSelection`` / ``ToolCall`` event: ``tool_kwargs``)."""
    return getattr(call, "tool_kwargs", None)


def _calls_text(calls: Sequence[Any]) -> str:
    return "\n".join(
        (arguments_messages(getattr(c, "tool_name", None), _call_arguments(c)) or [{}])[0].get(
            "content", ""
        )
        for c in calls
    )


def _content_of(ev: Any) -> Any:
    if isinstance(ev, ToolCallResult):
        return ev.tool_output.content
    if isinstance(ev, ToolCall):
        return _call_arguments(ev)
    if isinstance(ev, StopEvent):
        ev = getattr(ev, "result", None)
    if isinstance(ev, AgentOutput):
        return ev.response.content if ev.response is not None else None
    return None


def _prompt_of(messages: Any) -> Messages | None:
    """The agent's LLM input as the Stream session's prompt: up to the last user / tool turn."""
    msgs = chat_messages_to_dicts(messages)
    while msgs and msgs[-1]["role"] not in ("user", "tool"):
        msgs.pop()
    return msgs or None


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if callable(aclose):
        with contextlib.suppress(Exception):  # closing is best effort
            await aclose()


__all__ = ["Qwen3GuardViolation", "moderate_agent_stream"]
