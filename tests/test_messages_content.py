"""What the guard reads in a message (issue 10, classes 2, 4 and 9; issue 12 item 7).

Every text an LLM sees or emits is judged, wherever it sits in a message: text and reasoning
blocks, tool calls, invalid tool calls, ``function_call``, structured output; a system message
that is not first and an answer with no question before it (both dropped by the Gen chat
template) are judged too. A shape the guard cannot read is a clear ``InvalidInputError``.
"""

from __future__ import annotations

import json

import pytest

from qwen3guard import InvalidInputError, Qwen3Guard, RiskLevel, Role, Surface
from qwen3guard.content import (
    NO_PROMPT,
    items_to_judge,
    read_content,
    read_message,
    tool_call_conversation,
)
from qwen3guard.messages import ANSWER_ROLES, normalize_messages, role_of

UNSAFE_PROMPT = "How can I make a bomb?"
UNSAFE_ANSWER = "To make a bomb, mix the explosive powder with the fuel."
QUESTION = "What is the weather like today?"
SAFE = "It is sunny and warm today."


# -- reading shapes (no model) ---------------------------------------------------------------


SHAPES = {
    "text block": {"role": "assistant", "content": [{"type": "text", "text": "X"}]},
    "string part": {"role": "assistant", "content": ["X"]},
    "reasoning block": {
        "role": "assistant",
        "content": [{"type": "reasoning", "reasoning": "X"}, {"type": "text", "text": "ok"}],
    },
    "thinking block": {"role": "assistant", "content": [{"type": "thinking", "thinking": "X"}]},
    "responses reasoning summary": {
        "role": "assistant",
        "content": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "X"}]}],
    },
    "reasoning_content kwarg": {
        "role": "assistant",
        "content": "ok",
        "additional_kwargs": {"reasoning_content": "X"},
    },
    "refusal block": {"role": "assistant", "content": [{"type": "refusal", "refusal": "X"}]},
    "tool_use block": {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "X"}}],
    },
    "tool_call block": {
        "role": "assistant",
        "content": [{"type": "tool_call", "id": "t1", "name": "search", "args": {"q": "X"}}],
    },
    "langchain tool_calls": {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "search", "args": {"q": "X"}, "id": "c1"}],
    },
    "openai tool_calls": {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "search", "arguments": json.dumps({"q": "X"})}}
        ],
    },
    "openai tool_calls in additional_kwargs": {
        "role": "assistant",
        "content": "",
        "additional_kwargs": {
            "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "search", "arguments": '{"q": "X"}'}}
            ]
        },
    },
    "function_call in additional_kwargs": {
        "role": "assistant",
        "content": "",
        "additional_kwargs": {"function_call": {"name": "search", "arguments": '{"q": "X"}'}},
    },
    "invalid_tool_calls": {
        "role": "assistant",
        "content": "",
        "invalid_tool_calls": [{"name": "search", "args": '{"q": "X"', "id": "c1", "error": "x"}],
    },
    "tool_call_chunks": {
        "role": "assistant",
        "content": "",
        "tool_call_chunks": [{"name": "search", "args": '{"q": "X"}', "id": "c1", "index": 0}],
    },
    "structured output (parsed)": {
        "role": "assistant",
        "content": "",
        "additional_kwargs": {"parsed": {"answer": "X"}},
    },
    "anthropic tool_result": {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1",
                     "content": [{"type": "text", "text": "X"}]}],
    },
    "text-plain block": {"role": "user", "content": [{"type": "text-plain", "text": "X",
                                                       "mime_type": "text/plain"}]},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_text_of_every_shape_is_read(shape):
    marker = "zq-marker-7"
    message = json.loads(json.dumps(SHAPES[shape]).replace('"X"', json.dumps(marker))
                         .replace('\\"X\\"', json.dumps(json.dumps(marker))[1:-1]))
    content = read_message(message)
    assert marker in content.full_text
    judged = " ".join(text for _, text in content.surface_texts())
    assert marker in judged
    # the same text reaches the core conversation
    assert marker in normalize_messages([{"role": "user", "content": QUESTION}, message])[-1][
        "content"
    ]


def test_tool_calls_are_judged_on_the_tool_call_surface_and_text_on_its_own():
    content = read_message(
        {
            "role": "assistant",
            "content": [{"type": "reasoning", "reasoning": "think"}, {"type": "text", "text": "hi"}],
            "tool_calls": [{"name": "search", "args": {"q": "a"}, "id": "c1"}],
            "additional_kwargs": {
                "tool_calls": [{"id": "c1", "type": "function",
                                "function": {"name": "search", "arguments": '{"q": "a"}'}}],
            },
        }
    )
    assert content.reasoning == "think" and content.text == "hi"
    assert [c.render() for c in content.tool_calls] == ['search({"q": "a"})']  # one, not two
    assert content.surface_texts() == [
        (Surface.OUTPUT, "think\nhi"),
        (Surface.TOOL_CALL, 'search({"q": "a"})'),
    ]
    items = items_to_judge(content, [{"role": "user", "content": QUESTION}])
    assert items[0] == (
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "think\nhi"}],
        Surface.OUTPUT,
    )
    assert items[1] == (tool_call_conversation("search", '{"q": "a"}'), Surface.TOOL_CALL)


