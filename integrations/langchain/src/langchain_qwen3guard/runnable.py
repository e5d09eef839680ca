"""``Qwen3GuardRunnable``: a guard step for either side of a chain.

    chain = Qwen3GuardRunnable() | prompt | llm              # checks what goes in
    chain = prompt | llm | Qwen3GuardRunnable()              # checks what comes out
    for chunk in chain.stream({"question": q}): ...          # moderated chunk by chunk

Allowed content passes through unchanged (the same object). Blocked content raises
:class:`qwen3guard.Qwen3GuardViolation` (``stage``, ``verdict``, ``content``), or with
``exit_behavior="replace"`` is replaced by the violation message in the same shape
(a string, a message of the same type, a prompt value, the same dict with the key replaced).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.prompt_values import ChatPromptValue, PromptValue, StringPromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config
from pydantic import ConfigDict, Field, model_validator

from qwen3guard import (
    METADATA_KEY,
    Decision,
    Policy,
    Qwen3Guard,
    Surface,
    get_default_guard,
)
from qwen3guard.content import answer_conversation, items_to_judge
from qwen3guard.guard import raise_if_blocked

from ._convert import (
    GuardMessage,
    chunk_text,
    format_violation,
    message_content,
    messages_to_guard,
    role_of_message,
    to_messages,
)
from ._streaming import Core, StreamRules, amoderate, arun, moderate, run, screen_batch_op
from .chat_model import renamed_hold_back

RoleOption = Literal["auto", "prompt", "response"]

#: ``config["configurable"]`` key: the prompt an answer is judged against (a string or a
#: list of messages) when the runnable cannot see it.
PROMPT_CONFIG_KEY = "qwen3guard_prompt"

_MISSING = object()


Item = tuple[list[GuardMessage], Surface]


@dataclass
class _Target:
    """What to judge in one input (``(conversation, surface)`` items: an answer's text on
    ``output``, each of its tool calls on ``tool_call``; a request on ``input``), and how to
    rebuild the input with a replacement text."""

    items: list[Item]
    surface: Surface
    text: str
    replace: Callable[[str, Decision], Any]


class Qwen3GuardRunnable(RunnableSerializable[Any, Any]):
    """Judge what flows through a chain with Qwen3Guard.

    Args:
        guard: the :class:`qwen3guard.Qwen3Guard` to use; ``None`` uses the process-wide
            default (``qwen3guard.get_default_guard()``, built from the environment on first
            use).
        policy: a :class:`qwen3guard.Policy` for this step; ``None`` uses the guard's.
        role: ``"prompt"`` judges the input as a user request (surface ``input``);
            ``"response"`` judges it as an answer (surface ``output``); ``"auto"`` decides
            from the value: an AI message (or chunk), or a conversation that ends with one,
            is a response; a string, a prompt value, a human message or a conversation
            ending with one is a prompt. A *stream* of strings (more than one chunk) is a
            response; pass ``role="response"`` to judge a single string as an answer.
        exit_behavior: ``"error"`` raises :class:`qwen3guard.Qwen3GuardViolation`;
            ``"replace"`` returns ``violation_message`` in the input's shape (when
            streaming: the chunks already passed on stay passed on, and one last chunk
            carries the message).
        violation_message: template of the replacement text; may use ``{stage}``,
            ``{categories}``, ``{risk}``, ``{reason}``.
        input_key / output_key: for dict values: the key holding the prompt / the answer.
            With both set, ``role="auto"`` judges ``output_key`` as an answer to
            ``input_key`` when the dict has it, else ``input_key`` as a prompt.
        hold_back_tokens: deprecated, no effect (``holdback_tokens``: its older name): the
            core :class:`qwen3guard.StreamGate` passes on only text the session has settled.

    What is judged: every text of the value (:mod:`qwen3guard.content`): text, reasoning /
    thinking blocks, and for an answer each tool call (well-formed, invalid, or in
    ``additional_kwargs``) on the surface ``tool_call``. A content block the guard cannot
    read (an image, an unknown type) raises :class:`qwen3guard.InvalidInputError`.

    The prompt of an answer: a response is judged in the light of its question when the
    runnable can see it: the earlier turns of a message list, ``input_key`` of a dict, or
    ``config["configurable"]["qwen3guard_prompt"]`` (a string or messages). In
    ``prompt | llm | Qwen3GuardRunnable()`` the LLM's output does not carry its prompt, so
    the answer is judged on its own (with no prompt) unless the prompt is passed that way.

    Streaming (``stream`` / ``astream`` / inside a streamed chain): an answer is fed chunk by
    chunk to a Qwen3Guard-Stream session and each chunk is passed on, unchanged and in
    order, as soon as the core gate has settled its text; when the answer is flagged the
    stream stops there (the text before the flagged span is passed on cut). Tool-call chunks
    are held until the aggregated tool calls have been judged. A prompt is never streamed: it
    is judged whole.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str | None = "Qwen3Guard"
    guard: Qwen3Guard | None = Field(default=None, exclude=True)
    policy: Policy | None = Field(default=None, exclude=True)
    role: RoleOption = "auto"
    exit_behavior: Literal["error", "replace"] = "error"
    violation_message: str | None = None
    input_key: str | None = None
    output_key: str | None = None
    hold_back_tokens: int = 1

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return renamed_hold_back(data)

    @property
    def holdback_tokens(self) -> int:
        """Deprecated name of :attr:`hold_back_tokens`."""
        return self.hold_back_tokens

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return Any

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return Any

    # -- invoke ---------------------------------------------------------------------------------

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke_run, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke_run, input, config, **kwargs)

    def _invoke_run(
        self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        return self._invoke(input, config)

    async def _ainvoke_run(
        self, input: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        return await self._ainvoke(input, config)

    def _guard(self) -> Qwen3Guard:
        return self.guard if self.guard is not None else get_default_guard()

    def _judge(self, targets: Sequence[_Target]) -> Core[list[Decision]]:
        """One decision per target, from one batched guard call over all their items."""
        items = [item for t in targets for item in t.items]
        decisions: list[Decision] = []
        if items:
            decisions = yield screen_batch_op(self._guard(), items, self.policy)
        out: list[Decision] = []
        pos = 0
        for t in targets:
            mine = decisions[pos : pos + len(t.items)]
            pos += len(t.items)
            out.append(_worst(mine, t.surface))
        return out

    def _invoke(self, input: Any, config: RunnableConfig) -> Any:
        target = self._target(input, config)
        (decision,) = run(self._judge([target]))
        return self._outcome(input, target, decision)

    async def _ainvoke(self, input: Any, config: RunnableConfig) -> Any:
        target = self._target(input, config)
        (decision,) = await arun(self._judge([target]))
        return self._outcome(input, target, decision)

    def _outcome(self, input: Any, target: _Target, decision: Decision) -> Any:
        if decision.allowed:
            return input
        if self.exit_behavior == "replace":
            return target.replace(format_violation(self.violation_message, decision), decision)
        raise_if_blocked(decision, target.text)
        return input

    # -- batch ----------------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Judge all inputs in one batched guard call (``Qwen3Guard.screen_batch``)."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def _plan_batch(
        self, inputs: list[Any], configs: list[RunnableConfig]
    ) -> tuple[list[_Target | Exception], list[int]]:
        targets: list[_Target | Exception] = []
        for value, cfg in zip(inputs, configs):
            try:
                targets.append(self._target(value, cfg))
            except Exception as exc:  # noqa: BLE001 - reported per item
                targets.append(exc)
        todo = [i for i, t in enumerate(targets) if isinstance(t, _Target)]
        return targets, todo

    def _finish_batch(
        self,
        inputs: list[Any],
        targets: list[_Target | Exception],
        todo: list[int],
        decisions: list[Decision],
    ) -> list[Any]:
        out: list[Any] = list(targets)
        for i, decision in zip(todo, decisions):
            target = targets[i]
            assert isinstance(target, _Target)
            try:
                out[i] = self._outcome(inputs[i], target, decision)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    def _batch(
        self,
        inputs: list[Any],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        targets, todo = self._plan_batch(inputs, config)
        judged = [t for t in targets if isinstance(t, _Target)]
        decisions = run(self._judge(judged))
        return self._finish_batch(inputs, targets, todo, decisions)

    async def _abatch(
        self,
        inputs: list[Any],
        run_manager: list[AsyncCallbackManagerForChainRun],
        config: list[RunnableConfig],
    ) -> list[Any]:
        targets, todo = self._plan_batch(inputs, config)
        judged = [t for t in targets if isinstance(t, _Target)]
        decisions = await arun(self._judge(judged))
        return self._finish_batch(inputs, targets, todo, decisions)

    # -- streaming ------------------------------------------------------------------------------

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(
            input, self._atransform, config, **kwargs
        ):
            yield chunk

    def _transform(
        self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[Any]:
        first = next(chunks, _MISSING)
        if first is _MISSING:
            return
        head = [first]
        streamed = self._streams(first)
        if streamed is None:  # undecided: a stream of several chunks is an answer
            second = next(chunks, _MISSING)
            if second is not _MISSING:
                head.append(second)
            streamed = second is not _MISSING
        source = itertools.chain(head, chunks)
        if not streamed:
            yield self._invoke(_merge(source), config)
            return
        yield from moderate(source, self._rules(first, config))

    async def _atransform(
        self,
        chunks: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[Any]:
        it = chunks.__aiter__()
        first = await anext(it, _MISSING)
        if first is _MISSING:
            return
        head = [first]
        streamed = self._streams(first)
        if streamed is None:
            second = await anext(it, _MISSING)
            if second is not _MISSING:
                head.append(second)
            streamed = second is not _MISSING

        async def source() -> AsyncIterator[Any]:
            for h in head:
                yield h
            async for c in it:
                yield c

        if not streamed:
            merged = _MISSING
            async for c in source():
                merged = c if merged is _MISSING else _add(merged, c)
            yield await self._ainvoke(merged, config)
            return
        async for chunk in amoderate(source(), self._rules(first, config)):
            yield chunk

    def _streams(self, first: Any) -> bool | None:
        """Whether a stream starting with ``first`` is an answer to moderate chunk by chunk
        (``None``: a string, undecided until a second chunk arrives)."""
        if self.role == "prompt":
            return False
        if isinstance(first, Mapping):
            if self.output_key is None or self.role == "prompt":
                return False
            if self.output_key in first:
                return True
            # e.g. the first chunk of ``RunnablePassthrough.assign(answer=...)`` (the input
            # keys) or a whole input dict: a stream only if more chunks follow.
            return None
        if isinstance(first, (AIMessageChunk, BaseMessageChunk)) and first.type in (
            "AIMessageChunk",
            "ai",
        ):
            return True
        if isinstance(first, str):
            return True if self.role == "response" else None
        return False

    def _inner(self, chunk: Any) -> Any:
        if isinstance(chunk, Mapping):
            return chunk.get(self.output_key) if self.output_key else None
        return chunk

    def _chunk_text(self, chunk: Any) -> str:
        inner = self._inner(chunk)
        if isinstance(inner, str):
            return inner
        if isinstance(inner, BaseMessage):
            return chunk_text(inner)
        return ""

    def _message_of(self, chunk: Any) -> BaseMessage | None:
        inner = self._inner(chunk)
        return inner if isinstance(inner, BaseMessage) else None

    def _cut(self, chunk: Any, text: str) -> Any:
        if isinstance(chunk, Mapping):
            key = self.output_key or ""
            return {**chunk, key: self._cut(chunk.get(key), text)}
        if isinstance(chunk, BaseMessage):
            return AIMessageChunk(content=text, id=chunk.id)
        return text

    def _rules(self, first: Any, config: RunnableConfig) -> StreamRules:
        guard = self._guard()

        def on_block(decision: Decision, text: str) -> list[Any]:
            if self.exit_behavior != "replace":
                raise_if_blocked(decision, text)
            msg = format_violation(self.violation_message, decision)
            meta = {METADATA_KEY: decision.to_dict()}
            if isinstance(first, Mapping):
                key = self.output_key or ""
                return [
                    {
                        key: AIMessageChunk(content=msg, response_metadata=meta)
                        if isinstance(first.get(key), BaseMessage)
                        else msg
                    }
                ]
            if isinstance(first, BaseMessage):
                return [AIMessageChunk(content=msg, response_metadata=meta, id=first.id)]
            return [msg]

        return StreamRules(
            guard=guard,
            policy=self.policy if self.policy is not None else guard.policy,
            on_block=on_block,
            text_of=self._chunk_text,
            cut=self._cut,
            message_of=self._message_of,
            prompt=self._stream_prompt(first, config),
        )

    def _stream_prompt(self, first: Any, config: RunnableConfig) -> list[GuardMessage] | None:
        hint = _prompt_hint(config)
        if isinstance(first, Mapping) and self.input_key and self.input_key in first:
            hint = _as_prompt(first[self.input_key]) or hint
        return hint or None

    # -- what to judge --------------------------------------------------------------------------

    def _target(self, value: Any, config: RunnableConfig | None) -> _Target:
        hint = _prompt_hint(ensure_config(config))
        if isinstance(value, Mapping):
            return self._dict_target(value, hint)
        return _value_target(value, self.role, hint)

    def _dict_target(self, value: Mapping[str, Any], hint: list[GuardMessage]) -> _Target:
        ik, ok = self.input_key, self.output_key
        role = self.role
        if role == "auto":
            if ok is not None and ok in value:
                role, key = "response", ok
            elif ik is not None and ik in value:
                role, key = "prompt", ik
            elif "messages" in value:
                role, key = "auto", "messages"
            else:
                raise ValueError(
                    "Qwen3GuardRunnable got a dict: set input_key= (the prompt) and/or "
                    f"output_key= (the answer); keys present: {sorted(value)}"
                )
        else:
            key = (ik if role == "prompt" else ok) or "messages"
            if key not in value:
                which = "input_key" if role == "prompt" else "output_key"
                raise ValueError(
                    f"Qwen3GuardRunnable(role={role!r}) needs {which}= naming a "
                    f"key of the dict; keys present: {sorted(value)}"
                )
        if role == "response" and ik is not None and ik in value and key != ik:
            hint = _as_prompt(value[ik]) or hint
        inner = _value_target(value[key], role, hint)

        def replace(text: str, decision: Decision) -> Any:
            return {**value, key: inner.replace(text, decision)}

        return _Target(inner.items, inner.surface, inner.text, replace)


# -- helpers ----------------------------------------------------------------------------------


def _prompt_hint(config: RunnableConfig) -> list[GuardMessage]:
    hint = (config.get("configurable") or {}).get(PROMPT_CONFIG_KEY)
    return _as_prompt(hint) if hint is not None else []


def _as_prompt(value: Any) -> list[GuardMessage]:
    """A prompt given as a string, messages or a prompt value, as guard messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else []
    msgs = to_messages(value)
    return messages_to_guard(msgs) if msgs else []


def _meta(decision: Decision) -> dict[str, Any]:
    return {METADATA_KEY: decision.to_dict()}


def _worst(decisions: Sequence[Decision], surface: Surface) -> Decision:
    """The first blocking decision, else the one for the value's own surface."""
    for d in decisions:
        if d.blocked:
            return d
    for d in decisions:
        if d.surface is surface:
            return d
    if decisions:
        return decisions[0]
    return Decision(True, None, surface, "nothing to judge")


def _replace_message(message: BaseMessage, text: str, decision: Decision) -> BaseMessage:
    update: dict[str, Any] = {
        "content": text,
        "response_metadata": {**message.response_metadata, **_meta(decision)},
    }
    if isinstance(message, AIMessage):
        update.update(tool_calls=[], invalid_tool_calls=[])
        if isinstance(message, AIMessageChunk):
            update["tool_call_chunks"] = []
    return message.model_copy(update=update)


def _value_target(value: Any, role: RoleOption, hint: list[GuardMessage]) -> _Target:
    if isinstance(value, (str, StringPromptValue)):
        text = value.text if isinstance(value, StringPromptValue) else value
        surface = Surface.OUTPUT if role == "response" else Surface.INPUT
        conv = _text_conversation(text, surface, hint)

        def replace_text(new: str, d: Decision) -> Any:
            return StringPromptValue(text=new) if isinstance(value, StringPromptValue) else new

        return _Target([(conv, surface)] if conv else [], surface, text, replace_text)
    msgs = to_messages(value)
    if not msgs:
        raise TypeError(
            "Qwen3GuardRunnable judges a str, messages, a PromptValue or a dict "
            f"(with input_key/output_key); got {type(value).__name__}"
        )
    last = msgs[-1]
    if role == "auto":
        role = "response" if role_of_message(last) == "assistant" else "prompt"
    items: list[Item]
    if role == "response":
        surface = Surface.OUTPUT
        content = dataclasses.replace(message_content(last), role="assistant")
        items = items_to_judge(content, messages_to_guard(msgs[:-1]) or hint)
        text = content.full_text
    else:
        surface = Surface.INPUT
        conversation = messages_to_guard(msgs)
        if conversation and conversation[-1]["role"] in ("system", "assistant"):
            # judge the last turn as the request it is for the next model
            conversation[-1] = {"role": "user", "content": conversation[-1]["content"]}
        items = [(conversation, surface)] if conversation else []
        text = conversation[-1]["content"] if conversation else ""

    def replace(new_text: str, decision: Decision) -> Any:
        new_last = _replace_message(last, new_text, decision)
        if isinstance(value, BaseMessage):
            return new_last
        new_msgs = [*msgs[:-1], new_last]
        if isinstance(value, PromptValue):
            return ChatPromptValue(messages=new_msgs)
        return new_msgs

    return _Target(items, surface, text, replace)


def _text_conversation(text: str, surface: Surface, hint: list[GuardMessage]) -> list[GuardMessage]:
    if surface is Surface.OUTPUT:
        return answer_conversation(hint, text)
    return [{"role": "user", "content": text}] if text.strip() else []


def _add(a: Any, b: Any) -> Any:
    try:
        return a + b
    except TypeError:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out = dict(a)
            for k, v in b.items():
                out[k] = _add(out[k], v) if k in out else v
            return out
        return b


def _merge(chunks: Iterator[Any] | Sequence[Any]) -> Any:
    merged = _MISSING
    for c in chunks:
        merged = c if merged is _MISSING else _add(merged, c)
    return merged
