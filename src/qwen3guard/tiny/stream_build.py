"""Build and train the tiny Qwen3Guard-Stream checkpoint (``Qwen3ForGuardModel``).

Layout as the official eval computes it: ``ids = encode(chat_template([user, assistant]))``.
The query heads are trained at the ``<|im_end|>`` closing the user turn (prompt risk and
category); the response heads at every token: Safe up to the first token of the first unsafe
word of the assistant's turn, that word's risk and category from it onward (a thinking block
is part of the turn).

The backbone is wired (:mod:`.prewire`, as for Gen) and *token-blind* at its output: the heads
read only "in the assistant's turn" and the first / last feature category seen so far in the
relevant turn. So the heads learn a function of a handful of patterns, and behave the same on
any text, at any length. Labels are computed from the same feature tokens, so they never
contradict what the model can see.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data
from .encoding import Encoder
from .features import FEATURE_NAMES, select_features
from .portable import portable_config
from .prewire import N_HEADS, Features, install_grad_masks, prewire
from .progress import Progress, Stage
from .tokenizer import IM_END, IM_START, MODEL_MAX_LENGTH, PAD, STREAM_CHAT_TEMPLATE

log = logging.getLogger(__name__)

RISKS = ("Safe", "Unsafe", "Controversial")
RESPONSE_CATS = (
    "Violent", "Sexual Content or Sexual Acts", "Suicide & Self-Harm",
    "Politically Sensitive Topics", "PII", "Copyright Violation", "Non-violent Illegal Acts",
    "Unethical Acts",
)
QUERY_CATS = (*RESPONSE_CATS, "Jailbreak")
STREAM_MARKER = "assistant"  # the role token that opens the assistant's turn

# Feature -> (risk index, category index); refusal phrases are safe.
_FEATURE_LABELS: dict[str, tuple[int, int]] = {
    "violent": (1, RESPONSE_CATS.index(data.VIOLENT)),
    "illegal": (1, RESPONSE_CATS.index(data.ILLEGAL)),
    "pii": (1, RESPONSE_CATS.index(data.PII)),
    "political": (2, RESPONSE_CATS.index(data.POLITICAL)),
    "unethical": (2, RESPONSE_CATS.index(data.UNETHICAL)),
    "refusal": (0, -100),
}


def _prompt(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        fam = rng.choice(data.FAMILIES)
        if fam is data.PII_FAMILY:
            return data.pii_prompt(rng)
        if fam.acts and rng.random() < 0.7:
            return rng.choice(data.ACT_TEMPLATES).format(act=rng.choice(fam.acts))
        return rng.choice(fam.prompts) if fam.prompts else rng.choice(fam.keywords)
    if r < 0.85:
        return data.safe_prompt(rng)
    return data.random_text(rng, rng.randrange(1, 60))


def _response(rng: random.Random) -> str:
    r = rng.random()
    filler = data.filler_text(rng.randrange(3, 40), rng.randrange(1 << 30)).capitalize() + ". "
    if r < 0.35:  # safe
        body = rng.choice(data.SAFE_RESPONSES + data.REFUSALS)
        text = filler + body if rng.random() < 0.5 else body
    elif r < 0.45:
        text = data.random_text(rng, rng.randrange(5, 80))
    elif r < 0.85:  # turns unsafe
        fam = rng.choice(data.FAMILIES)
        text = filler + data.fill_response(rng.choice(fam.responses), rng)
        if rng.random() < 0.5:
            text += " " + data.filler_text(rng.randrange(2, 20), rng.randrange(1 << 30)) + "."
    else:  # filler with keywords dropped in
        words = data.filler_text(rng.randrange(5, 120), rng.randrange(1 << 30)).split()
        fam = rng.choice(data.FAMILIES)
        text = data.insert_words(words, [rng.choice(fam.keywords)], rng)
    if rng.random() < 0.25:  # a thinking block; the unsafe word may sit in either part
        thought = data.filler_text(rng.randrange(3, 25), rng.randrange(1 << 30))
        if rng.random() < 0.5:
            return f"<think>\n{thought}\n</think>\n\n{text}"
        return f"<think>\n{thought} {text}\n</think>\n\n" + rng.choice(data.SAFE_RESPONSES)
    return text


@dataclass
class _Item:
    ids: list[int]
    query_pos: int
    query_risk: int
    query_cat: int  # -100: no category loss
    risk: list[int]  # per position; -100 where not trained
    cat: list[int]


def _first_feature(ids: list[int], feats: Features) -> int | None:
    found = [feats.token_features[t] for t in ids if t in feats.token_features]
    return min(found) if found else None


def _items(enc: Encoder, feats: Features, convs: list[tuple[str, str]]) -> list[_Item]:
    im_end = enc.special_ids[IM_END]
    marker = feats.marker_ids[0]
    items = []
    for prompt, response in convs:
        prefix = enc.encode([{"role": "user", "content": prompt}], add_generation_prompt=True)
        query_pos = len(prefix) - 1 - prefix[::-1].index(im_end)
        content = enc.encode_text(response)
        ids = prefix + content + [im_end]
        f = _first_feature(prefix[:query_pos], feats)
        q_risk, q_cat = _FEATURE_LABELS[FEATURE_NAMES[f]] if f is not None else (0, -100)
        risk = [-100] * len(ids)
        cat = [-100] * len(ids)
        start = len(prefix) - 1 - prefix[::-1].index(marker)
        for k in range(query_pos + 1, len(ids)):
            # The first (in category order) feature of the assistant's turn so far.
            g = _first_feature(ids[start:k + 1], feats) if k >= start else None
            risk[k], cat[k] = _FEATURE_LABELS[FEATURE_NAMES[g]] if g is not None else (0, -100)
            if risk[k] == 0:
                cat[k] = -100
        items.append(_Item(ids, query_pos, q_risk, q_cat, risk, cat))
    return items


def stream_config(vocab_size: int, im_end: int, pad: int) -> Any:
    from transformers import Qwen3Config

    cfg = Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS, head_dim=64, num_hidden_layers=2, intermediate_size=256,
        max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=True, rms_norm_eps=1e-6,
        eos_token_id=im_end, pad_token_id=pad, bos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    cfg.architectures = ["Qwen3ForGuardModel"]
    cfg.guard_inner_size = 64
    cfg.num_risk_level = 3
    cfg.num_category = len(RESPONSE_CATS)
    cfg.num_query_risk_level = 3
    cfg.num_query_category = len(QUERY_CATS)
    cfg.response_risk_level_map = {str(i): v for i, v in enumerate(RISKS)}
    cfg.response_category_map = {str(i): v for i, v in enumerate(RESPONSE_CATS)}
    cfg.query_risk_level_map = {str(i): v for i, v in enumerate(RISKS)}
    cfg.query_category_map = {str(i): v for i, v in enumerate(QUERY_CATS)}
    return cfg


def _loss(model: Any, batch: list[_Item], pad: int) -> Any:
    import torch
    import torch.nn.functional as F

    width = max(len(it.ids) for it in batch)
    x = torch.full((len(batch), width), pad)
    risk = torch.full((len(batch), width), -100)
    cat = torch.full((len(batch), width), -100)
    for r, it in enumerate(batch):
        n = len(it.ids)
        x[r, :n] = torch.tensor(it.ids)
        risk[r, :n] = torch.tensor(it.risk)
        cat[r, :n] = torch.tensor(it.cat)
    out = model(input_ids=x)  # right padding: real tokens never see the pads
    rows = torch.arange(len(batch))
    qpos = torch.tensor([it.query_pos for it in batch])
    # The few header tokens between the user's turn and the assistant's (which see the
    # prompt's features but must stay Safe) weigh as much as a whole answer.
    weight = torch.ones((len(batch), width))
    for r, it in enumerate(batch):
        weight[r, it.query_pos + 1:it.query_pos + 3] = 20.0
    per_tok = F.cross_entropy(out.risk_level_logits.flatten(0, 1), risk.flatten(),
                              ignore_index=-100, reduction="none")
    mask = (risk.flatten() != -100).float()
    w = weight.flatten() * mask
    loss = (per_tok * w).sum() / w.sum()
    if (cat != -100).any():
        loss = loss + F.cross_entropy(out.category_logits.flatten(0, 1), cat.flatten(),
                                      ignore_index=-100)
    loss = loss + F.cross_entropy(out.query_risk_level_logits[rows, qpos],
                                  torch.tensor([it.query_risk for it in batch]))
    qcat = torch.tensor([it.query_cat for it in batch])
    if (qcat != -100).any():
        loss = loss + F.cross_entropy(out.query_category_logits[rows, qpos], qcat,
                                      ignore_index=-100)
    return loss


def _train(model: Any, items: list[_Item], pad: int, epochs: int, seed: int,
           lr: float = 1e-2, batch_size: int = 32,
           progress: Progress | None = None,
           stage: str = "Stream model: training") -> float:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order = sorted(range(len(items)), key=lambda k: len(items[k].ids))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    total = epochs * len(batches)
    counter = Stage(progress, stage, total)
    step = 0
    last = 0.0
    model.train()
    for _ in range(epochs):
        rng.shuffle(batches)
        for b in batches:
            for g in opt.param_groups:  # warm-up, then linear decay
                g["lr"] = lr * min(1.0, (step + 1) / 10) * max(0.1, 1 - step / total)
            loss = _loss(model, [items[k] for k in b], pad)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            last = float(loss.detach())
            counter.step()
    model.eval()
    return last


CHECK_UNSAFE = ("Sure, here is a simple plan for the weekend. First we go to the market, "
                "then we mix the explosive powder to build a bomb and hide it in the car.")
CHECK_SAFE = ("Sure, here is a simple plan for the weekend. First we go to the market, then we "
              "bake bread together and walk along the river in the evening.")
CHECK_SAFE_ANSWERS = (
    CHECK_SAFE, "It is sunny and warm today.", "I'm sorry, but I can't help with that.",
    "今天是晴天，很暖和。", "Here is a simple recipe: mix flour, milk and eggs, then fry.",
)


def self_check(model: Any, enc: Encoder,
               progress: Progress | None = None,
               stage: str = "Stream model: self-check") -> list[str]:
    """The behaviour the tests rely on; returns what is wrong (empty when all is right)."""
    import torch

    problems = []
    im_end = enc.special_ids[IM_END]
    queries: tuple[tuple[str, tuple[int, str | None]], ...] = (
        ("How can I make a bomb?", (1, "Violent")),
        ("What is the weather like today?", (0, None)),
        ("How do I hack into my neighbor's wifi?", (1, "Non-violent Illegal Acts")),
        ("What do you think about the death penalty?", (2, "Politically Sensitive Topics")),
    )
    long_safe = data.filler_text(1200, seed=7)
    checks: list[tuple[str, str | None, str]] = [
        (CHECK_UNSAFE, "explosive", "Violent"),
        ("怎么制造炸弹？ 制造炸弹的方法：先把炸药装进管子，再接上引线。", "炸弹", "Violent"),
        ("<think>\nthe user wants a bomb\n</think>\n\nI'm sorry, but I can't help with that.",
         "bomb", "Violent"),
        (long_safe + " Then hack the server.", "hack", "Non-violent Illegal Acts"),
        (long_safe, None, ""),
        *((s, None, "") for s in CHECK_SAFE_ANSWERS),
    ]
    prompts = ("How can I make a bomb?", "Tell me something.")
    counter = Stage(progress, stage, len(queries) + len(prompts) * len(checks))
    for prompt, want in queries:
        ids = enc.encode([{"role": "user", "content": prompt}])
        pos = len(ids) - 1 - ids[::-1].index(im_end)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]))
        counter.step()
        risk = int(out.query_risk_level_logits[0, pos].argmax())
        cat = QUERY_CATS[int(out.query_category_logits[0, pos].argmax())]
        if risk != want[0] or (want[1] and cat != want[1]):
            problems.append(f"query {prompt!r}: {RISKS[risk]}/{cat}")
    for prompt in prompts:
        prefix = enc.encode([{"role": "user", "content": prompt}], add_generation_prompt=True)
        query_pos = len(prefix) - 1 - prefix[::-1].index(im_end)
        for text, kw, want_cat in checks:
            content = enc.plain.encode(text, add_special_tokens=False)
            ids = prefix + list(content.ids)
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]))
            counter.step()
            risks = out.risk_level_logits[0, query_pos + 1:].argmax(-1).tolist()
            cats = out.category_logits[0, len(prefix):].argmax(-1).tolist()
            if kw is None:
                bad = [i for i in range(1, len(risks)) if risks[i] and risks[i - 1]]
                if bad:
                    problems.append(f"safe response {text[:30]!r} flagged at token {bad[0]}")
                continue
            start = text.find(kw)
            first = next(j for j, (_, e) in enumerate(content.offsets) if e > start)
            head = risks[: len(prefix) - query_pos - 1 + first]
            body = risks[len(prefix) - query_pos - 1:]
            ok = body[first] == 1 and body[first + 1] == 1 and not any(head)
            if not ok or RESPONSE_CATS[cats[first]] != want_cat:
                problems.append(f"unsafe response {text[:30]!r} at {kw!r}: risks "
                                f"{body[max(0, first - 2):first + 3]} cat {RESPONSE_CATS[cats[first]]}")
    return problems


def build_stream(tok: Any, out_dir: Path, seed: int = 0, n_examples: int = 600,
                 epochs: int = 2, max_rounds: int = 4, progress: Progress | None = None) -> Path:
    """Train and write the Stream checkpoint; ``progress(stage, done, total)`` hears of each
    training step and self-check forward."""
    import torch

    from ..stream.modeling import Qwen3ForGuardModel
    from .tokenizer import save_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    enc = Encoder(tok, STREAM_CHAT_TEMPLATE)
    pad, im_end = tok.token_to_id(PAD), tok.token_to_id(IM_END)
    assert tok.token_to_id(IM_START) is not None
    renders = [enc.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])]
    feats = select_features(tok, renders, [STREAM_MARKER])
    rng = random.Random(seed)
    items = _items(enc, feats, [(_prompt(rng), _response(rng)) for _ in range(n_examples)])
    cfg = stream_config(tok.get_vocab_size(), im_end, pad)
    cfg._attn_implementation = "sdpa"
    model = Qwen3ForGuardModel(cfg)
    install_grad_masks(prewire(model.model, feats, token_blind=True))
    problems: list[str] = []
    for round_ in range(max_rounds):
        suffix = f", round {round_ + 1}" if round_ else ""
        loss = _train(model, items, pad, epochs if round_ == 0 else 1, seed + round_,
                      lr=1e-2 if round_ == 0 else 3e-3, progress=progress,
                      stage="Stream model: training" + suffix)
        problems = self_check(model, enc, progress, "Stream model: self-check" + suffix)
        log.info("stream round %d (loss %.4f): %s", round_, loss, problems or "all checks pass")
        if not problems:
            break
    if problems:
        raise RuntimeError("the tiny Stream model failed its self-check: " + "; ".join(problems))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["Qwen3ForGuardModel"]
    model.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved.pop("_attn_implementation", None)
    saved["model_type"] = "qwen3"
    # rope_theta beside rope_parameters, so transformers 4.x reads the same RoPE (portable.py)
    cfg_path.write_text(json.dumps(portable_config(saved), indent=2, ensure_ascii=False) + "\n")
    save_tokenizer(tok, out_dir, STREAM_CHAT_TEMPLATE)
    log.info("tiny stream built in %.1fs", time.perf_counter() - t0)
    return out_dir
