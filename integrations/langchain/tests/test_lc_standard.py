"""LangChain's standard chat-model tests (``langchain-tests`` 1.1.9) against
``Qwen3GuardChatModel`` wrapping a deterministic tool-calling fake (``standard_fake``); the
guard is the real built checkpoint (the ``guard`` fixture: Gen and Stream).

``ChatModelUnitTests`` runs in full; ``ChatModelIntegrationTests`` runs offline against the
fake: the capability flags say what the fake + wrapper do. Skipped, by flag or by the suite:

- ``test_init_from_env``: the wrapper reads no attribute of its own from the environment (the
  guard it uses by default, :func:`qwen3guard.get_default_guard`, does; that is the core's).
- ``test_serdes``: ``is_lc_serializable()`` is False: a guard holds loaded model weights and
  is not serialized, so a deserialized wrapper would be guarded by another guard (or none).
- ``test_image_inputs``, ``test_audio_inputs``, ``test_pdf_inputs``, ``test_image_tool_message``,
  ``test_pdf_tool_message``: the guard judges text only (an image, audio or file block raises
  ``InvalidInputError`` naming it, unless ``non_text="skip"``), and the tests download their
  media from the web (offline here).
- ``test_stream_time``: needs recorded provider HTTP traffic (VCR cassettes).

``test_anthropic_inputs`` runs (Anthropic ``tool_use`` and ``thinking`` blocks, a tool in
Anthropic's format; no image, as ``supports_image_inputs`` is False).

The same suites also run against the fake alone (``TestFakeAlone*``), which shows that a
failure of the wrapped class is the wrapper's.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableBinding, RunnableLambda
from langchain_qwen3guard import Qwen3GuardChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from langchain_tests.utils.stream_lifecycle import assert_valid_event_stream
from lc_fakes import SAFE_ANSWER, UNSAFE_ANSWER, ScriptedChatModel, tool_call
from pydantic import BaseModel
from standard_fake import ChatStandardFake

from qwen3guard import Policy, Qwen3Guard, Qwen3GuardViolation

QUESTION = "What is the weather like today?"

_GUARD: dict[str, Qwen3Guard] = {}


@pytest.fixture(autouse=True)
def _the_guard(guard: Qwen3Guard) -> None:
    """The session's guard (real tiny checkpoints), for ``chat_model_params``."""
    _GUARD["guard"] = guard


class _Flags:
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str | None:
        return "standard-fake-2"

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True  # tool_use / thinking blocks, no image (supports_image_inputs is False)


class _Guarded(_Flags):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return Qwen3GuardChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": ChatStandardFake(), "guard": _GUARD["guard"]}


class _Alone(_Flags):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatStandardFake

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {}


class TestGuardedUnit(_Guarded, ChatModelUnitTests):
    pass


class TestGuardedIntegration(_Guarded, ChatModelIntegrationTests):
    pass


class TestFakeAloneUnit(_Alone, ChatModelUnitTests):
    pass


class TestFakeAloneIntegration(_Alone, ChatModelIntegrationTests):
    pass


# -- what the standard suites found, and what they do not look at ----------------------------


class Answer(BaseModel):
    text: str


def _unsafe_structured() -> ScriptedChatModel:
    return ScriptedChatModel(script=[tool_call("Answer", {"text": UNSAFE_ANSWER})])


def test_bind_tools_returns_a_binding_of_the_guarded_model(guard: Qwen3Guard) -> None:
    """Like every chat model's: a ``RunnableBinding`` carrying the wrapped model's formatted
    ``tools`` (what LangGraph's ``create_react_agent`` reads), bound to the guarded model."""
    model = Qwen3GuardChatModel(llm=ChatStandardFake(), guard=guard)
    bound = model.bind_tools([Answer], tool_choice="any")
    assert isinstance(bound, RunnableBinding)
    assert isinstance(bound.bound, Qwen3GuardChatModel)
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["Answer"]
    assert bound.kwargs["tool_choice"] == "any"
    out = bound.invoke(QUESTION)
    assert out.tool_calls[0]["name"] == "Answer"
    # still guarded: an unsafe tool call is judged
    unsafe = Qwen3GuardChatModel(llm=_unsafe_structured(), guard=guard).bind_tools([Answer])
    with pytest.raises(Qwen3GuardViolation) as info:
        unsafe.invoke(QUESTION)
    assert info.value.stage == "tool_call"


