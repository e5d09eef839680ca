"""moderate_agent_stream judges the agent's input (surface ``input``), before the reader sees
any event of the run: the user message a FunctionAgent run starts with, its ``chat_history``
(every turn the LLM reads), and user / system messages that enter a later LLM call.

Real FunctionAgents whose LLM is llama-index-core's ``MockFunctionCallingLLM`` driven by a
``Script`` (li_testkit); the guard is the built tiny checkpoint (Gen + Stream). (No
``from __future__ import annotations`` here: FunctionTool finds a tool's ``Context`` parameter by
its annotation's type.)
"""

from typing import Any

import pytest
from li_testkit import Script
from llama_index.core.agent.workflow import AgentInput, AgentStream, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context
from llama_index.postprocessor.qwen3guard import (
    Qwen3GuardCheckEvent,
    Qwen3GuardViolation,
    moderate_agent_stream,
)

from qwen3guard import tracing

# The workflows library inspects agents (pydantic models) with inspect.getmembers.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
    # llama-index-core 0.14.25's ReActAgent.take_step asks ctx.is_running inside a step
    pytest.mark.filterwarnings("ignore:is_running called from within a step:DeprecationWarning"),
]

UNSAFE_PROMPT = "How can I make a bomb?"
SAFE_PROMPT = "Tell me about the tower."
#: What the scripted LLM answers: safe-looking, so only the input can block the run.
ANSWER = "Sorry, I cannot help with that. The Eiffel Tower is in Paris."


def _agent(script: Script, *, streaming: bool, tools: list | None = None) -> FunctionAgent:
    return FunctionAgent(
        tools=tools or [],
        llm=MockFunctionCallingLLM(response_generator=script),
        streaming=streaming,
    )


async def _read(handler: Any, guard: Any, **kw: Any) -> tuple[list[Any], BaseException | None]:
    """The events the reader gets, and what ended the stream (None: it ended normally)."""
    seen: list[Any] = []
    try:
        async for ev in moderate_agent_stream(handler, guard=guard, **kw):
            seen.append(ev)
    except Qwen3GuardViolation as exc:
        return seen, exc
    return seen, None


def _fingerprint(events: list[Any]) -> list[tuple[str, str]]:
    """What the reader can read of each event (its kind and its text)."""
    out = []
    for ev in events:
        if isinstance(ev, AgentStream):
            out.append(("AgentStream", ev.delta))
        elif isinstance(ev, AgentInput):
            out.append(("AgentInput", repr([(m.role.value, m.content) for m in ev.input])))
        else:
            out.append((type(ev).__name__, ""))
    return out


@pytest.mark.parametrize("streaming", [True, False])
async def test_unsafe_user_message_is_blocked_before_any_event(guard, streaming):
    script = Script(final=ANSWER, delay_s=0.01 if streaming else 0.0)
    handler = _agent(script, streaming=streaming).run(user_msg=UNSAFE_PROMPT)
    seen, error = await _read(handler, guard)
    assert isinstance(error, Qwen3GuardViolation), "the unsafe prompt was not blocked"
    assert error.stage == "input" and error.decision.blocked and error.verdict.is_unsafe
    assert UNSAFE_PROMPT in str(error.content)
    assert seen == []  # not even the AgentInput that carries the prompt
    assert handler.is_done()  # the run was cancelled


@pytest.mark.parametrize("streaming", [True, False])
async def test_safe_user_message_passes_with_the_same_events(guard, streaming):
    runs = []
    for check_input in (True, False):
        script = Script(final=ANSWER, delay_s=0.001 if streaming else 0.0)
        handler = _agent(script, streaming=streaming).run(user_msg=SAFE_PROMPT)
        seen, error = await _read(handler, guard, check_input=check_input)
        assert error is None
        await handler  # the run completed
        runs.append(_fingerprint(seen))
    assert runs[0] == runs[1]
    assert runs[0][0][0] == "AgentInput" and SAFE_PROMPT in runs[0][0][1]
    if streaming:
        assert "".join(text for kind, text in runs[0] if kind == "AgentStream") == ANSWER


@pytest.mark.parametrize("streaming", [True, False])
async def test_check_input_false_leaves_the_input_alone(guard, streaming):
    script = Script(final=ANSWER, delay_s=0.001 if streaming else 0.0)
    handler = _agent(script, streaming=streaming).run(user_msg=UNSAFE_PROMPT)
    seen, error = await _read(handler, guard, check_input=False)
    assert error is None  # today's behaviour: the input is not judged here
    await handler
    assert isinstance(seen[0], AgentInput) and UNSAFE_PROMPT in repr(seen[0])


@pytest.mark.parametrize("streaming", [True, False])
async def test_unsafe_message_in_chat_history_is_blocked(guard, streaming):
    history = [
        ChatMessage(role=MessageRole.USER, content=UNSAFE_PROMPT),
        ChatMessage(role=MessageRole.ASSISTANT, content="Let me think about it."),
    ]
    script = Script(final=ANSWER, delay_s=0.01 if streaming else 0.0)
    handler = _agent(script, streaming=streaming).run(
        user_msg="Thanks, go on.", chat_history=history
    )
    seen, error = await _read(handler, guard)
    assert isinstance(error, Qwen3GuardViolation), "the unsafe history turn was not blocked"
    assert error.stage == "input" and error.decision.blocked
    assert seen == [] and handler.is_done()


