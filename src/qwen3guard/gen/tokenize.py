"""Turning a conversation into Gen's input ids, with message content kept as data.

The checkpoint's own chat template renders the conversation, with the contents kept as data by
:func:`qwen3guard.encoding.template_pieces` (the one place that rule lives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..encoding import TextRun, marked, special_pattern, template_pieces
from ..errors import InvalidInputError
from ..messages import Message


class ConversationEncoder:
    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("the Gen tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.special_ids: dict[str, int] = {
            t.content: i for i, t in tokenizer.added_tokens_decoder.items()
        }
        self.specials = special_pattern(self.special_ids)

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

    def pieces(self, messages: Sequence[Message], *, extra: str | None = None
               ) -> list[TextRun | int]:
        """The template's special ids and plain-text runs for ``messages`` (contents as data).
        With ``extra``, an assistant turn with that content is rendered after them."""
        contents = [m["content"] for m in messages]
        conv = marked(messages)
        if extra is not None:
            conv.append(marked([{"role": "assistant", "content": extra}], len(messages))[0])
            contents.append(extra)
        rendered = self.tokenizer.apply_chat_template(conv, tokenize=False)
        if not isinstance(rendered, str):  # some versions return a list for a single chat
            rendered = rendered[0]
        return template_pieces(rendered, contents, self.special_ids, self.specials)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        ids: list[int] = []
        for piece in self.pieces(messages):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids.extend(self.encode_text(piece.text))
        return ids
