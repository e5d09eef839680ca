"""Streamed text -> the ids the tokenizer gives the whole text, chunk boundaries notwithstanding.

An LLM's answer arrives in chunks cut anywhere: inside a word, inside a run of spaces, between
``<thi`` and ``nk>``. Encoding each chunk alone would give different ids than encoding the whole
answer (``"bo" + "mb"`` is not ``"bomb"``), and the Stream model was trained on the ids of
whole texts. :class:`Retokenizer` keeps the text that is not yet stable and commits only the
tokens that more text cannot change, so that

    concat(feed(c) for c in chunks) + flush() == tokenizer(concat(chunks)) ids

for every way of cutting the text.

Why it holds. A byte-level BPE tokenizer (Qwen2/Qwen3's) first extracts its added tokens
(``<think>``), then splits each remaining segment into pre-tokens ("words") with a regex
matched left to right, then runs BPE inside each word alone. Appending text can only change
the words whose regex match reached the end of the text or looked past it: in Qwen2's regex
that is at most the last two (``"x "`` + ``"y"`` turns the trailing space into part of
``" y"``; ``"!"`` + ``"\\n"`` merges). An added token being completed (``"a <th"`` +
``"ink>"``) also re-splits the word before it. So a feed re-encodes the pending text and
commits every token except those of the last two words and of any trailing prefix of an added
token (and the word before it). ``flush`` commits the rest. Special tokens (``<|im_end|>``)
are not extracted: content is data (``split_special_tokens``); added tokens that are not
special (Qwen3's ``<think>``/``</think>``) are, as they are when the official eval tokenizes
a thinking answer.

The pending text is re-encoded on each feed, so the cost of a feed is that of encoding the
chunk plus a few words. Text without word boundaries (a 10,000-character "word", CJK without
punctuation) would stay pending and be re-encoded whole on every feed: quadratic. So pending
text is bounded: past ``max_pending`` characters every token that starts more than
``keep_tail`` characters before the end is committed (a word that long is not going to merge
back; the ids of such a word can differ from the whole text's near the cut, nowhere else). And
the retokenizer holds only the text it has not released (``text`` reads by absolute offset),
so a long answer costs linear time and constant memory here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: How many trailing words stay pending until more text (or the end) arrives.
HOLD_WORDS = 2
#: Pending text past this many characters is committed, but for its last ``KEEP_TAIL``.
MAX_PENDING = 512
KEEP_TAIL = 64


@dataclass(frozen=True)
class Piece:
    """One committed token: its id and its character span in the retokenizer's text
    (prefix included)."""

    token_id: int
    start: int
    end: int


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` with special-token spellings encoded as characters."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def kept_added_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Spellings of the added tokens that plain-text encoding still turns into one token
    (Qwen3: ``<think>``, ``</think>``, ...), found by asking the tokenizer itself."""
    out = []
    for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        content = getattr(tok, "content", None)
        if content and encode_plain(tokenizer, content) == [tid]:
            out.append(content)
    return tuple(sorted(set(out), key=len, reverse=True))


class TextTail:
    """A growing text read by absolute offsets that keeps only its tail: what was released
    cannot be read again (``IndexError``)."""

    def __init__(self, text: str = "") -> None:
        self._buf = text
        self._off = 0  # absolute offset of ``_buf[0]``

    def __len__(self) -> int:
        return self._off + len(self._buf)

    def __getitem__(self, key: slice) -> str:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TextTail takes slices")
        a = 0 if key.start is None else key.start
        b = len(self) if key.stop is None else key.stop
        if a < self._off:
            raise IndexError(f"text before offset {self._off} was released")
        return self._buf[a - self._off : max(a, b) - self._off]

    def append(self, chunk: str) -> None:
        self._buf += chunk

    def release(self, upto: int) -> None:
        """Forget the text before offset ``upto``."""
        if upto > self._off:
            self._buf = self._buf[upto - self._off :]
            self._off = upto

    def __str__(self) -> str:
        return self._buf if self._off == 0 else f"...{self._buf}"