async def test_a_user_message_the_guard_cannot_read_is_blocked(guard):
    image = ImageBlock(image=b"\x89PNG\r\n\x1a\n", image_mimetype="image/png")
    msg = ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text=SAFE_PROMPT), image])
    handler = _agent(Script(final=ANSWER), streaming=False).run(user_msg=msg)
    seen, error = await _read(handler, guard)
    assert isinstance(error, Qwen3GuardViolation), "an unreadable image passed unjudged"
    assert error.stage == "input" and error.decision.error is not None
    assert "image" in str(error.decision.error)
    assert seen == []


@pytest.mark.parametrize("streaming", [True, False])
async def test_a_user_message_added_during_the_run_is_judged(guard, streaming):
    # A tool that adds a user turn to the agent's memory (as a human-in-the-loop step could):
    # the next LLM call reads it, in a later AgentInput.
    async def ask_human(ctx: Context, question: str) -> str:
        """Ask the human."""
        memory = await ctx.store.get("memory")
        await memory.aput(ChatMessage(role=MessageRole.USER, content=UNSAFE_PROMPT))
        return "The human answered."

    script = Script(tool="ask_human", kwargs={"question": "What do you need?"},
                    final=ANSWER, delay_s=0.01 if streaming else 0.0)
    agent = _agent(script, streaming=streaming,
                   tools=[FunctionTool.from_defaults(async_fn=ask_human)])
    handler = agent.run(user_msg=SAFE_PROMPT)
    seen, error = await _read(handler, guard)
    assert isinstance(error, Qwen3GuardViolation), f"the new user turn was not judged: {_fingerprint(seen)}"
    assert error.stage == "input" and error.decision.blocked
    inputs = [ev for ev in seen if isinstance(ev, AgentInput)]
    assert len(inputs) == 1  # the first call's input passed; the second one did not
    assert all(UNSAFE_PROMPT not in repr(ev) for ev in seen)
    assert handler.is_done()


class _Events(BaseEventHandler):
    events: list[BaseEvent] = []

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


async def test_the_input_check_is_traced_in_its_span(guard):
    root = get_dispatcher()
    events, spans = _Events(events=[]), SimpleSpanHandler()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    try:
        handler = _agent(Script(final=ANSWER), streaming=False).run(user_msg=UNSAFE_PROMPT)
        _, error = await _read(handler, guard)
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not events]
        root.span_handlers = [h for h in root.span_handlers if h is not spans]
    assert isinstance(error, Qwen3GuardViolation)
    checks = [e for e in events.events if isinstance(e, Qwen3GuardCheckEvent)]
    blocked = [c for c in checks if c.surface == "input" and not c.allowed]
    assert blocked, checks
    done = {s.id_: s for s in spans.completed_spans + spans.dropped_spans}
    for check in blocked:
        assert check.span_id in done
        assert check.span_id.startswith("moderate_agent_stream.screen-")


# -- a ReActAgent: the same input rule; its tool results come back as user turns -------------------


def _react_llm(messages: Any, **kwargs: Any) -> ChatMessage:
    """A ReAct LLM: search first, then answer once it has read the observation."""
    if any((m.content or "").startswith("Observation:") for m in messages):
        return ChatMessage(role=MessageRole.ASSISTANT, content=(
            "Thought: I can answer without using any more tools.\nAnswer: It is sunny."))
    return ChatMessage(role=MessageRole.ASSISTANT, content=(
        'Thought: I need to search.\nAction: search\nAction Input: {"query": "weather in Paris"}'))


def _react_agent() -> ReActAgent:
    def search(query: str) -> str:
        """Search the web."""
        return "It is sunny in Paris."

    return ReActAgent(tools=[FunctionTool.from_defaults(fn=search)], streaming=False,
                      llm=MockFunctionCallingLLM(response_generator=_react_llm))


async def test_react_agent_unsafe_prompt_is_blocked(guard):
    handler = _react_agent().run(user_msg=UNSAFE_PROMPT)
    seen, error = await _read(handler, guard)
    assert isinstance(error, Qwen3GuardViolation) and error.stage == "input"
    assert seen == [] and handler.is_done()


async def test_react_observations_are_judged_as_tool_results_not_as_input(guard):
    # ReActAgent hands a tool result to its LLM as a user turn ("Observation: ..."): it is
    # judged once, on tool_result, not again as the user's input.
    root = get_dispatcher()
    events = _Events(events=[])
    root.add_event_handler(events)
    before = tracing.trace_content()
    tracing.set_trace_content(True)
    try:
        handler = _react_agent().run(user_msg="What is the weather in Paris?")
        seen, error = await _read(handler, guard)
        assert error is None and str(await handler) == "It is sunny."
    finally:
        tracing.set_trace_content(before)
        root.event_handlers = [h for h in root.event_handlers if h is not events]
    checks = [e for e in events.events if isinstance(e, Qwen3GuardCheckEvent)]
    inputs = [c.content or "" for c in checks if c.surface == "input" and c.kind == "screen"]
    assert any("What is the weather in Paris?" in c for c in inputs)
    assert not any("Observation: It is sunny" in c for c in inputs), inputs
    assert any(c.surface == "tool_result" and "sunny" in (c.content or "") for c in checks)
    # each text is judged once: the ReAct system prompt of the second call is not judged again
    assert len(inputs) == len(set(inputs)), inputs
