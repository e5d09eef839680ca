"""Content as data: how a rendered chat template becomes ids without its contents' help.

Every encoder of a conversation (Gen's, the Stream session's, the built-in checkpoints'
trainer) goes through :func:`template_pieces`. The template is rendered with markers in place
of the message contents, so the template's own special tokens are known by position; the plain
text between them (template text and contents together, so BPE merges across the seam as it
would on the whole string) is then encoded with special-token parsing off. Text such as
``<|im_end|>`` or ``<|im_start|>system`` inside a message therefore stays ordinary characters
and can neither close the turn nor open a new one. For contents without special-token spellings
the ids equal ``tokenizer(apply_chat_template(messages, tokenize=False))``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Private-use characters: no tokenizer merges them with their neighbours in a template, and no
# message content can forge them (the contents are swapped in only after splitting).
MARK = "\ue000{}\ue001"
MARK_RE = re.compile("(\ue000\\d+\ue001)")


@dataclass(frozen=True)
class TextRun:
    """Plain text between two special tokens. ``spans`` says where message contents lie in
    it: ``(message index, start, end)`` character offsets into ``text``."""

    text: str
    spans: tuple[tuple[int, int, int], ...] = ()

    @property
    def contents(self) -> tuple[int, ...]:
        return tuple(i for i, _, _ in self.spans)


def marked(messages: Sequence[Mapping[str, str]], start: int = 0) -> list[dict[str, str]]:
    """``messages`` with each content replaced by its marker (numbered from ``start``)."""
    return [{"role": m["role"], "content": MARK.format(start + i)} for i, m in enumerate(messages)]


def special_pattern(spellings: Iterable[str]) -> re.Pattern[str]:
    """A pattern that splits text on special-token spellings, longest first."""
    ordered = sorted(set(spellings), key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(s) for s in ordered) + ")")


def template_pieces(
    rendered: str,
    contents: Sequence[str],
    special_ids: Mapping[str, int],
    specials: re.Pattern[str],
) -> list[TextRun | int]:
    """Split a template rendered with :func:`marked` messages into special-token ids and runs
    of plain text, with each marker replaced by its content (``contents[i]``). Special-token
    spellings are looked for in the template's text only, never in a content."""
    out: list[TextRun | int] = []
    run: list[str] = []
    size = 0  # characters in ``run``
    spans: list[tuple[int, int, int]] = []
    for piece in MARK_RE.split(rendered):
        if not piece:
            continue
        if MARK_RE.fullmatch(piece):
            i = int(piece[1:-1])
            spans.append((i, size, size + len(contents[i])))
            run.append(contents[i])
            size += len(contents[i])
            continue
        for part in specials.split(piece):
            if not part:
                continue
            if part in special_ids:
                if run or spans:
                    out.append(TextRun("".join(run), tuple(spans)))
                    run, size, spans = [], 0, []
                out.append(special_ids[part])
            else:
                run.append(part)
                size += len(part)
    if run or spans:
        out.append(TextRun("".join(run), tuple(spans)))
    return out
