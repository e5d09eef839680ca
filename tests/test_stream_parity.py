"""An incremental session computes the same logits as the official full forward.

The reference is what the official eval does: ``tokenizer(apply_chat_template([user,
assistant], tokenize=False))`` and one forward over the whole ids, without a cache. The
session instead runs the prompt once and then only the new ids of each chunk with its KV
cache; chunk sizes are random. Every response position must agree to 1e-4.
"""

from __future__ import annotations

import random

import pytest

from qwen3guard import Qwen3Guard

CONVERSATIONS = [
    (
        "What is the weather like today?",
        "It is a sunny day. Here is how: mix the explosive powder to build a bomb, then add a timer.",
    ),
    ("怎么制造炸弹？", "制造炸弹的方法：先把炸药装进管子，再接上引线。今天是晴天，很暖和。"),
    (
        "How can I make a bomb?",
        "<think>\nThe user asks about a bomb. I should not explain how to mix explosive powder.\n"
        "</think>\n\nI'm sorry, but I can't help with that. 🙂",
    ),
    ("Tell me a story", '\n\n  Once upon a time,\tthere was a garden... It\'s 3.14 "nice"!\n'),
]
TOL = 1e-4


def _conversation_ids(guard: Qwen3Guard, prompt: str, answer: str) -> list[int]:
    """The official eval's ids, without the closing ``<|im_end|>\n`` of the answer."""
    tok = guard.stream.tokenizer
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
    end = tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(end) :] == end
    return ids[: -len(end)]


def _generated_ids(guard: Qwen3Guard, prompt: str, answer: str) -> list[int]:
    """What a Qwen3 LLM's ids look like: the generation prompt's ids, then the answer's."""
    tok = guard.stream.tokenizer
    gen_prompt = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return (
        tok(gen_prompt, add_special_tokens=False)["input_ids"]
        + tok(answer, add_special_tokens=False)["input_ids"]
    )


def _reference(guard: Qwen3Guard, prompt: str, ids: list[int]):
    """One forward over the whole ids, no cache (the official algorithm's last step)."""
    import torch

    tok = guard.stream.tokenizer
    q_ids = tok(
        tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    query_index = max(k for k in range(len(q_ids)) if q_ids[k] == im_end)
    assert ids[: query_index + 1] == q_ids[: query_index + 1]
    with torch.inference_mode():
        out = guard.stream.model(input_ids=torch.tensor([ids]))
    return (
        out.risk_level_logits[0].float(),
        out.category_logits[0].float(),
        out.query_risk_level_logits[0, query_index].float(),
    )


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("mode", ["text", "ids"])
def test_incremental_logits_equal_the_full_forward(guard: Qwen3Guard, case: int, mode: str) -> None:
    import torch

    prompt, answer = CONVERSATIONS[case]
    body = (_conversation_ids if mode == "text" else _generated_ids)(guard, prompt, answer)
    if not answer.startswith("\n"):  # the two differ only where the answer's newline merges
        assert _conversation_ids(guard, prompt, answer) == _generated_ids(guard, prompt, answer)
    risk_ref, cat_ref, q_ref = _reference(guard, prompt, body)
    rng = random.Random(1000 * case + (mode == "ids"))
    s = guard.open_stream(prompt, record_logits=True)
    if mode == "text":
        k = 0
        while k < len(answer):
            n = rng.randint(1, 9)
            s.feed_text(answer[k : k + n])
            k += n
    else:
        ids = guard.stream.tokenizer(answer, add_special_tokens=False)["input_ids"]
        k = 0
        while k < len(ids):
            n = rng.randint(1, 6)
            s.feed_ids(ids[k : k + n])
            k += n
    s.close()
    fed, risk, cat = s._logits_trace()
    n = len(fed)
    assert n > 0
    # The ids the session fed for the answer are the reference's.
    assert fed == body[-n:]
    positions = range(len(body) - n, len(body))
    assert torch.allclose(risk, risk_ref[positions.start : positions.stop], atol=TOL, rtol=0), (
        (risk - risk_ref[positions.start : positions.stop]).abs().max()
    )
    assert torch.allclose(cat, cat_ref[positions.start : positions.stop], atol=TOL, rtol=0)
    # The prompt verdict's probabilities are the query head's at the user turn's <|im_end|>.
    probs = torch.softmax(q_ref, dim=-1)
    labels = guard.stream.labels.query_risk
    for lab, p in zip(labels, probs.tolist()):
        assert abs(s.prompt_verdict.scores[lab.value] - p) < TOL
    assert s.tokens_seen == n


def test_answer_starting_with_a_newline_merges_with_the_template(guard: Qwen3Guard) -> None:
    """The template's "assistant\\n" and a leading "\\n" of the answer tokenize together in the
    full string; the session reproduces that, not the ids of the answer alone."""
    prompt, answer = CONVERSATIONS[3]
    body = _conversation_ids(guard, prompt, answer)
    assert body != _generated_ids(guard, prompt, answer)
    s = guard.open_stream(prompt, record_logits=True)
    for ch in answer:
        s.feed_text(ch)
    s.close()
    fed, _, _ = s._logits_trace()
    assert fed == body[-len(fed) :]


def test_fast_path_is_used_and_agrees_with_the_transformers_path(guard: Qwen3Guard) -> None:
    import torch

    from qwen3guard.stream.local import LocalStreamBackend, LocalStreamSession

    fast = guard.stream
    assert fast._fast is not None, "the tiny checkpoint should take the fast decode path"
    slow = LocalStreamBackend(
        fast.model_id, model=fast.model, tokenizer=fast.tokenizer, fast_path=False
    )
    assert slow._fast is None
    prompt, answer = CONVERSATIONS[2]
    traces = []
    for backend in (fast, slow):
        with LocalStreamSession(backend, prompt, record_logits=True) as s:
            for k in range(0, len(answer), 7):
                s.feed_text(answer[k : k + 7])
        traces.append(s._logits_trace())
    assert traces[0][0] == traces[1][0]
    assert torch.allclose(traces[0][1], traces[1][1], atol=TOL, rtol=0)
    assert torch.allclose(traces[0][2], traces[1][2], atol=TOL, rtol=0)


def test_a_fast_path_that_disagrees_is_not_used(guard: Qwen3Guard, monkeypatch) -> None:
    from qwen3guard.stream import fastpath
    from qwen3guard.stream.local import LocalStreamBackend

    real = fastpath.FastDecoder.hidden
    monkeypatch.setattr(
        fastpath.FastDecoder, "hidden", lambda self, ids, c: real(self, ids, c) + 0.5
    )
    b = LocalStreamBackend(
        guard.stream.model_id, model=guard.stream.model, tokenizer=guard.stream.tokenizer
    )
    assert b._fast is None
