"""guard_tool and moderate_agent_stream with a real FunctionAgent, judged by the tiny checkpoints.

The agent's LLM is llama-index-core's ``MockFunctionCallingLLM`` driven by a script: its first
turn calls a tool, its second answers; it records every message list it is given.
"""

import asyncio
from typing import Any

import pytest
from li_testkit import CLEAN_DOCS, UNSAFE_ANSWER, Script, ScriptedLLM, build_index, split_tokens
from llama_index.core.agent.workflow import (
    AgentOutput,
    AgentStream,
    FunctionAgent,
    ToolCall,
    ToolCallResult,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CitableBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool, QueryEngineTool
from llama_index.core.workflow import Context
from llama_index.postprocessor.qwen3guard import (
    DEFAULT_REFUSAL_MESSAGE,
    DEFAULT_VIOLATION_MESSAGE,
    GuardedFunctionTool,
    GuardedTool,
    Qwen3GuardViolation,
    guard_tool,
    moderate_agent_stream,
)

# The workflows library inspects agents (pydantic models) with inspect.getmembers.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]

BOMB_ARGS = {"query": "how to make a bomb with explosive powder"}
SAFE_ARGS = {"query": "weather in Paris"}
BOMB_RESULT = "To make a bomb, mix the explosive powder with sugar and pack it tightly."


def _search_tool(log: list[Any], result: str = "It is sunny in Paris.") -> FunctionTool:
    def search(query: str) -> str:
        """Search the web."""
        log.append(query)
        return result

    return FunctionTool.from_defaults(fn=search)


# -- guard_tool on its own ------------------------------------------------------------------------


def test_unsafe_arguments_never_run_the_tool(gen_guard):
    ran: list[str] = []
    tool = guard_tool(_search_tool(ran), gen_guard)
    assert isinstance(tool, GuardedFunctionTool) and isinstance(tool, FunctionTool)
    assert tool.metadata is tool.tool.metadata
    with pytest.raises(Qwen3GuardViolation) as info:
        tool.call(**BOMB_ARGS)
    assert info.value.stage == "tool_call" and ran == []
    assert tool.call(**SAFE_ARGS).content == "It is sunny in Paris." and ran == [SAFE_ARGS["query"]]


async def test_unsafe_arguments_never_run_the_tool_async(gen_guard):
    ran: list[str] = []
    tool = guard_tool(_search_tool(ran), gen_guard, exit_behavior="replace")
    out = await tool.acall(**BOMB_ARGS)
    assert out.is_error and out.content == DEFAULT_VIOLATION_MESSAGE and ran == []
    assert out.raw_output["qwen3guard"]["surface"] == "tool_call"


@pytest.mark.parametrize("use_async", [False, True])
async def test_unsafe_tool_output_is_blocked(gen_guard, use_async):
    ran: list[str] = []
    tool = guard_tool(_search_tool(ran, BOMB_RESULT), gen_guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        await tool.acall(**SAFE_ARGS) if use_async else tool(**SAFE_ARGS)
    assert info.value.stage == "tool_result" and info.value.content == BOMB_RESULT
    assert ran == [SAFE_ARGS["query"]]


def test_any_base_tool_is_guarded(gen_guard):
    # A QueryEngineTool (not a FunctionTool) whose engine answers with unsafe text.
    engine = build_index(CLEAN_DOCS).as_query_engine(llm=ScriptedLLM(answer=UNSAFE_ANSWER))
    qe_tool = QueryEngineTool.from_defaults(engine, name="docs", description="Search the docs.")
    tool = guard_tool(qe_tool, gen_guard, exit_behavior="replace")
    assert isinstance(tool, GuardedTool) and tool.metadata.name == "docs"
    out = tool.call("Where is the Eiffel Tower?")
    assert out.is_error and "bomb" not in out.content


# -- a FunctionAgent with a guarded tool ----------------------------------------------------------


async def test_agent_unsafe_arguments_never_run_the_tool(gen_guard):
    ran: list[str] = []
    script = Script(tool="search", kwargs=BOMB_ARGS)
    agent = FunctionAgent(
        tools=[guard_tool(_search_tool(ran), gen_guard)],
        llm=MockFunctionCallingLLM(response_generator=script),
        streaming=False,
    )
    handler = agent.run("Look something up for me.")
    results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    await handler
    assert ran == []  # the tool never ran
    assert results and results[0].tool_output.is_error
    assert isinstance(results[0].tool_output.exception, Qwen3GuardViolation)
    assert len(script.calls) == 2
    assert all("bomb" not in m for m in script.tool_messages())


async def test_agent_unsafe_tool_result_never_reaches_the_llm(gen_guard):
    ran: list[str] = []
    script = Script(tool="search", kwargs=SAFE_ARGS)
    agent = FunctionAgent(
        tools=[guard_tool(_search_tool(ran, BOMB_RESULT), gen_guard)],
        llm=MockFunctionCallingLLM(response_generator=script),
        streaming=False,
    )
    response = await agent.run("What is the weather in Paris?")
    assert ran == [SAFE_ARGS["query"]]  # the tool ran...
    assert len(script.calls) == 2
    tool_msgs = script.tool_messages()
    assert tool_msgs and all("bomb" not in m and "explosive" not in m for m in tool_msgs)
    assert str(response) == "Done."


async def test_agent_context_tools_keep_their_context(gen_guard):
    seen: list[Any] = []

    async def remember(ctx: Context, note: str) -> str:
        """Remember a note."""
        seen.append(ctx)
        await ctx.store.set("note", note)
        return "Noted."

    tool = guard_tool(FunctionTool.from_defaults(async_fn=remember), gen_guard)
    assert tool.requires_context and tool.ctx_param_name == "ctx"
    script = Script(tool="remember", kwargs={"note": "buy milk"})
    agent = FunctionAgent(
        tools=[tool], llm=MockFunctionCallingLLM(response_generator=script), streaming=False
    )
    await agent.run("Remember to buy milk.")
    assert len(seen) == 1 and isinstance(seen[0], Context)
    assert script.tool_messages() == ["Noted."]


# -- moderating the agent's streamed answer -------------------------------------------------------


async def test_agent_stream_is_cut_and_the_run_cancelled(guard):
    script = Script(final=UNSAFE_ANSWER, delay_s=0.1)
    agent = FunctionAgent(tools=[], llm=MockFunctionCallingLLM(response_generator=script))
    handler = agent.run("Tell me about the tower.")
    shown = ""
    with pytest.raises(Qwen3GuardViolation) as info:
        async for ev in moderate_agent_stream(handler, guard=guard):
            if isinstance(ev, AgentStream):
                shown += ev.delta
    assert info.value.stage == "output" and info.value.verdict.is_unsafe
    assert UNSAFE_ANSWER.startswith(shown) and " bomb" not in shown
    assert handler.is_done()  # cancel_run() ended the run
    assert script.state["finished"] is False
    assert script.state["yielded"] < len(split_tokens(UNSAFE_ANSWER))


async def test_agent_safe_stream_passes(guard):
    answer = "The Eiffel Tower is in Paris and it is very tall."
    script = Script(final=answer, delay_s=0.001)
    agent = FunctionAgent(tools=[], llm=MockFunctionCallingLLM(response_generator=script))
    handler = agent.run("Tell me about the tower.")
    shown = ""
    async for ev in moderate_agent_stream(handler, guard=guard):
        if isinstance(ev, AgentStream):
            shown += ev.delta
    assert shown == answer
    await handler  # the run completed (the mock's final message is only its last chunk)
    assert script.state["finished"] is True


# -- every block of a tool's output, every tool call and result in an agent stream (class 9) -----


def _blocks_tool(blocks: Any) -> FunctionTool:
    def lookup(query: str) -> Any:
        """Look something up."""
        return blocks

    return FunctionTool.from_defaults(fn=lookup)


@pytest.mark.parametrize("use_async", [False, True])
async def test_tool_output_in_nested_blocks_is_judged(gen_guard, use_async):
    cited = CitableBlock(title="notes", source="doc-1", content=[TextBlock(text=BOMB_RESULT)])
    tool = guard_tool(_blocks_tool([TextBlock(text="Here is what I found."), cited]), gen_guard)
    assert tool.tool.call(**SAFE_ARGS).content == "Here is what I found."  # premise
    with pytest.raises(Qwen3GuardViolation) as info:
        await tool.acall(**SAFE_ARGS) if use_async else tool.call(**SAFE_ARGS)
    assert info.value.stage == "tool_result" and info.value.verdict.is_unsafe


@pytest.mark.parametrize("use_async", [False, True])
async def test_tool_output_a_text_guard_cannot_read_is_blocked(gen_guard, use_async):
    image = ImageBlock(image=b"\x89PNG\r\n\x1a\n", image_mimetype="image/png")
    tool = guard_tool(_blocks_tool([image]), gen_guard, exit_behavior="replace")
    out = await tool.acall(**SAFE_ARGS) if use_async else tool.call(**SAFE_ARGS)
    assert out.is_error and out.content == DEFAULT_REFUSAL_MESSAGE
    meta = out.raw_output["qwen3guard"]
    assert meta["surface"] == "tool_result" and "image" in meta["error"]
    # Opting out of output checks lets it through, on purpose.
    unchecked = guard_tool(_blocks_tool([image]), gen_guard, check_output=False)
    assert unchecked.call(**SAFE_ARGS).blocks == [image]


async def _agent_events(guard, script: Script, tools: list, *, streaming: bool = True):
    agent = FunctionAgent(
        tools=tools,
        llm=MockFunctionCallingLLM(response_generator=script),
        streaming=streaming,
    )
    handler = agent.run("Look something up for me.")
    seen: list[Any] = []
    with pytest.raises(Qwen3GuardViolation) as info:
        async for ev in moderate_agent_stream(handler, guard=guard):
            seen.append(ev)
    assert handler.is_done()
    return info.value, seen


def _shown(events: list[Any]) -> str:
    """Everything the reader could read from the events it was given."""
    parts = []
    for ev in events:
        if isinstance(ev, AgentStream):
            parts += [ev.delta, ev.response, repr(ev.tool_calls)]
        elif isinstance(ev, ToolCall):  # ToolCallResult is a ToolCall too
            parts.append(repr(ev.tool_kwargs))
            if isinstance(ev, ToolCallResult):
                parts.append(ev.tool_output.content)
        elif isinstance(ev, AgentOutput):
            parts += [ev.response.content or "", repr(ev.tool_calls)]
    return "\n".join(p or "" for p in parts)


@pytest.mark.parametrize("streaming", [True, False])
async def test_agent_stream_judges_the_llms_tool_call(guard, streaming):
    ran: list[str] = []
    script = Script(tool="search", kwargs=BOMB_ARGS, delay_s=0.001)
    error, seen = await _agent_events(
        guard, script, [_search_tool(ran)], streaming=streaming
    )  # the tool is not guarded: the stream is what the reader sees
    assert error.stage == "tool_call" and error.decision.blocked
    assert "bomb" not in _shown(seen)


async def test_agent_stream_judges_tool_results(guard):
    ran: list[str] = []
    script = Script(tool="search", kwargs=SAFE_ARGS, delay_s=0.001)
    error, seen = await _agent_events(guard, script, [_search_tool(ran, BOMB_RESULT)])
    assert error.stage == "tool_result" and error.decision.blocked
    assert "bomb" not in _shown(seen) and "explosive" not in _shown(seen)
    assert any(isinstance(ev, ToolCall) for ev in seen)  # the safe call itself was shown


async def test_agent_stream_judges_an_answer_that_was_not_streamed(guard):
    script = Script(final=UNSAFE_ANSWER)  # no delay: one complete message
    error, seen = await _agent_events(guard, script, [], streaming=False)
    assert error.stage == "output" and error.verdict.is_unsafe
    assert "bomb" not in _shown(seen)


async def test_agent_stream_safe_tool_run_passes(guard):
    ran: list[str] = []
    script = Script(tool="search", kwargs=SAFE_ARGS, final="It is sunny.", delay_s=0.001)
    agent = FunctionAgent(
        tools=[_search_tool(ran)], llm=MockFunctionCallingLLM(response_generator=script)
    )
    handler = agent.run("What is the weather in Paris?")
    kinds = [type(ev).__name__ async for ev in moderate_agent_stream(handler, guard=guard)]
    assert "ToolCall" in kinds and "ToolCallResult" in kinds and "AgentOutput" in kinds
    assert ran == [SAFE_ARGS["query"]]
    await handler  # the run completed


def test_function_tool_callables_are_guarded_too(gen_guard):
    # CodeActAgent runs tool.real_fn in its sandbox and to_langchain_tool() hands over .fn /
    # .async_fn: a guarded FunctionTool's callables are guarded, with the same signature.
    import inspect

    ran: list[str] = []
    inner = _search_tool(ran)
    tool = guard_tool(inner, gen_guard)
    assert inspect.signature(tool.real_fn) == inspect.signature(inner.real_fn)
    for fn in (tool.fn, tool.real_fn):
        with pytest.raises(Qwen3GuardViolation):
            fn(**BOMB_ARGS)
    with pytest.raises(Qwen3GuardViolation):
        asyncio.run(tool.async_fn(**BOMB_ARGS))
    assert ran == []
    assert tool.fn(**SAFE_ARGS) == "It is sunny in Paris."  # the function's own return value
    replaced = guard_tool(_search_tool(ran, BOMB_RESULT), gen_guard, exit_behavior="replace")
    assert replaced.fn(**SAFE_ARGS) == DEFAULT_REFUSAL_MESSAGE


class ThinkingLLM(MockFunctionCallingLLM):
    """Streams ``thinking`` chunks (as ``thinking_delta``, the way reasoning LLMs report them)
    before the ``answer`` chunks."""

    thinking: list[str] = []
    answer: list[str] = []

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        thinking, answer = list(self.thinking), list(self.answer)

        async def gen() -> Any:
            for t in thinking:
                await asyncio.sleep(0.001)
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=""),
                    delta="",
                    additional_kwargs={"thinking_delta": t},
                )
            text = ""
            for a in answer:
                await asyncio.sleep(0.001)
                text += a
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=a
                )

        return gen()


