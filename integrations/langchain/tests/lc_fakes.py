"""Test doubles for the LLM side only (the guard is always the real tiny checkpoints).

``ScriptedChatModel`` is a real ``BaseChatModel``: it answers from a script (text and/or tool
calls), streams its text word by word (like ``GenericFakeChatModel``) followed by its tool
calls as tool-call chunks, supports ``bind_tools`` and records every conversation it was
called with, so tests can check what the model saw. For each stream it also records how many
chunks it produced (``produced``) and whether the stream was closed before its end
(``closed``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

SAFE_ANSWER = "It is sunny and warm today, a good day for a walk in the park."
UNSAFE_ANSWER = (
    "Sure, here is what to do. First get some explosive powder, then put it in a pipe "
    "to make a bomb, and add a fuse at the end."
)
UNSAFE_WORDS = ("explosive", "bomb", "hack", "steal")


def words(text: str) -> list[str]:
    """How ``GenericFakeChatModel`` / ``ScriptedChatModel`` cut a text into chunks."""
    return [t for t in re.split(r"(\s)", text) if t]


def first_unsafe_chunk(chunks: Sequence[str]) -> int:
    """Index of the first chunk that contains an unsafe word."""
    for i, c in enumerate(chunks):
        if any(w in c.lower() for w in UNSAFE_WORDS):
            return i
    raise AssertionError("no unsafe word in the answer")


class ScriptedChatModel(BaseChatModel):
    """Answers with the next scripted message (a string or an ``AIMessage`` with tool calls);
    the last one repeats."""

    script: list[Any]
    delay: float = 0.0  # seconds per streamed chunk
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _pos: list[int] = PrivateAttr(default_factory=lambda: [0])
    _produced: list[int] = PrivateAttr(default_factory=list)
    _closed: list[bool] = PrivateAttr(default_factory=list)
    bound_tools: list[Any] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-chat-model"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """Every conversation the model was called with, in order."""
        return self._calls

    @property
    def produced(self) -> list[int]:
        """How many chunks each stream produced, in order of the calls."""
        return self._produced

    @property
    def closed(self) -> list[bool]:
        """Whether each stream was closed by its reader before it had ended."""
        return self._closed

    def _opened(self) -> int:
        self._produced.append(0)
        self._closed.append(False)
        return len(self._produced) - 1

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        self.bound_tools[:] = list(tools)
        return self

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        self._calls.append(list(messages))
        i = min(self._pos[0], len(self.script) - 1)
        self._pos[0] += 1
        item = self.script[i]
        return AIMessage(content=item) if isinstance(item, str) else item.model_copy()

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    def _chunks(self, message: AIMessage) -> Iterator[ChatGenerationChunk]:
        """Text word by word; each content block of a list content as its own chunk; the
        ``additional_kwargs`` in one chunk; tool calls, then invalid tool calls, as
        tool-call chunks (an invalid call's raw arguments as streamed)."""
        if isinstance(message.content, str):
            for w in words(message.content):
                yield ChatGenerationChunk(message=AIMessageChunk(content=w))
        else:
            for i, block in enumerate(message.content):
                part = {**block, "index": i} if isinstance(block, dict) else block
                yield ChatGenerationChunk(message=AIMessageChunk(content=[part]))
        if message.additional_kwargs:
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", additional_kwargs=message.additional_kwargs)
            )
        calls = [(tc["name"], json.dumps(tc["args"]), tc["id"]) for tc in message.tool_calls]
        calls += [(tc.get("name"), tc.get("args"), tc.get("id")) for tc in message.invalid_tool_calls]
        for i, (name, args, call_id) in enumerate(calls):
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        {
                            "name": name,
                            "args": args,
                            "id": call_id,
                            "index": i,
                            "type": "tool_call_chunk",
                        }
                    ],
                )
            )

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        k = self._opened()
        try:
            for chunk in self._chunks(self._next(messages)):
                if self.delay:
                    time.sleep(self.delay)
                self._produced[k] += 1
                yield chunk
        except GeneratorExit:
            self._closed[k] = True
            raise

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        k = self._opened()
        try:
            for chunk in self._chunks(self._next(messages)):
                if self.delay:
                    await asyncio.sleep(self.delay)
                self._produced[k] += 1
                yield chunk
        except GeneratorExit:
            self._closed[k] = True
            raise


class TokenRecorder(BaseCallbackHandler):
    """Records every ``on_llm_new_token`` (with its run) and the chat model runs started."""

    def __init__(self) -> None:
        self.tokens: list[tuple[Any, str]] = []
        self.chat_runs: list[tuple[Any, str | None]] = []

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: Any, **kwargs: Any
    ) -> None:
        self.chat_runs.append((run_id, kwargs.get("name")))

    def on_llm_new_token(self, token: str, *, run_id: Any, **kwargs: Any) -> None:
        self.tokens.append((run_id, token))


def tool_call(name: str, args: dict[str, Any], call_id: str = "call_1") -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}]
    )
