"""Class 5 (issue 10): ``guard_tool`` judges what a tool returns in a LangGraph ``Command``
(the messages of its update and any other text in it), and documents why artifacts are not
judged (they do not reach the LLM)."""

from __future__ import annotations

from typing import Annotated

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.tools import InjectedToolCallId, tool
from langchain_qwen3guard import guard_tool
from langgraph.types import Command
from lc_agent_fakes import COMMAND_UPDATES as UPDATES
from lc_agent_fakes import UNSAFE_TEXT, has_unsafe

from qwen3guard import Qwen3GuardViolation

CALL = {"type": "tool_call", "name": "lookup", "id": "c1", "args": {"query": "weather"}}


def commander(update_of):
    @tool
    def lookup(query: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Look something up and update the conversation."""
        return Command(update=update_of(tool_call_id))

    return lookup




@pytest.mark.parametrize("name", list(UPDATES))
def test_command_update_is_judged(gen_guard, name):
    guarded = guard_tool(commander(UPDATES[name]), gen_guard)
    with pytest.raises(Qwen3GuardViolation) as info:
        guarded.invoke(CALL)
    assert info.value.stage == "tool_result"


@pytest.mark.parametrize("name", list(UPDATES))
async def test_command_update_is_judged_async(gen_guard, name):
    guarded = guard_tool(commander(UPDATES[name]), gen_guard)
    with pytest.raises(Qwen3GuardViolation):
        await guarded.ainvoke(CALL)


def test_command_update_replaced(gen_guard):
    guarded = guard_tool(
        commander(UPDATES["tool-message"]),
        gen_guard,
        exit_behavior="replace",
        violation_message="[blocked {stage}]",
    )
    out = guarded.invoke(CALL)
    assert not has_unsafe(str(out))
    assert isinstance(out, ToolMessage) and out.content == "[blocked tool result]"
    assert out.tool_call_id == "c1"


def test_safe_command_passes_unchanged(gen_guard):
    def safe(i):
        return {"messages": [ToolMessage("It is sunny and warm today.", tool_call_id=i)]}

    out = guard_tool(commander(safe), gen_guard).invoke(CALL)
    assert isinstance(out, Command)
    assert out.update["messages"][0].content == "It is sunny and warm today."


def test_artifact_is_kept_and_never_sent_to_the_model(gen_guard):
    """Artifacts are not judged: they are for the application, and LangChain does not send
    ``ToolMessage.artifact`` to a model (``convert_to_openai_messages``, langchain-core 1.8.3,
    keeps ``content`` only). When the content is blocked, the artifact is dropped with it."""

    @tool(response_format="content_and_artifact")
    def lookup(query: str) -> tuple[str, dict[str, str]]:
        """Look something up."""
        if "cake" in query:
            return UNSAFE_TEXT, {"raw": "x"}
        return "It is sunny and warm today.", {"raw": UNSAFE_TEXT}

    msg = guard_tool(lookup, gen_guard).invoke(CALL)
    assert msg.artifact == {"raw": UNSAFE_TEXT}
    assert not has_unsafe(str(convert_to_openai_messages([msg])))
    replaced = guard_tool(lookup, gen_guard, exit_behavior="replace").invoke(
        {**CALL, "args": {"query": "cake"}}
    )
    assert not has_unsafe(replaced.content) and replaced.artifact is None
