"""Build and train the tiny Qwen3Guard-Gen checkpoint (a ``Qwen3ForCausalLM``).

The attention is wired from the start (:mod:`.prewire`): which keywords the content holds and
whether they are in the assistant's turn reach the answer positions through fixed heads, at
any content length. What the model learns is the read-out: the answer format and which
verdict a pattern of keywords gets. That read-out sees only the answer written so far and the
pooled features, never the policy text, so it is trained (teacher forcing, loss on the answer
tokens) on a short stand-in for the template, which is cheap; the self-check then runs the
real template, long contents included.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data
from .cases import GEN_CASES, GenCase, gen_response_examples, long_cases
from .encoding import Encoder
from .features import select_features
from .prewire import install_grad_masks, prewire
from .progress import Progress, Stage
from .tokenizer import END_THINK, GEN_CHAT_TEMPLATE, IM_END, MODEL_MAX_LENGTH, PAD

log = logging.getLogger(__name__)

GEN_MARKER = "ASSISTANT"  # the token that opens the assistant's turn in the Gen template
_TEMPLATE_PROBES = (
    [{"role": "user", "content": "x"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
)
# Stage A's stand-in for the policy template: the same conversation lines and header.
SHORT_TEMPLATE = (
    "{{- '<|im_start|>user\\n' -}}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{- '\\n\\nASSISTANT: ' + m.content -}}"
    "{%- elif loop.first -%}{{- 'USER: ' + m.content -}}"
    "{%- else -%}{{- '\\n\\nUSER: ' + m.content -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}"
)


@dataclass
class GenSettings:
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    lr: float = 2e-3
    warmup: int = 20
    batch_tokens: int = 3000
    max_batch: int = 32
    n_prompt: int = 1000
    n_response: int = 600
    n_filler: int = 200
    filler_max_words: int = 80
    case_repeats: int = 3
    epochs: int = 3
    extra_rounds: int = 6


def gen_config(vocab_size: int, eos_id: int, pad_id: int, s: GenSettings) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        head_dim=64, max_position_embeddings=MODEL_MAX_LENGTH, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id,
        use_cache=True, architectures=["Qwen3ForCausalLM"], max_window_layers=s.layers,
    )


@dataclass
class _Item:
    ids: list[int]
    n_answer: int  # the last n_answer ids are the answer (ending with <|im_end|>)


def _batches(items: list[_Item], batch_tokens: int, max_batch: int) -> list[list[_Item]]:
    """Length-sorted batches of at most ``batch_tokens`` (padded) tokens."""
    out: list[list[_Item]] = []
    cur: list[_Item] = []
    for it in sorted(items, key=lambda it: len(it.ids)):
        if cur and ((len(cur) + 1) * len(it.ids) > batch_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur = []
        cur.append(it)
    if cur:
        out.append(cur)
    return out


def _loss(model: Any, batch: list[_Item], pad_id: int) -> Any:
    import torch
    import torch.nn.functional as F

    width = max(len(it.ids) for it in batch)
    rows, pos, tgt = [], [], []
    # Right padding: real tokens never see the pads (causal attention), pads get no loss.
    x = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for b, it in enumerate(batch):
        x[b, : len(it.ids)] = torch.tensor(it.ids)
        for j in range(len(it.ids) - it.n_answer, len(it.ids)):
            rows.append(b)
            pos.append(j - 1)
            tgt.append(it.ids[j])
    h = model.model(input_ids=x).last_hidden_state
    logits = model.lm_head(h[torch.tensor(rows), torch.tensor(pos)])
    return F.cross_entropy(logits.float(), torch.tensor(tgt))


def _items(enc: Encoder, examples: Sequence[data.GenExample], im_end: int,
           keep: set[int] | None = None, answer_marker: int | None = None) -> list[_Item]:
    """Teacher-forcing items. With ``keep``, the conversation is cut down to the tokens that
    reach the answer through the wiring (features and markers) plus everything from the
    answer marker on: the answer positions see exactly what they see in the full input."""
    ids = enc.encode_many([e.messages for e in examples])
    answers = enc.plain.encode_batch([e.answer for e in examples], add_special_tokens=False)
    out = []
    for i, a in zip(ids, answers):
        if keep is not None and answer_marker is not None:
            cut = len(i) - 1 - i[::-1].index(answer_marker)
            i = i[:1] + [t for t in i[1:cut] if t in keep] + i[cut:]
        out.append(_Item(i + a.ids + [im_end], len(a.ids) + 1))
    return out


def _examples(rng: random.Random, s: GenSettings) -> dict[str, list[data.GenExample]]:
    every = (data.gen_prompt_examples(rng, s.n_prompt)
             + gen_response_examples(rng, s.n_response)
             + data.gen_long_examples(rng, s.n_filler, s.filler_max_words)
             + [data.GenExample(c.as_messages(), c.answer) for c in GEN_CASES]
             * s.case_repeats)
    modes: dict[str, list[data.GenExample]] = {"prompt": [], "response": []}
    for e in every:
        modes["response" if e.messages[-1]["role"] == "assistant" else "prompt"].append(e)
    return modes


def greedy_answers(model: Any, enc: Encoder, conversations: Sequence[Sequence[dict[str, str]]],
                   decode: Callable[[list[int]], str], im_end: int,
                   max_new_tokens: int = 40, on_answer: Callable[[], None] | None = None,
                   ) -> list[str]:
    """Greedy answers through ``model.generate`` (one conversation at a time); ``on_answer``
    is called after each (progress reporting only)."""
    import torch

    outs = []
    with torch.no_grad():
        for ids in enc.encode_many(conversations):
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=im_end, pad_token_id=im_end)
            outs.append(decode(y[0, len(ids):].tolist()))
            if on_answer is not None:
                on_answer()
    return outs


def check_cases(model: Any, enc: Encoder, tok: Any, cases: Sequence[GenCase],
                on_answer: Callable[[], None] | None = None) -> list[tuple[GenCase, str]]:
    """Cases whose greedy answer is not exactly ``case.answer + <|im_end|>``."""
    im_end = tok.token_to_id(IM_END)
    got = greedy_answers(model, enc, [c.as_messages() for c in cases],
                         lambda ids: tok.decode(ids, skip_special_tokens=False), im_end,
                         on_answer=on_answer)
    return [(c, g) for c, g in zip(cases, got) if g != c.answer + IM_END]


def _schedule(step: int, warmup: int, total: int) -> float:
    """Warm-up, flat, then a linear decay over the last 30% (to 10%); flat 0.3 after."""
    if step >= total:
        return 0.3
    if step < warmup:
        return (step + 1) / warmup
    tail = 0.7 * total
    return 1.0 if step < tail else 1.0 - 0.9 * (step - tail) / (total - tail)


class _Trainer:
    def __init__(self, model: Any, s: GenSettings, rng: random.Random, pad_id: int,
                 total_steps: int) -> None:
        import torch

        self.model, self.s, self.rng, self.pad_id = model, s, rng, pad_id
        self.params = [p for p in model.parameters() if p.requires_grad]
        # No weight decay: it would erode the wired (frozen) slices.
        self.opt = torch.optim.AdamW(self.params, lr=s.lr, betas=(0.9, 0.98), weight_decay=0.0)
        self.step = 0
        self.total = max(1, total_steps)

    def epoch(self, batches: list[list[_Item]], on_step: Callable[[], None] | None = None
              ) -> float:
        import torch

        order = list(range(len(batches)))
        self.rng.shuffle(order)
        last = 0.0
        for i in order:
            batch = batches[i]
            for g in self.opt.param_groups:
                g["lr"] = self.s.lr * _schedule(self.step, self.s.warmup, self.total)
            loss = _loss(self.model, batch, self.pad_id)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.step += 1
            last = float(loss.detach())
            if self.step % 25 == 0:
                log.debug("gen step %d loss %.4f (batch of %d)", self.step, last, len(batch))
            if on_step is not None:
                on_step()
        return last


def train_gen(tok: Any, seed: int, s: GenSettings | None = None, strict: bool = True,
              progress: Progress | None = None) -> Any:
    """The trained Gen model; ``progress(stage, done, total)`` hears of each step."""
    import torch
    from transformers import Qwen3ForCausalLM

    s = s or GenSettings()
    t0 = time.time()
    im_end = tok.token_to_id(IM_END)
    pad_id = tok.token_to_id(PAD)
    enc = Encoder(tok, GEN_CHAT_TEMPLATE)
    short = Encoder(tok, SHORT_TEMPLATE)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    config = gen_config(tok.get_vocab_size(), im_end, pad_id, s)
    config._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(config)
    feats = select_features(tok, [enc.render(m) for m in _TEMPLATE_PROBES], [GEN_MARKER],
                            [END_THINK])
    install_grad_masks(prewire(model.model, feats))
    model.train()

    sets = _examples(rng, s)
    keep = set(feats.token_features) | set(feats.marker_ids) | set(feats.answer_marker_ids)
    t_marker = feats.answer_marker_ids[0]
    batches = [b for ex in sets.values()
               for b in _batches(_items(short, ex, im_end, keep, t_marker), s.batch_tokens,
                                 s.max_batch)]
    log.info("gen data: %d batches in %.1fs", len(batches), time.time() - t0)
    trainer = _Trainer(model, s, rng, pad_id, s.epochs * len(batches))
    loss = 0.0
    training = Stage(progress, "Gen model: training", s.epochs * len(batches))
    for _ in range(s.epochs):
        loss = trainer.epoch(batches, training.step)
    log.info("gen: %d steps, loss %.4f, %.1fs", trainer.step, loss, time.time() - t0)

    cases = list(GEN_CASES) + long_cases()
    for r in range(s.extra_rounds + 1):
        model.eval()
        checking = Stage(progress, "Gen model: self-check" + (f", round {r + 1}" if r else ""),
                         len(cases))
        failed = check_cases(model, enc, tok, cases, on_answer=checking.step)
        model.train()
        if not failed:
            break
        log.info("gen self-check round %d: %d failing: %s", r, len(failed),
                 [(c.messages[-1][1][:40], g) for c, g in failed])
        if r == s.extra_rounds:
            if not strict:
                break
            raise RuntimeError(
                "tiny Gen model failed its self-check: "
                + "; ".join(f"{c.messages[-1][1][:60]!r} -> {g!r}" for c, g in failed))
        trainer.epoch(batches, Stage(progress, f"Gen model: training, round {r + 2}",
                                     len(batches)).step)
    model.eval()
    log.info("gen trained in %.1fs (%d steps)", time.time() - t0, trainer.step)
    return model


def save_gen(model: Any, tok: Any, out_dir: Path) -> None:
    from .portable import make_portable
    from .tokenizer import save_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    im_end = tok.token_to_id(IM_END)
    pad_id = tok.token_to_id(PAD)
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    model.save_pretrained(str(out_dir), safe_serialization=True)
    make_portable(out_dir)  # rope_theta beside rope_parameters: transformers 4.x reads it too
    save_tokenizer(tok, out_dir, GEN_CHAT_TEMPLATE)
    gen_cfg = {"eos_token_id": im_end, "pad_token_id": pad_id, "do_sample": False,
               "max_new_tokens": 64}
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