class Retokenizer:
    """Incremental tokenization of one text stream.

    ``prefix`` is text that precedes the stream in the tokenized string and must be tokenized
    together with it (the chat template's ``"assistant\\n"`` before the answer: a leading
    newline in the answer merges with it). Offsets of :class:`Piece` are in
    ``prefix + text``; pieces that end inside the prefix belong to the template. ``text``
    holds the text from the first piece the last call returned on (older text is released).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        prefix: str = "",
        kept_added: Sequence[str] | None = None,
        hold_words: int = HOLD_WORDS,
        max_pending: int = MAX_PENDING,
        keep_tail: int = KEEP_TAIL,
    ) -> None:
        if not 0 < keep_tail < max_pending:
            raise ValueError("need 0 < keep_tail < max_pending")
        self._tok = tokenizer
        self._added = tuple(kept_added) if kept_added is not None else kept_added_tokens(tokenizer)
        self._max_added = max((len(a) for a in self._added), default=0)
        self._hold = max(1, hold_words)
        self._max_pending = max_pending
        self._keep_tail = keep_tail
        self.prefix_len = len(prefix)
        self.text = TextTail(prefix)  # everything received, prefix included; read by offset
        self._start = 0  # offset in ``text`` of the first not-yet-committed character
        self.forced_commits = 0  # how often pending text was committed for its length

    @property
    def pending(self) -> str:
        """Text received but not yet committed as tokens."""
        return self.text[self._start :]

    def feed(self, chunk: str) -> list[Piece]:
        """Add text; return the tokens that became stable."""
        self.text.release(self._start)  # the last call's pieces have been read
        if chunk:
            self.text.append(chunk)
        return self._commit(final=False)

    def flush(self) -> list[Piece]:
        """The end of the text: commit everything pending."""
        self.text.release(self._start)
        return self._commit(final=True)

    # -- internals ---------------------------------------------------------------------------

    def _commit(self, *, final: bool) -> list[Piece]:
        pending = self.text[self._start :]
        if not pending:
            return []
        enc = self._tok(
            pending,
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
        )
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        if not ids:
            return []
        if final:
            n = len(ids)
        else:
            n = self._stable_count(pending, ids, offsets, enc.word_ids())
            if n < len(ids) and len(pending) - offsets[n][0] > self._max_pending:
                n = max(n, self._forced_count(pending, offsets))
            if n == 0:
                return []
        base = self._start
        pieces = [Piece(ids[k], base + offsets[k][0], base + offsets[k][1]) for k in range(n)]
        if final or n == len(ids):
            self._start = len(self.text) if final else base + offsets[n - 1][1]
        else:
            # Cut where the first held token starts: a word boundary, hence a character one.
            self._start = base + offsets[n][0]
        return pieces

    def _forced_count(self, pending: str, offsets: list[tuple[int, int]]) -> int:
        """Tokens to commit of a pending text too long to wait for a word boundary: all that
        start before its last ``keep_tail`` characters."""
        cut = len(pending) - self._keep_tail
        n = next((k for k, (a, _) in enumerate(offsets) if a >= cut), len(offsets))
        while 0 < n < len(offsets) and offsets[n][0] == offsets[n - 1][0]:
            n -= 1  # never between two tokens of one character
        if n:
            self.forced_commits += 1
        return n

    def _stable_count(
        self,
        pending: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
        word_ids: Sequence[int | None],
    ) -> int:
        # Word index per token; a token without a word (should not happen) is its own word.
        words: list[int] = []
        last = -1
        for k, w in enumerate(word_ids):
            if w is None:
                w = last + 1 if k else 0
            last = max(last, w)
            words.append(w)
        distinct = sorted(set(words))
        if len(distinct) <= self._hold:
            return 0
        hold_from_word = distinct[-self._hold]
        partial = self._partial_added_start(pending)
        if partial is not None:
            # The word containing the partial spelling and the word before it may change.
            k = next((k for k, (a, b) in enumerate(offsets) if b > partial), len(ids) - 1)
            i = distinct.index(words[k])
            hold_from_word = min(hold_from_word, distinct[max(0, i - 1)])
        n = next((k for k, w in enumerate(words) if w >= hold_from_word), len(ids))
        # Never cut between two tokens that share a start (bytes of one character).
        while 0 < n < len(ids) and offsets[n][0] == offsets[n - 1][0]:
            n -= 1
        return n

    def _partial_added_start(self, pending: str) -> int | None:
        """Where a trailing proper prefix of an added-token spelling starts, if any."""
        if not self._added:
            return None
        lo = max(0, len(pending) - self._max_added + 1)
        for s in range(lo, len(pending)):
            tail = pending[s:]
            if any(len(a) > len(tail) and a.startswith(tail) for a in self._added):
                return s
        return None


class IncrementalDecoder:
    """Ids -> text, one id at a time, without splitting a character between tokens: a token
    that ends inside a multi-byte character yields ``""`` and the character comes with the
    token that completes it."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._stream = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            try:
                from tokenizers.decoders import DecodeStream

                self._stream = DecodeStream(skip_special_tokens=False)
                self._backend = backend
            except ImportError:  # tokenizers < 0.21
                self._stream = None
        self._pending: list[int] = []

    def step(self, token_id: int) -> str:
        if self._stream is not None:
            out = self._stream.step(self._backend, int(token_id))
            return out or ""
        self._pending.append(int(token_id))
        text = self._tok.decode(self._pending, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return ""
        self._pending = []
        return text
