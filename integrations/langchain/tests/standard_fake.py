"""A deterministic tool-calling chat model for LangChain's standard tests (the *guarded* model;
the guard is the real built checkpoint).

``ChatStandardFake`` behaves like a provider's chat model as far as ``langchain-tests``
(1.1.9) looks: it streams its answer word by word with the last chunk marked
``chunk_position="last"`` and carrying the usage metadata and ``model_name``; ``bind_tools``
binds OpenAI-format tools and ``tool_choice``; with tools bound (and a human turn last) it
calls one tool, its arguments streamed as ``tool_call_chunks`` in pieces and filled from the
tool's JSON schema and the prompt (integers: the first number in the prompt; strings: the
first quoted text, else the prompt); ``with_structured_output`` supports the
``function_calling``, ``json_schema`` and ``json_mode`` methods (the last two answer JSON
text); ``stop`` cuts the answer; a ``model=`` call argument overrides the model name.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    UsageMetadata,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

ANSWER = "Hello! I am a small test model, and I am glad to help you with your question today."


def _words(text: str) -> list[str]:
    return [t for t in re.split(r"(\s)", text) if t]


def _last_human(messages: Sequence[BaseMessage]) -> str:
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            return str(m.text)
    return ""


def _value(schema: dict[str, Any], prompt: str) -> Any:
    kind = schema.get("type")
    if kind is None and "anyOf" in schema:
        kinds = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _value(kinds[0], prompt) if kinds else None
    if kind in ("integer", "number"):
        found = re.search(r"-?\d+", prompt)
        return int(found.group()) if found else 0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return _args(schema, prompt)
    quoted = re.search(r"'([^']+)'", prompt)
    return quoted.group(1) if quoted else prompt


def _args(schema: dict[str, Any], prompt: str) -> dict[str, Any]:
    props = schema.get("properties") or {}
    return {name: _value(sub, prompt) for name, sub in props.items()}


class ChatStandardFake(BaseChatModel):
    """See the module docstring."""

    model: str = "standard-fake-1"
    temperature: float | None = None
    max_tokens: int | None = None

    @property
    def _llm_type(self) -> str:
        return "standard-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: str = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_schema", "json_mode"):
            raise ValueError(f"unknown method {method!r}")
        json_schema = convert_to_json_schema(schema)
        response_format: dict[str, Any] = (
            {"type": "json_object"} if method == "json_mode"
            else {"type": "json_schema", "json_schema": {"schema": json_schema, "strict": strict}}
        )
        llm = self.bind(
            response_format=response_format,
            fake_schema=json_schema,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema)
            if isinstance(schema, type) and is_basemodel_subclass(schema)
            else JsonOutputParser()
        )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser)
        return RunnableMap(raw=llm) | parsed

    # -- answering ------------------------------------------------------------------------------

    def _answer(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        prompt = _last_human(messages)
        tools = kwargs.get("tools") or []
        choice = kwargs.get("tool_choice")
        if tools and choice != "none" and not isinstance(messages[-1], ToolMessage):
            fn = tools[0]["function"]
            if isinstance(choice, str) and choice not in ("any", "auto", "required"):
                fn = next(t["function"] for t in tools if t["function"]["name"] == choice)
            elif isinstance(choice, dict):
                name = choice.get("function", {}).get("name", choice.get("name"))
                fn = next(t["function"] for t in tools if t["function"]["name"] == name)
            args = _args(fn.get("parameters") or {}, prompt)
            return AIMessage(content="", tool_calls=[
                {"name": fn["name"], "args": args, "id": f"call_{len(messages)}",
                 "type": "tool_call"}
            ])
        if kwargs.get("fake_schema") is not None:
            return AIMessage(content=json.dumps(_args(kwargs["fake_schema"], prompt)))
        return AIMessage(content=ANSWER)

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[AIMessageChunk]:
        answer = self._answer(messages, kwargs)
        text = str(answer.content)
        for s in stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        chunks = [AIMessageChunk(content=w) for w in _words(text)]
        for call in answer.tool_calls:
            raw = json.dumps(call["args"], ensure_ascii=False)
            half = len(raw) // 2
            chunks.append(AIMessageChunk(content="", tool_call_chunks=[
                {"name": call["name"], "args": raw[:half], "id": call["id"], "index": 0,
                 "type": "tool_call_chunk"}]))
            chunks.append(AIMessageChunk(content="", tool_call_chunks=[
                {"name": None, "args": raw[half:], "id": None, "index": 0,
                 "type": "tool_call_chunk"}]))
        n_in = sum(len(m.text.split()) for m in messages)
        n_out = len(text.split()) + len(answer.tool_calls)
        chunks.append(AIMessageChunk(
            content="",
            chunk_position="last",
            usage_metadata=UsageMetadata(input_tokens=n_in, output_tokens=n_out,
                                         total_tokens=n_in + n_out,
                                         input_token_details={}, output_token_details={}),
            response_metadata={"model_name": kwargs.get("model", self.model),
                               "finish_reason": "tool_calls" if answer.tool_calls else "stop"},
        ))
        return chunks

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from langchain_core.language_models.chat_models import generate_from_stream

        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            yield ChatGenerationChunk(message=chunk)
