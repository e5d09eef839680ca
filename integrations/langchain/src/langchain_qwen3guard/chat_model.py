"""``Qwen3GuardChatModel``: a chat model that moderates itself.

    llm = Qwen3GuardChatModel(llm=ChatOpenAI(...), guard=guard)    # or guard_chat_model(...)
    agent = create_agent(llm, tools=[...])

It behaves like the wrapped model, and passes LangChain's standard chat-model tests
(``langchain-tests``; ``tests/test_lc_standard.py``): ``bind_tools`` (a ``RunnableBinding``
of the guarded model carrying the tools as the wrapped model formats them), ``bind``,
streaming, ``invoke`` / ``batch`` and their async forms; ``with_structured_output`` is the
wrapped model's own with the guarded model in its place (the request is judged, and the
structured answer, a JSON text or a tool call, is judged as the answer before the parser
reads it, and the final result once more before it is returned; a structured chain that may
still call the wrapped model elsewhere, e.g. from a fallback, runs outside the caller's
callbacks). Every call judges the prompt and moderates the
answer through a Qwen3Guard-Stream session while it streams, so wherever the model is called
from (a chain, an agent, a LangGraph graph streamed with ``stream_mode="messages"``,
``astream_events``) what leaves it has been moderated: chunks are passed on as soon as the
guard has scored them (see :mod:`langchain_qwen3guard._streaming`), and a flagged answer stops
there with :class:`qwen3guard.Qwen3GuardViolation` (or, with ``exit_behavior="replace"``, one
last chunk carrying the violation message). With ``on_unsafe="regenerate"`` a flagged answer
is rolled back to the start of the flagged sentence and the LLM continues the kept prefix
(the core loop :func:`qwen3guard.stream.intervene.intervene`; see
:mod:`langchain_qwen3guard._regenerate`): the reader gets one clean answer.

The wrapped model runs *outside* LangChain's callbacks: its own raw tokens never reach the
caller's streaming handlers or traces as if they were this model's output; only the moderated
chunks do. (Callbacks attached to the wrapped model itself still fire.) The guard's
configuration is part of the identifying parameters, so LangChain's LLM cache keeps answers
cached under different guards, policies or checks apart (with ``guard=None``: the default
guard's models and policy, resolved by :func:`qwen3guard.get_default_guard`). The model is not LangChain-serializable
(``is_lc_serializable()`` is False): a guard holds loaded weights and is not serialized.
"""

from __future__ import annotations

import json
import operator
import types
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSequence,
    RunnableWithFallbacks,
)
from langchain_core.runnables.passthrough import RunnableAssign
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from qwen3guard import (
    METADATA_KEY,
    Decision,
    Policy,
    Qwen3Guard,
    Surface,
    get_default_guard,
)
from qwen3guard.content import answer_conversation, as_text
from qwen3guard.guard import raise_if_blocked
from qwen3guard.stream.intervene import (
    DEFAULT_BUFFER_TOKENS,
    DEFAULT_INSTRUCTION,
    DEFAULT_MAX_RETRIES,
)

from ._convert import (
    GuardMessage,
    chunk_text,
    format_violation,
    message_content,
    messages_to_guard,
)
from ._regenerate import (
    Continuation,
    RegenerateRules,
    aregenerate_stream,
    regenerate_stream,
    resolve_continuation,
)
from ._streaming import (
    Core,
    Op,
    StreamRules,
    amoderate,
    arun,
    moderate,
    run,
    screen_op,
    screen_prompt,
)

# The wrapped model runs with no LangChain callbacks: an empty list, not None, so that the
# callbacks of an enclosing run (taken from the context) are not inherited either.
_INNER_CONFIG: RunnableConfig = {"callbacks": [], "run_name": "Qwen3GuardInnerLLM"}


