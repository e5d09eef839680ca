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


# -- a position-sensitive checkpoint (issue 12, item 4) -----------------------------------------
#
# The built-in Stream checkpoint is trained to be position-blind (its rope_theta moves its
# logits by exactly 0), so the tests above cannot see a RoPE or KV-cache bug. The checkpoint
# below has random weights, large enough that attention depends on position, in the same
# official format (config keys, label maps, weight names, tokenizer of the built checkpoint).

POS_TOL = 1e-4
BROKEN = 1e-3  # a broken RoPE or cache moves these logits by far more than this


def build_positional_checkpoint(out_dir, tokenizer_dir: str, *, rope_theta: float = 10000.0):  # noqa: ANN001, ANN201
    """Write a small random Qwen3Guard-Stream checkpoint to ``out_dir`` (about 1 s)."""
    import json
    import shutil
    from pathlib import Path

    import torch
    from transformers import Qwen3Config

    from qwen3guard.stream.modeling import Qwen3ForGuardModel
    from qwen3guard.tiny.portable import make_portable

    src = json.loads((Path(tokenizer_dir) / "config.json").read_text())
    cfg = Qwen3Config(
        vocab_size=src["vocab_size"], hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=src["max_position_embeddings"], rms_norm_eps=1e-6,
        tie_word_embeddings=True, eos_token_id=src["eos_token_id"],
        pad_token_id=src["pad_token_id"], bos_token_id=None, initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    cfg.architectures = ["Qwen3ForGuardModel"]
    for key in ("num_risk_level", "num_category", "num_query_risk_level", "num_query_category",
                "response_risk_level_map", "response_category_map", "query_risk_level_map",
                "query_category_map"):
        setattr(cfg, key, src[key])
    cfg.guard_inner_size = 32
    torch.manual_seed(1234)
    model = Qwen3ForGuardModel(cfg).eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    make_portable(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        shutil.copy(Path(tokenizer_dir) / name, out / name)
    return out


@pytest.fixture(scope="session")
def positional_path(tmp_path_factory, stream_path: str) -> str:  # noqa: ANN001
    return str(build_positional_checkpoint(tmp_path_factory.mktemp("positional"), stream_path))


def _backend(path: str, **kw):  # noqa: ANN003, ANN202
    from qwen3guard.stream.local import LocalStreamBackend

    return LocalStreamBackend(path, **kw)


def _parity_error(backend, prompt: str, answer: str, *, seed: int = 0) -> float:  # noqa: ANN001
    """Max |session logit - full-forward logit| over the answer's positions; the session is
    fed random 1-9 character chunks."""
    import torch

    from qwen3guard.stream.local import LocalStreamSession

    guard = Qwen3Guard(None, stream=backend)
    body = _conversation_ids(guard, prompt, answer)
    risk_ref, cat_ref, _ = _reference(guard, prompt, body)
    rng = random.Random(seed)
    with LocalStreamSession(backend, prompt, record_logits=True) as s:
        k = 0
        while k < len(answer):
            n = rng.randint(1, 9)
            s.feed_text(answer[k : k + n])
            k += n
    fed, risk, cat = s._logits_trace()
    assert fed == body[-len(fed) :]
    lo = len(body) - len(fed)
    return max(
        float((risk - risk_ref[lo:]).abs().max()), float((cat - cat_ref[lo:]).abs().max())
    ) + 0.0 * float(torch.zeros(()))


def _full_risk(path: str, ids: list[int]):  # noqa: ANN202
    import torch

    from qwen3guard.stream.modeling import load_stream_model

    with torch.inference_mode():
        return load_stream_model(path).forward(input_ids=torch.tensor([ids])).risk_level_logits[0]


def test_the_positional_checkpoint_depends_on_position(
    positional_path: str, stream_path: str, tmp_path
) -> None:  # noqa: ANN001
    """rope_theta 1e4 -> 1e6 moves its logits; the built-in checkpoint's it moves by 0."""
    import json

    ids = list(range(5, 45))
    moved = {}
    for name, path in (("positional", positional_path), ("tiny", stream_path)):
        base = _full_risk(path, ids)
        other = tmp_path / name
        import shutil

        shutil.copytree(path, other)
        cfg = json.loads((other / "config.json").read_text())
        cfg["rope_parameters"]["rope_theta"] = cfg["rope_theta"] = 1e6 if name != "tiny" else 1e4
        (other / "config.json").write_text(json.dumps(cfg))
        moved[name] = float((_full_risk(str(other), ids) - base).abs().max())
    assert moved["positional"] > 100 * BROKEN
    assert moved["tiny"] == 0.0


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_positional_incremental_logits_equal_the_full_forward(
    positional_path: str, case: int, fast_path: bool
) -> None:
    b = _backend(positional_path, fast_path=fast_path)
    assert (b._fast is not None) is fast_path
    assert _parity_error(b, *CONVERSATIONS[case], seed=case) < POS_TOL


def test_positional_sliding_window_equals_a_forward_over_the_kept_context(
    positional_path: str,
) -> None:
    """With a 64-token context the session slides (documented in stream/local.py: the cache is
    rebuilt from the prompt, the template header and the most recent half of the room); every
    token's logits equal one forward over exactly that context, positions from 0."""
    import torch

    from qwen3guard.stream.local import LocalStreamSession

    ctx = 64
    b = _backend(positional_path, max_context_tokens=ctx)
    prompt = "Tell me a story"
    answer_ids = b.tokenizer(" ".join(["once upon a time there was a garden"] * 12),
                             add_special_tokens=False)["input_ids"]
    guard = Qwen3Guard(None, stream=b)
    head = _generated_ids(guard, prompt, "")  # the prompt and the assistant header
    with LocalStreamSession(b, prompt, record_logits=True) as s:
        for i in answer_ids:
            s.feed_ids([i])
        slides = s.metadata.get("context_slides", 0) if hasattr(s, "metadata") else None
    fed, risk, _ = s._logits_trace()
    assert fed == answer_ids
    keep = (ctx - len(head)) // 2
    window: list[int] = []
    worst = 0.0
    n_slides = 0
    for j, tok in enumerate(answer_ids):
        if len(head) + len(window) >= ctx:
            window = answer_ids[:j][-keep:]
            n_slides += 1
        window.append(tok)
        with torch.inference_mode():
            ref = b.model(input_ids=torch.tensor([head + window])).risk_level_logits[0, -1]
        worst = max(worst, float((risk[j] - ref).abs().max()))
    assert n_slides >= 2 and slides in (None, n_slides)
    assert worst < POS_TOL


def test_parity_catches_a_wrong_rope(positional_path: str, stream_path: str, monkeypatch) -> None:  # noqa: ANN001
    """A fast path whose RoPE restarts at position 0 for every chunk instead of continuing
    from the cache's length (its self-check bypassed): the parity check fails on the positional
    checkpoint by orders of magnitude more than on the built-in one. (A shift of every
    position by the same amount is no bug: RoPE attention depends on relative positions only.)"""
    from qwen3guard.stream import fastpath, local_backend

    real = fastpath.FastDecoder._rope
    monkeypatch.setattr(fastpath.FastDecoder, "_rope",
                        lambda self, x, start, n: real(self, x, 0, n))
    monkeypatch.setattr(local_backend, "verify", lambda *a, **k: True)
    prompt, answer = CONVERSATIONS[0]
    err = _parity_error(_backend(positional_path), prompt, answer)
    print(f"wrong RoPE: positional checkpoint parity error {err:.3g}")
    tiny = _parity_error(_backend(stream_path), prompt, answer)
    print(f"wrong RoPE: built-in checkpoint parity error {tiny:.3g}")
    assert err > BROKEN and err > 100 * tiny


def test_parity_catches_a_dropped_cache_entry(
    positional_path: str, stream_path: str, monkeypatch
) -> None:  # noqa: ANN001
    """A KV cache that loses one position (the 3rd) from incremental steps: the parity check
    fails on the positional checkpoint."""
    import torch

    from qwen3guard.stream import fastpath, local_backend

    real = fastpath.KVBuffer.append

    def dropping(self, layer, k, v, start):  # noqa: ANN001, ANN202
        keys, values = real(self, layer, k, v, start)
        if k.shape[2] == 1 and keys.shape[2] > 3:
            keep = [i for i in range(keys.shape[2]) if i != 2]
            idx = torch.tensor(keep, device=keys.device)
            return keys.index_select(2, idx), values.index_select(2, idx)
        return keys, values

    monkeypatch.setattr(fastpath.KVBuffer, "append", dropping)
    monkeypatch.setattr(local_backend, "verify", lambda *a, **k: True)
    prompt, answer = CONVERSATIONS[0]
    # token by token, so every answer position is an incremental step
    from qwen3guard.stream.local import LocalStreamSession

    b = _backend(positional_path)
    guard = Qwen3Guard(None, stream=b)
    body = _conversation_ids(guard, prompt, answer)
    risk_ref, _, _ = _reference(guard, prompt, body)
    with LocalStreamSession(b, prompt, record_logits=True) as s:
        ids = b.tokenizer(answer, add_special_tokens=False)["input_ids"]
        for i in ids:
            s.feed_ids([i])
    fed, risk, _ = s._logits_trace()
    err = float((risk - risk_ref[len(body) - len(fed) :]).abs().max())
    print(f"dropped cache entry: positional checkpoint parity error {err:.3g}")
    assert err > BROKEN
