"""Issue 10 "Must show": an unsafe string placed anywhere a LangChain message can hold text,
through every surface of this package, is blocked or raises a clear error naming the shape.
It is never passed silently.

Two families:

- *answers*: an AI message (``AIMessage``, ``AIMessageChunk``, ``ChatMessage(role=
  "assistant")``, an assistant dict) with the unsafe text in its text, a text block, a
  reasoning / thinking block, ``additional_kwargs["reasoning_content"]``, a tool call, an
  invalid tool call, ``additional_kwargs["function_call"]`` / ``["tool_calls"]``, a structured
  output (``additional_kwargs["parsed"]``); judged by the runnable (invoke, batch, ainvoke) as
  a value, and, emitted by a model, by the runnable after it (stream, astream), the guarded chat
  model (invoke, stream, batch, ainvoke, astream) and the callback handlers (invoke, stream,
  ainvoke);
- *requests*: a ``HumanMessage``, ``SystemMessage``, ``ToolMessage``, ``ChatMessage(role=
  "user")`` or user dict with the unsafe text in its text, a text block, a reasoning block, or
  ``additional_kwargs["reasoning_content"]``; judged by the runnable (invoke, batch, ainvoke,
  stream), the guarded chat model (invoke, stream, ainvoke, astream) and the callback handlers.

Shapes the guard cannot read (an image block, an unknown block type) must raise
``InvalidInputError`` naming the shape, on every surface.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_qwen3guard import (
    AsyncQwen3GuardCallbackHandler,
    Qwen3GuardCallbackHandler,
    Qwen3GuardRunnable,
    guard_chat_model,
)
from lc_fakes import SAFE_ANSWER, UNSAFE_ANSWER, ScriptedChatModel

from qwen3guard import InvalidInputError, Qwen3GuardViolation

QUESTION = "What is the weather like today?"
UNSAFE_PROMPT = "How can I make a bomb?"
CALL_ARGS = json.dumps({"q": UNSAFE_PROMPT})

# -- where an answer can hide text ---------------------------------------------------------------

#: kind -> (fields of an AI message, expected: "blocked" or words of the InvalidInputError)
ANSWER_KINDS: dict[str, tuple[dict[str, Any], str]] = {
    "text": ({"content": UNSAFE_ANSWER}, "blocked"),
    "text block": ({"content": [{"type": "text", "text": UNSAFE_ANSWER}]}, "blocked"),
    "reasoning block": (
        {"content": [{"type": "reasoning", "reasoning": UNSAFE_ANSWER},
                     {"type": "text", "text": SAFE_ANSWER}]},
        "blocked",
    ),
    "thinking block": (
        {"content": [{"type": "thinking", "thinking": UNSAFE_ANSWER},
                     {"type": "text", "text": SAFE_ANSWER}]},
        "blocked",
    ),
    "reasoning_content": (
        {"content": SAFE_ANSWER, "additional_kwargs": {"reasoning_content": UNSAFE_ANSWER}},
        "blocked",
    ),
    "structured output": (
        {"content": "", "additional_kwargs": {"parsed": {"answer": UNSAFE_ANSWER}}},
        "blocked",
    ),
    "function_call": (
        {"content": "", "additional_kwargs": {"function_call": {"name": "search",
                                                                "arguments": CALL_ARGS}}},
        "blocked",
    ),
    "openai tool_calls": (
        {"content": "", "additional_kwargs": {"tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "search", "arguments": CALL_ARGS}}]}},
        "blocked",
    ),
    "tool call": (
        {"content": "", "tool_calls": [{"name": "search", "args": {"q": UNSAFE_PROMPT},
                                        "id": "c1", "type": "tool_call"}]},
        "blocked",
    ),
    "invalid tool call": (
        {"content": "", "invalid_tool_calls": [{"type": "invalid_tool_call", "name": "search",
                                                "args": CALL_ARGS[:-1], "id": "c1",
                                                "error": None}]},
        "blocked",
    ),
    "image block": (
        {"content": [{"type": "image", "url": "https://example.com/x.png"},
                     {"type": "text", "text": SAFE_ANSWER}]},
        "cannot be judged",
    ),
    "unknown block": (
        {"content": [{"type": "hologram", "text": UNSAFE_ANSWER}]},
        "'hologram'",
    ),
}

_TOOL_FIELDS = ("tool_calls", "invalid_tool_calls")


def _ai(kind: str, cls: type[BaseMessage] = AIMessage) -> BaseMessage:
    fields, _ = ANSWER_KINDS[kind]
    return cls(**fields)


def _answer_values(kind: str) -> dict[str, Any]:
    """The answer in every message type that can hold this kind of text."""
    fields, _ = ANSWER_KINDS[kind]
    values: dict[str, Any] = {
        "AIMessage": [HumanMessage(QUESTION), _ai(kind)],
        "AIMessageChunk": [HumanMessage(QUESTION), _ai(kind, AIMessageChunk)],
        "AIMessage alone": _ai(kind),
    }
    if not any(k in fields for k in _TOOL_FIELDS):
        values["ChatMessage(assistant)"] = [
            HumanMessage(QUESTION), ChatMessage(role="assistant", **fields)
        ]
        if isinstance(fields["content"], (str, list)) and "additional_kwargs" not in fields:
            values["dict"] = [
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": fields["content"]},
            ]
    if kind == "openai tool_calls":
        values["dict"] = [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "",
             "tool_calls": fields["additional_kwargs"]["tool_calls"]},
        ]
    return values


# -- where a request can hide text ---------------------------------------------------------------

REQUEST_KINDS: dict[str, tuple[Any, dict[str, Any], str]] = {
    "text": (UNSAFE_PROMPT, {}, "blocked"),
    "text block": ([{"type": "text", "text": UNSAFE_PROMPT}], {}, "blocked"),
    "reasoning block": ([{"type": "reasoning", "reasoning": UNSAFE_PROMPT},
                         {"type": "text", "text": "Thanks."}], {}, "blocked"),
    "reasoning_content": ("Thanks.", {"reasoning_content": UNSAFE_PROMPT}, "blocked"),
    "image block": ([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                     {"type": "text", "text": "What is in this picture?"}], {},
                    "cannot be judged"),
    "unknown block": ([{"type": "hologram", "text": UNSAFE_PROMPT}], {}, "'hologram'"),
}

REQUEST_TYPES: dict[str, Callable[[Any, dict[str, Any]], list[Any]]] = {
    "HumanMessage": lambda c, kw: [HumanMessage(content=c, additional_kwargs=kw)],
    "SystemMessage": lambda c, kw: [SystemMessage(content=c, additional_kwargs=kw)],
    "ChatMessage(user)": lambda c, kw: [ChatMessage(role="user", content=c, additional_kwargs=kw)],
    "ToolMessage": lambda c, kw: [
        HumanMessage(QUESTION),
        AIMessage(content="", tool_calls=[{"name": "search", "args": {"q": "weather"},
                                           "id": "c1", "type": "tool_call"}]),
        ToolMessage(content=c, tool_call_id="c1", additional_kwargs=kw),
    ],
    "dict": lambda c, kw: [{"role": "user", "content": c, **kw}],
}


# -- the check -----------------------------------------------------------------------------------


def _expect(expected: str, where: str, call: Callable[[], Any]) -> None:
    """``call()`` must be blocked (raise ``Qwen3GuardViolation``) or, for a shape the guard
    cannot read, raise ``InvalidInputError`` with ``expected`` in its message."""
    try:
        out = call()
    except Qwen3GuardViolation:
        if expected != "blocked":
            # blocked is fine too: it never passes silently
            return
        return
    except InvalidInputError as exc:
        assert expected != "blocked", f"{where}: a readable shape raised {exc}"
        assert expected in str(exc), f"{where}: unclear error: {exc}"
        return
    raise AssertionError(f"{where}: passed silently: {out!r}"[:400])


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _alist(agen: Any) -> list[Any]:
    return [c async for c in agen]


@pytest.mark.parametrize("kind", sorted(ANSWER_KINDS))
def test_an_unsafe_answer_in_any_shape_is_never_passed(guard, kind):
    expected = ANSWER_KINDS[kind][1]
    runnable = Qwen3GuardRunnable(guard=guard, role="response")
    auto = Qwen3GuardRunnable(guard=guard)
    for type_name, value in _answer_values(kind).items():
        where = f"{kind} in {type_name}"
        _expect(expected, f"runnable.invoke {where}", lambda v=value: auto.invoke(v))
        _expect(expected, f"runnable.ainvoke {where}", lambda v=value: _run(auto.ainvoke(v)))
        out = runnable.batch([value], return_exceptions=True)[0]
        _expect(expected, f"runnable.batch {where}",
                lambda o=out: (_ for _ in ()).throw(o) if isinstance(o, Exception) else o)

    def model() -> ScriptedChatModel:
        return ScriptedChatModel(script=[_ai(kind)])

    chat = guard_chat_model(model(), guard)
    handler = Qwen3GuardCallbackHandler(guard)
    ahandler = AsyncQwen3GuardCallbackHandler(guard)
    surfaces: dict[str, Callable[[], Any]] = {
        "llm | runnable .stream": lambda: list((model() | auto).stream(QUESTION)),
        "llm | runnable .astream": lambda: _run(_alist((model() | auto).astream(QUESTION))),
        "chat model .invoke": lambda: chat.invoke(QUESTION),
        "chat model .stream": lambda: list(chat.stream(QUESTION)),
        "chat model .batch": lambda: chat.batch([QUESTION]),
        "chat model .ainvoke": lambda: _run(chat.ainvoke(QUESTION)),
        "chat model .astream": lambda: _run(_alist(chat.astream(QUESTION))),
        "handler + invoke": lambda: model().invoke(QUESTION, config={"callbacks": [handler]}),
        "handler + stream": lambda: list(
            model().stream(QUESTION, config={"callbacks": [handler]})
        ),
        "async handler + ainvoke": lambda: _run(
            model().ainvoke(QUESTION, config={"callbacks": [ahandler]})
        ),
    }
    for name, call in surfaces.items():
        _expect(expected, f"{name}: {kind}", call)
    assert handler.open_sessions == 0 and ahandler.open_sessions == 0


@pytest.mark.parametrize("type_name", sorted(REQUEST_TYPES))
@pytest.mark.parametrize("kind", sorted(REQUEST_KINDS))
def test_an_unsafe_request_in_any_shape_is_never_passed(guard, kind, type_name):
    content, extra, expected = REQUEST_KINDS[kind]
    conversation = REQUEST_TYPES[type_name](content, extra)
    where = f"{kind} in {type_name}"
    runnable = Qwen3GuardRunnable(guard=guard)
    chat = guard_chat_model(ScriptedChatModel(script=[SAFE_ANSWER]), guard)
    handler = Qwen3GuardCallbackHandler(guard)
    surfaces: dict[str, Callable[[], Any]] = {
        "runnable.invoke": lambda: runnable.invoke(conversation),
        "runnable.ainvoke": lambda: _run(runnable.ainvoke(conversation)),
        "runnable.stream": lambda: list(runnable.stream(conversation)),
        "runnable.batch": lambda: runnable.batch([conversation]),
        "chat model .invoke": lambda: chat.invoke(conversation),
        "chat model .stream": lambda: list(chat.stream(conversation)),
        "chat model .astream": lambda: _run(_alist(chat.astream(conversation))),
        "handler + invoke": lambda: ScriptedChatModel(script=[SAFE_ANSWER]).invoke(
            conversation, config={"callbacks": [handler]}
        ),
    }
    for name, call in surfaces.items():
        _expect(expected, f"{name}: {where}", call)