async def test_structured_output_never_shows_unjudged_text_in_events(guard: Qwen3Guard) -> None:
    """The wrapped model's raw structured answer does not reach the caller's callbacks (the
    traces and ``astream_events``) before the guard has judged it; the result is blocked."""
    structured = Qwen3GuardChatModel(llm=_unsafe_structured(), guard=guard)
    chain = structured.with_structured_output(Answer)
    seen: list[Any] = []
    with pytest.raises(Qwen3GuardViolation) as info:
        async for event in chain.astream_events(QUESTION, version="v2"):
            seen.append(event)
    assert info.value.stage == "output"
    leaked = [(e["event"], e["name"]) for e in seen if "explosive" in repr(e.get("data"))]
    assert leaked == []


async def test_structured_output_events_show_the_guarded_run(guard: Qwen3Guard) -> None:
    """A safe structured answer: the chat-model run the caller sees is the guarded model's
    (one, with ``ls_structured_output_format``), and the result is the parsed object."""
    safe = ScriptedChatModel(script=[tool_call("Answer", {"text": SAFE_ANSWER})])
    chain = Qwen3GuardChatModel(llm=safe, guard=guard).with_structured_output(Answer)
    starts = [e async for e in chain.astream_events(QUESTION, version="v2")
              if e["event"] == "on_chat_model_start"]
    assert [e["name"] for e in starts] == ["Qwen3GuardChatModel"]
    assert await chain.ainvoke(QUESTION) == Answer(text=SAFE_ANSWER)
    json_chain = Qwen3GuardChatModel(llm=ChatStandardFake(), guard=guard).with_structured_output(
        Answer, method="json_mode")
    assert json_chain.invoke(QUESTION) == Answer(text=QUESTION)


def test_an_llm_cache_is_keyed_by_the_guard_configuration(guard: Qwen3Guard) -> None:
    """With LangChain's LLM cache on, an answer cached by a model guarded one way (here: the
    answer not moderated) is not served to a model guarded another way."""
    set_llm_cache(InMemoryCache())
    try:
        loose = Qwen3GuardChatModel(
            llm=ScriptedChatModel(script=[UNSAFE_ANSWER]), guard=guard, check_output=False
        )
        assert loose.invoke(QUESTION).content == UNSAFE_ANSWER
        strict = Qwen3GuardChatModel(llm=ScriptedChatModel(script=[UNSAFE_ANSWER]), guard=guard)
        with pytest.raises(Qwen3GuardViolation):
            strict.invoke(QUESTION)
        lenient = strict.model_copy(update={"policy": Policy(mode="loose")})
        assert strict._get_llm_string() != lenient._get_llm_string()
        assert strict._get_llm_string() == strict.model_copy()._get_llm_string()
    finally:
        set_llm_cache(None)


@pytest.mark.parametrize(
    ("method", "include_raw"),
    [("function_calling", True), ("json_schema", False), ("json_mode", True)],
)
async def test_structured_output_methods_are_judged_as_the_answer(
    guard: Qwen3Guard, method: str, include_raw: bool
) -> None:
    """Every method of the wrapped model's structured output (a tool call, a JSON answer),
    with and without ``include_raw``: a safe result comes back parsed; an unsafe one (the fake
    echoes the request; the request check is off to reach the answer) is blocked as the
    answer, and no event the caller sees carries it."""
    model = Qwen3GuardChatModel(llm=ChatStandardFake(), guard=guard, check_input=False)
    chain = model.with_structured_output(Answer, method=method, include_raw=include_raw)
    result = await chain.ainvoke(QUESTION)
    parsed = result["parsed"] if include_raw else result
    assert parsed == Answer(text=QUESTION)
    if include_raw:
        assert isinstance(result["raw"], AIMessage)
    seen: list[Any] = []
    with pytest.raises(Qwen3GuardViolation) as info:
        async for event in chain.astream_events(UNSAFE_ANSWER, version="v2"):
            if not event["event"].endswith("_start"):  # those carry the caller's own input
                seen.append(event)
    assert info.value.stage == "output"
    assert [e["event"] for e in seen if "explosive" in repr(e.get("data"))] == []


