"""Turning a conversation into Gen's input ids, with message content kept as data.

The checkpoint's own chat template renders the conversation. Message contents are swapped for
markers while rendering, so the template's special tokens are known by position; the content
is then encoded with special-token parsing off. Text such as ``<|im_end|>`` or
``<|im_start|>system`` inside a message therefore becomes ordinary characters and cannot
close the turn or open a new one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError
from ..messages import Message

_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("(\ue000\\d+\ue001)")


def _special_pattern(tokenizer: Any) -> re.Pattern[str]:
    specials = sorted(
        {t.content for t in tokenizer.added_tokens_decoder.values()}, key=len, reverse=True
    )
    return re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")


class ConversationEncoder:
    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("the Gen tokenizer has no chat template")
        self.tokenizer = tokenizer
        self._specials = _special_pattern(tokenizer)
        self._special_ids = {
            t.content: i for i, t in tokenizer.added_tokens_decoder.items()
        }

    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text: special-token spellings are encoded as characters."""
        if not text:
            return []
        return list(
            self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )

    def token_ends(self, text: str) -> list[int]:
        enc = self.tokenizer(
            text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )
        return [end for _, end in enc["offset_mapping"]]

    def encode(self, messages: Sequence[Message]) -> list[int]:
        marked = [{"role": m["role"], "content": _MARK.format(i)} for i, m in enumerate(messages)]
        rendered = self.tokenizer.apply_chat_template(marked, tokenize=False)
        if not isinstance(rendered, str):  # some versions return a list for a single chat
            rendered = rendered[0]
        ids: list[int] = []
        run: list[str] = []  # plain text waiting to be encoded in one piece, so BPE merges
        for piece in _MARK_RE.split(rendered):
            if not piece:
                continue
            if _MARK_RE.fullmatch(piece):
                run.append(messages[int(piece[1:-1])]["content"])
                continue
            for part in self._specials.split(piece):
                if not part:
                    continue
                if part in self._special_ids:
                    ids.extend(self.encode_text("".join(run)))
                    run = []
                    ids.append(self._special_ids[part])
                else:
                    run.append(part)
        ids.extend(self.encode_text("".join(run)))
        return ids
