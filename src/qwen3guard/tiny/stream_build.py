"""Build and train the tiny Qwen3Guard-Stream checkpoint (``Qwen3ForGuardModel``).

Layout as the official eval computes it: ``ids = encode(chat_template([user, assistant]))``.
The query heads are trained at the ``<|im_end|>`` closing the user turn (prompt risk and
category); the response heads at every assistant token: Safe before the first token of the
first unsafe word, that word's risk and category from it onward.
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
from .tokenizer import IM_END, IM_START, MODEL_MAX_LENGTH, PAD, STREAM_CHAT_TEMPLATE

log = logging.getLogger(__name__)

RISKS = ("Safe", "Unsafe", "Controversial")
RESPONSE_CATS = (
    "Violent", "Sexual Content or Sexual Acts", "Suicide & Self-Harm",
    "Politically Sensitive Topics", "PII", "Copyright Violation", "Non-violent Illegal Acts",
    "Unethical Acts",
)
QUERY_CATS = (*RESPONSE_CATS, "Jailbreak")
FAMILIES = (data.VIOLENT_FAMILY, data.ILLEGAL_FAMILY, data.POLITICAL_FAMILY)


@dataclass
class StreamExample:
    prompt: str
    prompt_risk: int
    prompt_cat: int  # -100: no category loss
    response: str
    # (char offset where the unsafe span starts, risk, category) or None for a safe response
    unsafe: tuple[int, int, int] | None


def _first_keyword(text: str) -> tuple[int, Any] | None:
    best = None
    for fam in FAMILIES:
        for kw in fam.keywords:
            i = text.find(kw)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, fam)
    return best


def _label(fam: Any) -> tuple[int, int]:
    return RISKS.index(fam.risk), RESPONSE_CATS.index(fam.category)


def _prompt(rng: random.Random) -> tuple[str, int, int]:
    r = rng.random()
    if r < 0.4:
        fam = rng.choice((data.VIOLENT_FAMILY, data.ILLEGAL_FAMILY))
        if fam.acts and rng.random() < 0.7:
            p = rng.choice(data.ACT_TEMPLATES).format(act=rng.choice(fam.acts))
        else:
            p = rng.choice(fam.prompts)
        risk, cat = _label(fam)
        return p, risk, cat
    if r < 0.5:
        fam = data.POLITICAL_FAMILY
        return rng.choice(fam.prompts), *_label(fam)
    if r < 0.75:
        return rng.choice(data.SAFE_PROMPTS), 0, -100
    return rng.choice(data.ACT_TEMPLATES).format(act=rng.choice(data.SAFE_ACTS)), 0, -100


def _response(rng: random.Random) -> str:
    r = rng.random()
    filler = data.filler_text(rng.randrange(3, 40), rng.randrange(1 << 30)).capitalize() + ". "
    if r < 0.35:  # safe
        body = rng.choice(data.SAFE_RESPONSES + data.REFUSALS)
        text = filler + body if rng.random() < 0.6 else body
    elif r < 0.8:  # turns unsafe
        fam = rng.choice((data.VIOLENT_FAMILY, data.ILLEGAL_FAMILY))
        text = filler + data.fill_response(rng.choice(fam.responses), rng)
        if rng.random() < 0.5:
            text += " " + data.filler_text(rng.randrange(2, 20), rng.randrange(1 << 30)) + "."
    else:  # Chinese / Russian responses, safe or not
        fam = rng.choice((data.VIOLENT_FAMILY, data.ILLEGAL_FAMILY))
        pool = [x for x in fam.responses if any(ord(c) > 127 for c in x)]
        text = data.fill_response(rng.choice(pool), rng) if rng.random() < 0.7 else "今天天气很好，我们去公园散步吧。"
    if rng.random() < 0.25:  # a thinking block; the unsafe word may sit in either part
        thought = data.filler_text(rng.randrange(3, 25), rng.randrange(1 << 30))
        if rng.random() < 0.5:
            return f"<think>\n{thought}\n</think>\n\n{text}"
        return f"<think>\n{thought} {text}\n</think>\n\n" + rng.choice(data.SAFE_RESPONSES)
    return text


def stream_examples(rng: random.Random, n: int) -> list[StreamExample]:
    out = []
    for _ in range(n):
        prompt, risk, cat = _prompt(rng)
        response = _response(rng)
        hit = _first_keyword(response)
        unsafe = None
        if hit is not None:
            unsafe = (hit[0], *_label(hit[1]))
        out.append(StreamExample(prompt, risk, cat, response, unsafe))
    return out


@dataclass
class _Item:
    ids: list[int]
    query_pos: int
    query_risk: int
    query_cat: int
    risk: list[int]  # per position; -100 where not trained
    cat: list[int]


def _items(enc: Encoder, examples: list[StreamExample]) -> list[_Item]:
    im_end = enc.special_ids[IM_END]
    items = []
    for ex in examples:
        prefix = enc.encode([{"role": "user", "content": ex.prompt}], add_generation_prompt=True)
        query_pos = len(prefix) - 1 - prefix[::-1].index(im_end)
        content = enc.plain.encode(ex.response, add_special_tokens=False)
        ids = prefix + list(content.ids) + [im_end]
        risk = [-100] * len(ids)
        cat = [-100] * len(ids)
        for k in range(query_pos + 1, len(prefix)):  # the assistant header: safe
            risk[k] = 0
        for j, (_, end) in enumerate(content.offsets):
            pos = len(prefix) + j
            if ex.unsafe is not None and end > ex.unsafe[0]:
                risk[pos], cat[pos] = ex.unsafe[1], ex.unsafe[2]
            else:
                risk[pos] = 0
        risk[-1] = risk[-2] if len(content.ids) else 0
        cat[-1] = cat[-2] if len(content.ids) else -100
        items.append(_Item(ids, query_pos, ex.prompt_risk, ex.prompt_cat, risk, cat))
    return items


def stream_config(vocab_size: int, im_end: int, pad: int) -> Any:
    from transformers import Qwen3Config

    cfg = Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
        head_dim=64, num_hidden_layers=2, intermediate_size=384,
        max_position_embeddings=MODEL_MAX_LENGTH, tie_word_embeddings=True,
        eos_token_id=im_end, pad_token_id=pad, bos_token_id=None, rope_theta=10000.0,
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
    att = torch.zeros((len(batch), width), dtype=torch.long)
    risk = torch.full((len(batch), width), -100)
    cat = torch.full((len(batch), width), -100)
    for r, it in enumerate(batch):
        n = len(it.ids)
        x[r, :n] = torch.tensor(it.ids)
        att[r, :n] = 1
        risk[r, :n] = torch.tensor(it.risk)
        cat[r, :n] = torch.tensor(it.cat)
    out = model(input_ids=x, attention_mask=att)
    rows = torch.arange(len(batch))
    qpos = torch.tensor([it.query_pos for it in batch])
    loss = F.cross_entropy(out.risk_level_logits.flatten(0, 1), risk.flatten(), ignore_index=-100)
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
           lr: float = 3e-3, batch_size: int = 32) -> None:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order = sorted(range(len(items)), key=lambda k: len(items[k].ids))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    total = epochs * len(batches)
    step = 0
    model.train()
    for _ in range(epochs):
        rng.shuffle(batches)
        for b in batches:
            for g in opt.param_groups:  # warm-up, then linear decay
                g["lr"] = lr * min(1.0, (step + 1) / 20) * max(0.05, 1 - step / total)
            loss = _loss(model, [items[k] for k in b], pad)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 50 == 0:
                log.info("stream step %d/%d loss %.4f", step, total, float(loss))
    model.eval()


CHECK_UNSAFE = ("Sure, here is a simple plan for the weekend. First we go to the market, "
                "then we mix the explosive powder to build a bomb and hide it in the car.")
CHECK_SAFE = ("Sure, here is a simple plan for the weekend. First we go to the market, then we "
              "bake bread together and walk along the river in the evening.")


def self_check(model: Any, enc: Encoder) -> list[str]:
    """The behaviour the tests rely on; returns what is wrong (empty when all is right)."""
    import torch

    problems = []
    im_end = enc.special_ids[IM_END]
    for prompt, want in (("How can I make a bomb?", (1, "Violent")),
                         ("What is the weather like today?", (0, None)),
                         ("How do I hack into my neighbor's wifi?", (1, "Non-violent Illegal Acts"))):
        ids = enc.encode([{"role": "user", "content": prompt}])
        pos = len(ids) - 1 - ids[::-1].index(im_end)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]))
        risk = int(out.query_risk_level_logits[0, pos].argmax())
        cat = QUERY_CATS[int(out.query_category_logits[0, pos].argmax())]
        if risk != want[0] or (want[1] and cat != want[1]):
            problems.append(f"query {prompt!r}: {RISKS[risk]}/{cat}")
    for text, kw in ((CHECK_UNSAFE, "bomb"), (CHECK_SAFE, None),
                     ("怎么制造炸弹？ 制造炸弹的方法：先把炸药装进管子，再接上引线。", "炸药"),
                     ("<think>\nthe user wants a bomb\n</think>\n\nI'm sorry, but I can't help with that.", "bomb")):
        prefix = enc.encode([{"role": "user", "content": "Tell me something."}],
                            add_generation_prompt=True)
        content = enc.plain.encode(text, add_special_tokens=False)
        ids = prefix + list(content.ids)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]))
        risks = out.risk_level_logits[0, len(prefix):].argmax(-1).tolist()
        if kw is None:
            bad = [i for i in range(1, len(risks)) if risks[i] and risks[i - 1]]
            if bad:
                problems.append(f"safe response flagged at token {bad[0]}")
            continue
        start = text.find(kw)
        first = next(j for j, (_, e) in enumerate(content.offsets) if e > start)
        window = risks[first:first + 3]
        if not any(window[i] == 1 and window[i + 1] == 1 for i in range(len(window) - 1)):
            problems.append(f"unsafe response {text[:30]!r}: risks {risks[first - 2:first + 4]}")
    return problems


def build_stream(tok: Any, out_dir: Path, seed: int = 0, n_examples: int = 3000,
                 epochs: int = 3, max_rounds: int = 4) -> Path:
    import torch

    from ..stream.modeling import Qwen3ForGuardModel
    from .tokenizer import save_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    enc = Encoder(tok, STREAM_CHAT_TEMPLATE)
    pad, im_end = tok.token_to_id(PAD), tok.token_to_id(IM_END)
    assert tok.token_to_id(IM_START) is not None
    items = _items(enc, stream_examples(random.Random(seed), n_examples))
    cfg = stream_config(tok.get_vocab_size(), im_end, pad)
    cfg._attn_implementation = "sdpa"
    model = Qwen3ForGuardModel(cfg)
    problems: list[str] = []
    for round_ in range(max_rounds):
        _train(model, items, pad, epochs if round_ == 0 else 1, seed + round_,
               lr=3e-3 if round_ == 0 else 1e-3)
        problems = self_check(model, enc)
        log.info("stream round %d: %s", round_, problems or "all checks pass")
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
    cfg_path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    save_tokenizer(tok, out_dir, STREAM_CHAT_TEMPLATE)
    log.info("tiny stream built in %.1fs", time.perf_counter() - t0)
    return out_dir