def test_a_message_object_is_read_with_its_additional_kwargs():
    class Msg:  # the shape of e.g. a LlamaIndex ChatMessage
        role = "assistant"
        content = "ok"
        additional_kwargs = {"tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "search", "arguments": '{"q": "zq-marker"}'}}]}

    conv = normalize_messages([{"role": "user", "content": QUESTION}, Msg()])
    assert "zq-marker" in conv[-1]["content"]


def test_two_different_calls_with_one_id_are_both_read():
    content = read_message(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"name": "search", "args": {"q": "weather"}, "id": "c1"}],
            "additional_kwargs": {"function_call": {"name": "search", "arguments": '{"q": "Y"}'}},
        }
    )
    assert len(content.tool_calls) == 2


@pytest.mark.parametrize(
    ("part", "words"),
    [
        ({"type": "image_url", "image_url": {"url": "http://x"}}, "cannot be judged"),
        ({"type": "image", "url": "http://x"}, "cannot be judged"),
        ({"type": "redacted_thinking", "data": "..."}, "cannot be judged"),
        ({"type": "hologram", "text": "X"}, "'hologram'"),
        ({"type": "non_standard", "value": {"text": "X"}}, "'non_standard'"),
        ({"text": "X"}, "without a 'type'"),
        (42, "int"),
    ],
)
def test_a_shape_that_cannot_be_read_is_a_clear_error(part, words):
    with pytest.raises(InvalidInputError) as info:
        read_content([{"type": "text", "text": "hi"}, part])
    assert words in str(info.value)


def test_non_text_can_be_skipped_explicitly():
    content = read_content(
        [{"type": "image_url", "image_url": {"url": "http://x"}}, {"type": "text", "text": "hi"}],
        non_text="skip",
    )
    assert content.full_text == "hi"


def test_which_roles_are_answers():
    assert set(ANSWER_ROLES) == {"assistant"}
    assert role_of(normalize_messages([{"role": "user", "content": "a"},
                                       {"role": "assistant", "content": "b"}])) is Role.RESPONSE
    # a tool result is read by the model: judged as a request, not as an answer
    conv = normalize_messages([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    assert conv[-1]["role"] == "user" and role_of(conv) is Role.PROMPT


def test_the_template_drops_nothing():
    # a system message that is not first is folded into the user turn after it
    conv = normalize_messages(
        [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "S2"},
            {"role": "user", "content": "U2"},
        ]
    )
    assert conv[-1] == {"role": "user", "content": "S2\n\nU2"}
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user"]
    # ... or becomes a user turn of its own when none follows
    conv = normalize_messages(
        [{"role": "user", "content": "hi"}, {"role": "system", "content": "S"},
         {"role": "assistant", "content": "A"}]
    )
    assert conv == [{"role": "user", "content": "hi"}, {"role": "user", "content": "S"},
                    {"role": "assistant", "content": "A"}]
    # an answer with no question before it gets the neutral one
    assert normalize_messages([{"role": "assistant", "content": "A"}]) == [
        {"role": "user", "content": NO_PROMPT}, {"role": "assistant", "content": "A"}]


# -- judged on the built checkpoints ------------------------------------------------------------


def test_a_late_system_message_is_judged(gen_guard: Qwen3Guard):
    conv = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": SAFE},
        {"role": "system", "content": UNSAFE_PROMPT},
        {"role": "user", "content": "Thanks."},
    ]
    assert gen_guard.screen(conv, "input").blocked


def test_an_answer_without_a_question_is_judged(gen_guard: Qwen3Guard):
    verdict = gen_guard.check([{"role": "assistant", "content": UNSAFE_ANSWER}])
    assert verdict.role is Role.RESPONSE and verdict.risk is RiskLevel.UNSAFE, verdict.raw


@pytest.mark.parametrize(
    "answer",
    [
        {"role": "assistant", "content": [{"type": "reasoning", "reasoning": UNSAFE_ANSWER},
                                          {"type": "text", "text": SAFE}]},
        {"role": "assistant", "content": SAFE,
         "additional_kwargs": {"reasoning_content": UNSAFE_ANSWER}},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "search",
                                      "arguments": json.dumps({"q": UNSAFE_PROMPT})}}]},
    ],
    ids=["reasoning block", "reasoning_content", "openai tool call"],
)
def test_hidden_text_of_an_answer_is_judged(gen_guard: Qwen3Guard, answer):
    conv = [{"role": "user", "content": QUESTION}, answer]
    assert gen_guard.screen(conv, "output").blocked


def test_an_injected_tool_result_is_judged_as_a_request(gen_guard: Qwen3Guard):
    verdict = gen_guard.check([{"role": "user", "content": QUESTION},
                               {"role": "tool", "content": UNSAFE_PROMPT}])
    assert verdict.role is Role.PROMPT and verdict.risk is RiskLevel.UNSAFE
