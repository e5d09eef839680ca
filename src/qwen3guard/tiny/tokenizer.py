"""The tiny byte-level BPE tokenizer shared by both tiny checkpoints.

Qwen2's pre-tokenizer (its split regex, then byte-level), no normalizer (so any text
round-trips exactly), Qwen's special-token spellings appended after the BPE vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from . import data
from .portable import MODEL_INPUT_NAMES

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = "<think>"
END_THINK = "</think>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
ADDED_TOKENS = (THINK, END_THINK)  # added, but not "special" (as in Qwen3)

QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BPE_VOCAB_SIZE = 3000
MODEL_MAX_LENGTH = 2048
TEMPLATE_DIR = Path(__file__).resolve().parent

STREAM_CHAT_TEMPLATE = (TEMPLATE_DIR / "stream_chat_template.jinja").read_text(encoding="utf-8")
GEN_CHAT_TEMPLATE = (TEMPLATE_DIR / "gen_chat_template.jinja").read_text(encoding="utf-8")


def _render_gen(messages: list[dict[str, str]]) -> str:
    import jinja2

    env = jinja2.Environment()
    return env.from_string(GEN_CHAT_TEMPLATE).render(messages=messages)


def training_corpus(seed: int) -> list[str]:
    """The texts the BPE merges are learnt from (deterministic)."""
    rng = random.Random(seed * 7919 + 17)
    texts: list[str] = []
    # The Gen policy templates, many times over, so they compress well.
    for _ in range(30):
        texts.append(_render_gen([{"role": "user", "content": "hello"}]))
        texts.append(_render_gen([{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"}]))
    texts.extend(data.gen_answer(r, c, f) for r in (data.SAFE, data.UNSAFE, data.CONTROVERSIAL)
                 for c in ([], *([x] for x in data.GEN_CATEGORY_ORDER))
                 for f in (None, True, False) for _ in range(5))
    from .features import REFUSAL_KEYWORDS

    # Every keyword, in the spellings it takes in running text, becomes whole tokens.
    for kw in [k for fam in data.FAMILIES for k in fam.keywords] + list(REFUSAL_KEYWORDS):
        for variant in (kw, " " + kw, kw[:1].upper() + kw[1:], " " + kw[:1].upper() + kw[1:]):
            texts.extend([variant] * 30)
    for fam in data.FAMILIES:
        for _ in range(20):
            texts.extend(fam.keywords)
            texts.extend(fam.acts)
            texts.extend(fam.prompts)
            texts.extend(data.fill_response(r, rng) for r in fam.responses)
    for _ in range(15):
        texts.extend(t.format(act=a) for t in data.ACT_TEMPLATES
                     for a in data.SAFE_ACTS + data.VIOLENT_FAMILY.acts + data.ILLEGAL_FAMILY.acts)
        texts.extend(data.SAFE_PROMPTS + data.SAFE_RESPONSES + data.REFUSALS + data.SPOOFS)
        texts.extend(data.pii_prompt(rng) for _ in range(10))
    for _ in range(200):
        texts.append(data.filler_text(60, rng.randrange(1 << 30)))
    texts.extend(f"{IM_START}user\nhello{IM_END}\n{IM_START}assistant\n{THINK}\n\n{END_THINK}\n\nhi"
                 for _ in range(50))
    return texts


def build_tokenizer(seed: int = 0) -> Any:
    """Train the BPE (a ``tokenizers.Tokenizer``), special tokens appended at the end."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(  # type: ignore[call-arg]  # the stub lists no kwargs
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(training_corpus(seed), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return tok


def save_tokenizer(tok: Any, out_dir: Path, chat_template: str) -> None:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and
    chat_template.jinja, loadable with ``AutoTokenizer.from_pretrained``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    added = {}
    for content in SPECIAL_TOKENS + ADDED_TOKENS:
        added[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": content in SPECIAL_TOKENS,
        }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD,
        "unk_token": None,
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "add_prefix_space": False,
        "errors": "replace",
        "chat_template": chat_template,
        # no token_type_ids under transformers 4.x either (see portable.py)
        "model_input_names": list(MODEL_INPUT_NAMES),
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": IM_END, "pad_token": PAD}, indent=2) + "\n", encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
