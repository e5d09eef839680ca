"""Conversation -> ids, the way the runtime does it (content is data).

The chat template is rendered with markers in place of the contents; the template's own
special tokens are then known by position and the plain text between them (template text and
contents together, so BPE merges across the seam as it would on the whole string) is encoded
with special-token parsing off. For contents without special-token spellings this gives the
same ids as ``tokenizer(apply_chat_template(messages, tokenize=False))``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("(\ue000\\d+\ue001)")


class Encoder:
    """Encodes conversations with a ``tokenizers.Tokenizer`` and a Jinja chat template."""

    def __init__(self, tok: Any, chat_template: str) -> None:
        import jinja2

        self.tok = tok
        self.plain = tok.__class__.from_str(tok.to_str())
        self.plain.encode_special_tokens = True
        self.template = jinja2.Environment().from_string(chat_template)
        added = tok.get_added_tokens_decoder()
        self.special_ids = {t.content: i for i, t in added.items()}
        specials = sorted(self.special_ids, key=len, reverse=True)
        self._specials_re = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.template.render(messages=list(messages),
                                    add_generation_prompt=add_generation_prompt)

    def _pieces(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool
                ) -> list[str | int]:
        marked = [{"role": m["role"], "content": _MARK.format(i)} for i, m in enumerate(messages)]
        rendered = self.render(marked, add_generation_prompt)
        out: list[str | int] = []
        run: list[str] = []
        for piece in _MARK_RE.split(rendered):
            if not piece:
                continue
            if _MARK_RE.fullmatch(piece):
                run.append(messages[int(piece[1:-1])]["content"])
                continue
            for part in self._specials_re.split(piece):
                if not part:
                    continue
                if part in self.special_ids:
                    if run:
                        out.append("".join(run))
                        run = []
                    out.append(self.special_ids[part])
                else:
                    run.append(part)
        if run:
            out.append("".join(run))
        return out

    def encode_text(self, text: str) -> list[int]:
        return list(self.plain.encode(text, add_special_tokens=False).ids) if text else []

    def encode_many(self, conversations: Sequence[Sequence[dict[str, str]]],
                    add_generation_prompt: bool = False) -> list[list[int]]:
        pieces = [self._pieces(c, add_generation_prompt) for c in conversations]
        texts = [p for ps in pieces for p in ps if isinstance(p, str)]
        encoded = iter(self.plain.encode_batch(texts, add_special_tokens=False)) if texts else iter(())
        out: list[list[int]] = []
        for ps in pieces:
            ids: list[int] = []
            for p in ps:
                if isinstance(p, int):
                    ids.append(p)
                else:
                    ids.extend(next(encoded).ids)
            out.append(ids)
        return out

    def encode(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
               ) -> list[int]:
        return self.encode_many([messages], add_generation_prompt)[0]