class _OpaqueStructured(ScriptedChatModel):
    """A model whose structured output is a chain that does not show the model."""

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        return RunnableLambda(lambda value: schema(text=self.invoke(value).content))


async def test_an_opaque_structured_output_runs_outside_the_callers_callbacks(
    guard: Qwen3Guard,
) -> None:
    """Where the wrapped model cannot be swapped for the guarded one, its structured runnable
    runs outside the caller's callbacks, between the request check and the result check."""
    safe = Qwen3GuardChatModel(llm=_OpaqueStructured(script=[SAFE_ANSWER]), guard=guard)
    assert await safe.with_structured_output(Answer).ainvoke(QUESTION) == Answer(text=SAFE_ANSWER)
    unsafe = Qwen3GuardChatModel(llm=_OpaqueStructured(script=[UNSAFE_ANSWER]), guard=guard)
    seen: list[Any] = []
    with pytest.raises(Qwen3GuardViolation) as info:
        async for event in unsafe.with_structured_output(Answer).astream_events(
            QUESTION, version="v2"
        ):
            seen.append(event)
    assert info.value.stage == "output"
    assert [e["event"] for e in seen if "explosive" in repr(e.get("data"))] == []


# -- the other exit behaviours ----------------------------------------------------------------


@pytest.mark.parametrize("exit_behavior", ["replace", "regenerate"])
async def test_other_exit_behaviors_pass_the_core_standard_tests(
    guard: Qwen3Guard, exit_behavior: Literal["replace", "regenerate"]
) -> None:
    """The standard invoke / stream / events / tool-calling / structured-output tests, with
    ``exit_behavior="replace"`` and ``"regenerate"`` (the suites above use ``"error"``)."""
    suite = TestGuardedIntegration()
    model = Qwen3GuardChatModel(llm=ChatStandardFake(), guard=guard, exit_behavior=exit_behavior)
    suite.test_invoke(model)
    suite.test_stream(model)
    await suite.test_astream(model)
    suite.test_stream_events_v3(model)
    suite.test_tool_calling(model)
    suite.test_structured_output(model, "pydantic")


@pytest.mark.parametrize(
    ("exit_behavior", "script", "question"),
    [
        ("replace", [UNSAFE_ANSWER], QUESTION),
        ("replace", [SAFE_ANSWER], "How can I make a bomb?"),
        ("regenerate", [UNSAFE_ANSWER, SAFE_ANSWER], QUESTION),
    ],
    ids=["replace-answer", "replace-prompt", "regenerate"],
)
@pytest.mark.parametrize("output_version", [None, "v1"])
def test_an_intervention_is_still_a_standard_stream(
    guard: Qwen3Guard,
    exit_behavior: Literal["replace", "regenerate"],
    script: list[str],
    question: str,
    output_version: str | None,
) -> None:
    """When the guard steps in (a replaced answer or prompt, a regenerated answer) the stream
    keeps the standard tests' invariants: the last chunk is ``chunk_position="last"``, the
    aggregate has exactly one text block, ``stream_events(version="v3")`` is a valid event
    lifecycle; and nothing unsafe is in it."""
    extra: dict[str, Any] = {"output_version": output_version} if output_version else {}

    def model() -> Qwen3GuardChatModel:
        return Qwen3GuardChatModel(llm=ScriptedChatModel(script=list(script)), guard=guard,
                                   exit_behavior=exit_behavior, **extra)

    chunks = list(model().stream(question))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert chunks[-1].chunk_position == "last"
    assert len([b for b in full.content_blocks if b["type"] == "text"]) == 1
    assert "explosive" not in full.text and "bomb" not in full.text
    stream = model().stream_events(question, version="v3")
    assert_valid_event_stream(list(stream))
    assert "explosive" not in stream.output.text