class Qwen3GuardChatModel(BaseChatModel):
    """Wrap a chat model so that its prompts are judged and its answers moderated.

    Args:
        llm: the chat model to guard (or a runnable bound from one).
        guard: the :class:`qwen3guard.Qwen3Guard`; ``None`` uses the process-wide default.
        policy: a :class:`qwen3guard.Policy` for this model; ``None`` uses the guard's.
        check_input: judge the prompt (surface ``input``) when the session opens; the wrapped
            model starts at the same time, and nothing it says is passed on before the prompt
            is allowed. A prompt the Stream model cannot take is judged by Gen (in windows).
        check_output: moderate the answer as it streams (surface ``output``: its text and
            reasoning) and judge the tool calls it makes (surface ``tool_call``: a chunk that
            carries tool-call data, and what follows it, is held until the aggregated calls are
            judged).
        exit_behavior: ``"error"`` raises :class:`qwen3guard.Qwen3GuardViolation`;
            ``"replace"`` ends the answer with ``violation_message`` instead;
            ``"regenerate"`` rolls a flagged answer back to the start of the flagged sentence
            and has the LLM continue it (at most ``max_retries`` times, then the answer ends
            with ``violation_message``); a blocked prompt or tool call is answered with
            ``violation_message``. ``on_unsafe`` is another name for it.
        buffer_tokens: with ``"regenerate"``, how many judged tokens the released text stays
            behind the moderation head (so a flag lands while its sentence is unreleased).
        max_retries: with ``"regenerate"``, how many continuations are asked for at most.
        instruction: with ``"regenerate"``, the corrective instruction (a template with
            ``{categories}`` and ``{kept}``, the kept prefix).
        continuation: with ``"regenerate"``, how the LLM continues the kept prefix:
            ``"prefill"`` (the prompt plus an ``AIMessage`` holding it), ``"instruction"`` (the
            prompt plus a user message with ``instruction``; the answers are spliced) or
            ``"auto"`` (prefill where the model is known to support it: Anthropic's chat
            models).
        hold_back_tokens: deprecated, no effect: what is held back is decided by the core
            :class:`qwen3guard.StreamGate` (only text the session has settled is passed on).
            ``holdback_tokens`` is its older (deprecated) name.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Runnable[Any, Any]
    guard: Qwen3Guard | None = Field(default=None, exclude=True)
    policy: Policy | None = Field(default=None, exclude=True)
    check_input: bool = True
    check_output: bool = True
    exit_behavior: Literal["error", "replace", "regenerate"] = "error"
    violation_message: str | None = None
    hold_back_tokens: int = 1
    buffer_tokens: int = Field(default=DEFAULT_BUFFER_TOKENS, ge=0)
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    instruction: str = DEFAULT_INSTRUCTION
    continuation: Continuation = "auto"
    # set on the copy that with_structured_output puts in the wrapped model's place: a tool
    # call it makes is the structured answer (judged as the answer, surface output)
    _structured: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return on_unsafe_alias(renamed_hold_back(data))

    @property
    def on_unsafe(self) -> str:
        """Another name of :attr:`exit_behavior`."""
        return self.exit_behavior

    @property
    def holdback_tokens(self) -> int:
        """Deprecated name of :attr:`hold_back_tokens`."""
        return self.hold_back_tokens

    @model_validator(mode="after")
    def _inherit_profile(self) -> Qwen3GuardChatModel:
        inner = _base_model(self.llm)
        if self.profile is None and inner is not None and inner.profile is not None:
            object.__setattr__(self, "profile", inner.profile)
        return self

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    @property
    def _llm_type(self) -> str:
        return "qwen3guard-chat-model"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """The wrapped model's, and how it is guarded: part of the key of LangChain's LLM
        cache (an answer cached under one guard configuration is not served under another)
        and of the traced invocation parameters."""
        inner = _base_model(self.llm)
        return {
            "guarded": dict(getattr(inner, "_identifying_params", {}) or {}),
            "guarded_type": getattr(inner, "_llm_type", type(self.llm).__name__),
            "guard": self._guard_params(),
        }

    def _guard_params(self) -> dict[str, Any]:
        # with no guard given, the default guard (resolved: built from the environment on first
        # use, or the one set_default_guard installed) is named by its models and policy too,
        # so a persistent cache does not share answers across default-guard configurations
        guard = self.guard if self.guard is not None else get_default_guard()
        policy = self.policy if self.policy is not None else guard.policy
        return {
            "gen": _model_id(guard.gen),
            "stream": _model_id(guard.stream),
            "default_guard": self.guard is None,
            "policy": repr(policy),
            "check_input": self.check_input,
            "check_output": self.check_output,
            "exit_behavior": self.exit_behavior,
            "violation_message": self.violation_message,
        }

    @property
    def model_name(self) -> str | None:
        """The wrapped model's name (some integrations choose features by it)."""
        inner = _base_model(self.llm)
        for attr in ("model_name", "model", "model_id"):
            value = getattr(inner, attr, None)
            if isinstance(value, str):
                return value
        return None

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        inner = _base_model(self.llm)
        if inner is not None:
            try:
                params = inner._get_ls_params(stop=stop, **kwargs)
            except Exception:  # noqa: BLE001 - tracing metadata only
                return super()._get_ls_params(stop=stop, **kwargs)
            return params
        return super()._get_ls_params(stop=stop, **kwargs)

    # -- passing through ------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """The wrapped model's ``bind_tools``, still guarded: like every chat model's, a
        ``RunnableBinding`` of this model carrying the tools as the wrapped model formats
        them (``kwargs["tools"]``, which LangGraph's ``create_react_agent`` reads:
        ``_should_bind_tools`` in langgraph/prebuilt/chat_agent_executor.py, langgraph-prebuilt
        1.1.3); they are passed on to the wrapped model at each call."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        base: Any = self.llm
        while isinstance(base, RunnableBinding):
            base = base.bound
        if not hasattr(base, "bind_tools"):
            raise NotImplementedError(f"{type(base).__name__} has no bind_tools()")
        bound = base.bind_tools(tools, **kwargs)
        if isinstance(bound, RunnableBinding) and bound.bound is base and not bound.config:
            return self.bind(**bound.kwargs)
        # a bind_tools that returns something else (a model copy, a chain): guard that
        if self.llm is not base and isinstance(self.llm, RunnableBinding):
            bound = bound.bind(**self.llm.kwargs)
        return self.model_copy(update={"llm": bound}).bind()

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        """The wrapped model's own ``with_structured_output`` (native JSON modes keep
        working) with this guarded model in place of the wrapped one: the caller's callbacks
        see this model's run (with ``ls_structured_output_format``), the wrapped model runs
        outside them, and the output parser reads only what the guard has judged. The
        request is judged (surface ``input``), a JSON answer is moderated as it streams, and
        a structured output given as a tool call is judged as the answer (surface
        ``output``). A blocked request or result raises
        :class:`qwen3guard.Qwen3GuardViolation` (a structured result cannot be replaced).

        A structured runnable is not streamed piecewise. Where the wrapped model's structured
        runnable may still call the wrapped model after the swap (it holds a lambda, a
        fallback or a runnable the swap does not know, see :func:`_may_call_a_model`), the
        original runs outside the caller's callbacks, between a check of the request and a
        check of the final result (its JSON, surface ``output``)."""
        inner: Any = _base_model(self.llm) or self.llm
        if not hasattr(inner, "with_structured_output"):
            raise NotImplementedError(f"{type(inner).__name__} has no with_structured_output()")
        structured = inner.with_structured_output(schema, include_raw=include_raw, **kwargs)
        judge = self.model_copy(update={"exit_behavior": "error"})
        judge._structured = True
        swapped = _swap_model(structured, inner, judge)
        if swapped is not None and not _may_call_a_model(swapped):
            guarded = _GuardedStructured(guarded=self, structured=swapped, visible=True)
        else:
            # the wrapped model may still be called from somewhere the swap cannot see (a
            # lambda, a fallback, an unknown runnable): it all runs outside the caller's
            # callbacks, and only the judged result comes out
            guarded = _GuardedStructured(guarded=self, structured=structured)
        return guarded.with_config(run_name="Qwen3GuardStructuredOutput")

    # -- generation -----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from langchain_core.language_models.chat_models import generate_from_stream

        return generate_from_stream(self._stream(messages, stop=stop, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from langchain_core.language_models.chat_models import agenerate_from_stream

        return await agenerate_from_stream(self._astream(messages, stop=stop, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self._regenerates:
            yield from regenerate_stream(
                lambda request: self._inner_call(request, stop, kwargs), messages,
                self._regenerate_rules(messages),
            )
            return
        rules = self._rules(messages)
        source = self._inner_stream(messages, stop, kwargs)
        yield from moderate(source, rules, answer=self.check_output)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self._regenerates:
            async for chunk in aregenerate_stream(
                lambda request: self._inner_acall(request, stop, kwargs), messages,
                self._regenerate_rules(messages),
            ):
                yield chunk
            return
        rules = self._rules(messages)
        source = self._inner_astream(messages, stop, kwargs)
        async for chunk in amoderate(source, rules, answer=self.check_output):
            yield chunk

    # -- internals ------------------------------------------------------------------------------

    def _inner_stream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        if stop is not None:
            kwargs = {**kwargs, "stop": stop}
        for chunk in self.llm.stream(messages, config=_INNER_CONFIG.copy(), **kwargs):
            yield _as_generation_chunk(chunk)

    async def _inner_astream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[ChatGenerationChunk]:
        if stop is not None:
            kwargs = {**kwargs, "stop": stop}
        async for chunk in self.llm.astream(messages, config=_INNER_CONFIG.copy(), **kwargs):
            yield _as_generation_chunk(chunk)

    def _inner_call(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[Any]:
        """One try of the wrapped model (closing the iterator closes its stream)."""
        if stop is not None:
            kwargs = {**kwargs, "stop": stop}
        return self.llm.stream(messages, config=_INNER_CONFIG.copy(), **kwargs)

    def _inner_acall(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        if stop is not None:
            kwargs = {**kwargs, "stop": stop}
        return self.llm.astream(messages, config=_INNER_CONFIG.copy(), **kwargs)

    @property
    def _regenerates(self) -> bool:
        return self.exit_behavior == "regenerate" and self.check_output

    def _regenerate_rules(self, messages: list[BaseMessage]) -> RegenerateRules:
        conversation = messages_to_guard(messages)
        guard = self.guard if self.guard is not None else get_default_guard()
        return RegenerateRules(
            guard=guard,
            policy=self.policy if self.policy is not None else guard.policy,
            prompt=_session_prompt(conversation),
            prompt_text=_last_text(conversation),
            check_prompt=self.check_input,
            mode=resolve_continuation(self.llm, self.continuation),
            refusal=lambda decision: format_violation(self.violation_message, decision),
            to_chunk=_as_generation_chunk,
            buffer_tokens=self.buffer_tokens,
            max_retries=self.max_retries,
            instruction=self.instruction,
        )

    def _rules(self, messages: list[BaseMessage]) -> StreamRules:
        # Every text of the prompt is read now: a shape the guard cannot read raises
        # InvalidInputError before the wrapped model is called.
        conversation = messages_to_guard(messages)
        guard = self.guard if self.guard is not None else get_default_guard()
        return StreamRules(
            guard=guard,
            policy=self.policy if self.policy is not None else guard.policy,
            on_block=self._blocked,
            text_of=_chunk_text,
            cut=_cut,
            message_of=_structured_message_of if self._structured else _message_of,
            prompt=_session_prompt(conversation),
            check_prompt=self.check_input,
            prompt_text=_last_text(conversation),
        )

    def _blocked(self, decision: Decision, content: str) -> list[ChatGenerationChunk]:
        if self.exit_behavior == "error":
            raise_if_blocked(decision, content)
        text = format_violation(self.violation_message, decision)
        meta = {METADATA_KEY: decision.to_dict()}
        return [
            ChatGenerationChunk(
                message=AIMessageChunk(content=text, response_metadata=meta), generation_info=meta
            )
        ]


def renamed_hold_back(data: Any) -> Any:
    """``holdback_tokens=`` (the name the README of 0.1 used) as ``hold_back_tokens``; both
    are deprecated and have no effect (the core gate decides what is held back)."""
    if isinstance(data, dict) and "holdback_tokens" in data:
        data = dict(data)
        value = data.pop("holdback_tokens")
        data.setdefault("hold_back_tokens", value)
        if value != 1:
            warnings.warn(
                "holdback_tokens is deprecated and has no effect: only text the guard has "
                "settled is passed on (qwen3guard.StreamGate)",
                DeprecationWarning,
                stacklevel=4,
            )
    return data


def on_unsafe_alias(data: Any) -> Any:
    """``on_unsafe=`` as ``exit_behavior`` (the name the other integrations use)."""
    if isinstance(data, dict) and "on_unsafe" in data:
        data = dict(data)
        value = data.pop("on_unsafe")
        if value is not None:
            if data.get("exit_behavior", value) != value:
                raise ValueError(f"on_unsafe={value!r} and exit_behavior="
                                 f"{data['exit_behavior']!r} disagree: give one of them")
            data["exit_behavior"] = value
    return data


class _GuardedStructured(Runnable[Any, Any]):
    """request check -> the wrapped model's structured output -> result check.

    ``visible``: ``structured`` is the wrapped model's chain with the guarded model swapped in
    (and nothing left that may call a model unguarded): it runs inside the caller's callbacks
    (a child run of this one), and the guarded model in it judges the request and the answer
    the result is parsed from; the two checks here are for the other case."""

    def __init__(
        self, guarded: Qwen3GuardChatModel, structured: Runnable[Any, Any], *,
        visible: bool = False,
    ) -> None:
        self.guarded = guarded
        self.structured = structured
        self.visible = visible

    def _core(self, input: Any, config: RunnableConfig | None, kwargs: dict[str, Any]) -> Core[Any]:
        g = self.guarded
        guard = g.guard if g.guard is not None else get_default_guard()
        conv = messages_to_guard(g._convert_input(input).to_messages())
        if g.check_input and conv and not self.visible:
            decision = yield from screen_prompt(guard, _session_prompt(conv), g.policy)
            raise_if_blocked(decision, _last_text(conv))
        # the wrapped model's raw answer does not reach the caller's callbacks unjudged
        inner_config: RunnableConfig = (
            config or {} if self.visible else {**(config or {}), **_INNER_CONFIG}
        )
        result = yield Op(self.structured.invoke, self.structured.ainvoke, input, inner_config,
                          **kwargs)
        # visible: the guarded model in the chain judged the answer the result is parsed from
        # (and nothing else in the chain can call a model), so judging it again is work twice
        if g.check_output and not self.visible:
            text = structured_text(result)
            answer = answer_conversation(conv, text)
            decision = yield screen_op(guard, answer, Surface.OUTPUT, g.policy)
            raise_if_blocked(decision, text)
        return result

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if not self.visible:
            return run(self._core(input, config, kwargs))

        def call(value: Any, run_manager: Any, config: RunnableConfig) -> Any:
            return run(self._core(value, config, kwargs))

        return self._call_with_config(call, input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if not self.visible:
            return await arun(self._core(input, config, kwargs))

        async def call(value: Any, run_manager: Any, config: RunnableConfig) -> Any:
            return await arun(self._core(value, config, kwargs))

        return await self._acall_with_config(call, input, config)


def guard_chat_model(
    llm: Runnable[Any, Any], guard: Qwen3Guard | None = None, **kwargs: Any
) -> Qwen3GuardChatModel:
    """``Qwen3GuardChatModel(llm=llm, guard=guard, **kwargs)``."""
    return Qwen3GuardChatModel(llm=llm, guard=guard, **kwargs)


# -- helpers ----------------------------------------------------------------------------------


def _base_model(llm: Any) -> BaseChatModel | None:
    while isinstance(llm, RunnableBinding):
        llm = llm.bound
    if isinstance(llm, Qwen3GuardChatModel):
        return _base_model(llm.llm)
    return llm if isinstance(llm, BaseChatModel) else None


def _as_generation_chunk(chunk: Any) -> ChatGenerationChunk:
    if isinstance(chunk, ChatGenerationChunk):
        return chunk
    if isinstance(chunk, AIMessageChunk):
        return ChatGenerationChunk(message=chunk)
    if isinstance(chunk, AIMessage):
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=chunk.content,
                id=chunk.id,
                additional_kwargs=chunk.additional_kwargs,
                response_metadata=chunk.response_metadata,
                tool_call_chunks=[
                    {
                        "name": tc["name"],
                        "args": json.dumps(tc["args"]),
                        "id": tc.get("id"),
                        "index": i,
                        "type": "tool_call_chunk",
                    }
                    for i, tc in enumerate(chunk.tool_calls)
                ],
                usage_metadata=chunk.usage_metadata,
            )
        )
    if isinstance(chunk, str):
        return ChatGenerationChunk(message=AIMessageChunk(content=chunk))
    raise TypeError(f"the guarded model streamed a {type(chunk).__name__}, not a message chunk")


def _chunk_text(chunk: ChatGenerationChunk) -> str:
    return chunk_text(chunk.message)


def _message_of(chunk: ChatGenerationChunk) -> BaseMessage:
    return chunk.message


def _model_id(backend: Any) -> str | None:
    """A guard backend's model name or path (``model_id`` / ``model``), or its type; for a
    served model, ``@`` and where it is served (``base_url`` / ``url``)."""
    if backend is None:
        return None
    name = type(backend).__name__
    for attr in ("model_id", "model", "model_name"):
        value = getattr(backend, attr, None)
        if isinstance(value, str):
            name = value
            break
    for attr in ("base_url", "url"):
        value = getattr(backend, attr, None)
        if isinstance(value, str):
            return f"{name}@{value}"
    return name


def _structured_message_of(chunk: ChatGenerationChunk) -> BaseMessage:
    """A chunk of a structured answer: the arguments of a tool call it streams are the
    structured output (``additional_kwargs["parsed"]``, judged as the answer once the stream
    has ended), not a call of a tool."""
    message = chunk.message
    calls = list(getattr(message, "tool_call_chunks", None) or [])
    parsed = "".join(str(c.get("args") or "") for c in calls)
    if not calls:
        parsed = "".join(json.dumps(c["args"]) for c in getattr(message, "tool_calls", []))
    parsed += "".join(str(c.get("args") or "") for c in
                      getattr(message, "invalid_tool_calls", None) or [])
    extra = dict(message.additional_kwargs)
    function_call = extra.pop("function_call", None)
    if isinstance(function_call, dict):
        parsed += str(function_call.get("arguments") or "")
    extra.pop("tool_calls", None)
    if not parsed and extra == message.additional_kwargs:
        return message
    if parsed:
        extra["parsed"] = parsed
    return AIMessageChunk(content=message.content, additional_kwargs=extra, id=message.id)


def _swap_model(runnable: Any, model: Any, guarded: Qwen3GuardChatModel) -> Any:
    """``runnable`` (a structured-output chain of the wrapped ``model``) with ``guarded`` in
    ``model``'s place, keeping what was bound to it; None where ``model`` is not found."""
    if runnable is model:
        return guarded
    if isinstance(runnable, RunnableBinding):
        if runnable.bound is model:
            swapped: Runnable[Any, Any] = guarded.bind(**runnable.kwargs)
            return swapped.with_config(runnable.config) if runnable.config else swapped
        inner = _swap_model(runnable.bound, model, guarded)
        return None if inner is None else runnable.model_copy(update={"bound": inner})
    if isinstance(runnable, RunnableSequence):
        steps = [_swap_model(step, model, guarded) for step in runnable.steps]
        if all(step is None for step in steps):
            return None
        new = [n if n is not None else old for n, old in zip(steps, runnable.steps)]
        return RunnableSequence(*new, name=runnable.name)
    if isinstance(runnable, RunnableParallel):
        branches = {k: _swap_model(v, model, guarded) for k, v in runnable.steps__.items()}
        if all(v is None for v in branches.values()):
            return None
        return RunnableParallel(
            {k: v if v is not None else runnable.steps__[k] for k, v in branches.items()}
        )
    if isinstance(runnable, RunnableAssign):
        mapper = _swap_model(runnable.mapper, model, guarded)
        return None if mapper is None else RunnableAssign(mapper)
    return None


_INERT = (type(None), bool, int, float, complex, str, bytes, type, types.ModuleType,
          types.BuiltinFunctionType, operator.itemgetter, operator.attrgetter)


def _may_call_a_model(runnable: Any) -> bool:
    """Whether running ``runnable`` (a structured-output chain after the swap) may call a
    model other than a guarded one. Only what can be seen through is taken as harmless: a
    ``Qwen3GuardChatModel``, LangChain core's output parsers, bindings, sequences, maps,
    assigns, fallbacks, passthroughs and lambdas whose functions reach nothing but inert
    values (see :func:`_opaque_function`). Anything else (another model, a lambda closing
    over a model, a runnable this does not know) may."""
    if isinstance(runnable, Qwen3GuardChatModel):
        return False
    if isinstance(runnable, RunnableBinding):
        return _may_call_a_model(runnable.bound)
    if isinstance(runnable, RunnableSequence):
        return any(_may_call_a_model(step) for step in runnable.steps)
    if isinstance(runnable, RunnableParallel):
        return any(_may_call_a_model(step) for step in runnable.steps__.values())
    if isinstance(runnable, RunnableAssign):
        return _may_call_a_model(runnable.mapper)
    if isinstance(runnable, RunnableWithFallbacks):
        return any(_may_call_a_model(r) for r in [runnable.runnable, *runnable.fallbacks])
    if isinstance(runnable, RunnablePassthrough):
        return _opaque_function(runnable.func) or _opaque_function(runnable.afunc)
    if isinstance(runnable, RunnableLambda):
        return _opaque_function(runnable.func) or _opaque_function(
            getattr(runnable, "afunc", None))
    if isinstance(runnable, BaseOutputParser):
        return not type(runnable).__module__.startswith("langchain_core.output_parsers")
    return True


def _opaque_function(func: Any, depth: int = 0) -> bool:
    """Whether ``func`` may reach something that could call a model: anything but no function,
    an inert value, or a plain function whose closure cells and the globals it names are
    inert values or such functions (a bound method, a partial, a callable object, a closure
    over a model: opaque)."""
    if func is None or isinstance(func, _INERT):
        return False
    if not isinstance(func, types.FunctionType) or depth > 3:
        return True
    values = [c.cell_contents for c in func.__closure__ or () if _filled(c)]
    names: set[str] = set()
    codes = [func.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    values += [func.__globals__[n] for n in names if n in func.__globals__]
    return any(_opaque_function(v, depth + 1) for v in values)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _cut(chunk: ChatGenerationChunk, text: str) -> ChatGenerationChunk:
    """The chunk's text before a flagged span, without its other data."""
    return ChatGenerationChunk(message=AIMessageChunk(content=text, id=chunk.message.id))


def _session_prompt(conversation: list[GuardMessage]) -> list[GuardMessage] | None:
    """The conversation a Stream session is opened with: the model's input, its last turn
    judged as the request (a trailing assistant or system turn is what the model continues
    from); None when there is none."""
    conv = list(conversation)
    if conv and conv[-1]["role"] in ("assistant", "system"):
        conv[-1] = {"role": "user", "content": conv[-1]["content"]}
    return conv or None


def _last_text(conversation: list[GuardMessage]) -> str:
    return conversation[-1]["content"] if conversation else ""


def structured_text(result: Any) -> str:
    """The text of a structured output, as the LLM emitted it: a parsed object as JSON, a raw
    message with everything it holds (tool calls included)."""
    if isinstance(result, dict) and "parsed" in result and "raw" in result:
        parts = []
        if result.get("parsed") is not None:
            parts.append(structured_text(result["parsed"]))
        if result.get("raw") is not None:
            parts.append(structured_text(result["raw"]))
        return "\n".join(p for p in parts if p.strip())
    if isinstance(result, BaseMessage):
        return message_content(result).full_text
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return as_text(result)