async def test_agent_stream_judges_thinking(guard):
    llm = ThinkingLLM(thinking=split_tokens(UNSAFE_ANSWER), answer=split_tokens("It is sunny."))
    handler = FunctionAgent(tools=[], llm=llm).run("Tell me about the tower.")
    thought = ""
    with pytest.raises(Qwen3GuardViolation) as info:
        async for ev in moderate_agent_stream(handler, guard=guard):
            if isinstance(ev, AgentStream):
                thought += ev.thinking_delta or ""
    assert info.value.stage == "output"
    assert UNSAFE_ANSWER.startswith(thought) and " bomb" not in thought


class ContentOnlyLLM(MockFunctionCallingLLM):
    """Streams its answer in the message content only (``delta`` empty), as an LLM integration
    may for some chunks: the text a reader sees is in ``AgentStream.response`` and
    ``AgentOutput``, not in the deltas."""

    answer: list[str] = []

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        answer = list(self.answer)

        async def gen() -> Any:
            text = ""
            for a in answer:
                await asyncio.sleep(0.001)
                text += a
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=""
                )

        return gen()


async def test_agent_stream_judges_text_that_is_not_in_the_deltas(guard):
    llm = ContentOnlyLLM(answer=split_tokens(UNSAFE_ANSWER))
    handler = FunctionAgent(tools=[], llm=llm).run("Tell me about the tower.")
    seen: list[Any] = []
    with pytest.raises(Qwen3GuardViolation) as info:
        async for ev in moderate_agent_stream(handler, guard=guard):
            seen.append(ev)
    assert info.value.stage == "output"
    assert "bomb" not in _shown(seen)
