r"""Streamed text -> the ids the tokenizer gives the whole text, chunk boundaries notwithstanding.

An LLM's answer arrives in chunks cut anywhere: inside a word, inside a run of spaces, between
``<thi`` and ``nk>``. Encoding each chunk alone would give different ids than encoding the whole
answer (``"bo" + "mb"`` is not ``"bomb"``), and the Stream model was trained on the ids of
whole texts. :class:`Retokenizer` keeps the text that is not yet stable and commits only the
tokens that more text cannot change, so that

    concat(feed(c) for c in chunks) + flush() == tokenizer(concat(chunks)) ids

for every way of cutting the text.

Why it holds. A byte-level BPE tokenizer (Qwen2/Qwen3's) first extracts its added tokens
(``<think>``), normalizes each remaining segment (Qwen3: NFC; the built-in checkpoints: none),
splits it into pre-tokens ("words") with a regex matched left to right, then runs BPE inside
each word alone. So a cut at a word boundary that no later text can move or normalize away is
a cut in the ids: the ids before it are final. The hold-back is exactly the text after the
last such boundary (:meth:`Retokenizer._hold_from`); for Qwen2's regex

    (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}
    | ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+

it is derived as follows. A match that ends before the end of the text read at most one
character past its end (the letter, punctuation or newline run stops at the first character
not in it, ``\s+(?!\S)`` looks at one), except ``\s*[\r\n]+``, which reads its whole
whitespace run. So appending text changes:

1. the last word, which more text can extend (``" wor"`` + ``"ld"``, ``"!"`` + ``"\n"``,
   ``"'"`` + ``"t"``, ``" "`` + ``"y"`` turning the space into ``" y"``), unless no text can:
   a single digit (``\p{N}`` matches one character) or a whole contraction (matched first,
   whatever follows), or an added token;
2. and the word before it when both are whitespace: ``"x\n "`` is ``"\n"``, ``" "``, but
   ``"x\n \n"`` is one word, ``\s*[\r\n]+`` having read the run to the end. (Two
   whitespace words in a row only happen that way: a run without a newline is one word.)

Everything before is settled: after ``"Sure."`` + ``" Here"`` the ``"."`` is committed.
Then two more things can reach back:

3. an added token being completed (``"a <th"`` + ``"ink>"``) ends the segment before it, which
   is then tokenized alone: the cut must also be a word boundary of the text before the partial
   spelling tokenized alone, with the same ids before it (``"a "`` is ``"a"``, ``" "``;
   ``"a <th"`` is ``"a"``, ``" <"``, ``"th"``: the cut is after ``"a"``; ``"\t\t<"`` is
   ``"\t"``, ``"\t"``, ``"<"`` but ``"\t\t"`` alone is one word: nothing is committed);
4. NFC composes a character with the marks after it (``"e"`` + U+0301 is ``"é"``; U+0323 after
   ``"b\u0301"`` reorders and composes into ``"ḅ"``; a Hangul LV syllable takes a T jamo): the
   cut is at a character that starts a new composition (ccc 0, composes with no character
   before it: the text before it normalizes alone; inside a run of marks NFC reorders, the
   offsets are not even in order), and at most the last such character, or just after it
   where it composes with nothing that follows (a digit, ``"."``: so ``"'t"`` is held under
   NFC, ``"ṫ"`` being a letter, but ``"12"`` is not). Canonical composition keeps the regex
   class of the starter (letter, number, whitespace, other; checked in the tests), so a match
   before the cut reads the same class where it looked one character past the cut.

The rule is exact: for every held text some continuation changes its first token (tested, and
the property tests fail when the hold-back is one character shorter). It is applied where the
tokenizer is known to be of this kind (Qwen2's regex split, byte-level, no normalizer or a
Unicode one, added tokens without strip flags); any other falls back to holding the last
``hold_words`` words. ``flush`` commits the rest. Special tokens (``<|im_end|>``) are not
extracted: content is data (``split_special_tokens``); added tokens that are not special
(Qwen3's ``<think>``/``</think>``) are, as they are when the official eval tokenizes a thinking
answer. A piece ends where the next one starts (or at the cut): the tokenizer's own offsets of
a token holding a composed character end before its combining marks.

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

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: Qwen2's pre-tokenizer regex (Qwen2, Qwen2.5, Qwen3 and the built-in checkpoints): the rule
#: of :meth:`Retokenizer._hold_from` is derived for it.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Whole contractions: the regex's first alternative, matched whatever follows.
_CONTRACTIONS = frozenset({"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"})
#: Words to hold with another pre-tokenizer (the rule is not derived for it).
HOLD_WORDS = 2
#: Pending text past this many characters is committed, but for its last ``KEEP_TAIL``.
MAX_PENDING = 512
KEEP_TAIL = 64


@dataclass(frozen=True)
class Piece:
    """One committed token: its id and its character span in the retokenizer's text
    (prefix included), from its start to the next piece's start (tokens of one character
    share their span; combining marks NFC composed into a character belong to its token)."""

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


def exact_rule(tokenizer: Any) -> tuple[bool, str | None]:
    """Whether the exact hold-back applies to ``tokenizer`` (a fast tokenizer splitting with
    Qwen2's regex, then byte-level; no normalizer or a Unicode one; added tokens without
    strip or single-word flags), and the Unicode normal form it normalizes to, if any."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False, None
    try:
        pre = json.loads(backend.pre_tokenizer.__getstate__())
        norm = backend.normalizer
        form = json.loads(norm.__getstate__())["type"] if norm is not None else None
    except Exception:  # an unknown backend: hold words
        return False, None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) != 2:
        return False, None
    split, byte_level = steps
    if not (
        split.get("type") == "Split"
        and split.get("pattern", {}).get("Regex") == QWEN2_PRETOKENIZE_REGEX
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("use_regex")
    ):
        return False, None
    if form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
        return False, None
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(tok, "lstrip", False) or getattr(tok, "rstrip", False):
            return False, None
        if getattr(tok, "single_word", False):
            return False, None
    return True, form


@lru_cache(maxsize=1)
def _compositions() -> tuple[frozenset[str], frozenset[str]]:
    """Characters that compose with one before them (the second of a canonical pair, Hangul V
    and T jamo) and characters that compose with one after them (the first of a pair, Hangul L
    jamo; LV syllables are tested by number). Composition exclusions are kept: holding back
    for them is only more careful."""
    second: set[str] = set()
    first: set[str] = set()
    for cp in range(0x30000):  # every canonical decomposition is below U+2FA1E
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                first.add(chr(int(parts[0], 16)))
                second.add(chr(int(parts[1], 16)))
    second.update(chr(c) for c in range(0x1161, 0x1176))
    second.update(chr(c) for c in range(0x11A8, 0x11C3))
    first.update(chr(c) for c in range(0x1100, 0x1113))
    return frozenset(second), frozenset(first)


def _decomposed(c: str, form: str) -> str:
    return unicodedata.normalize("NFKD" if "K" in form else "NFD", c)


def starts_composition(c: str, form: str) -> bool:
    """Whether a normalization boundary lies before ``c``: the text before it normalizes the
    same whatever follows (``c`` has combining class 0 and composes with nothing before it).
    Characters unknown to this Python's Unicode tables are not taken as boundaries."""
    if ord(c) < 0x300:
        return True
    if unicodedata.category(c) == "Cn":
        return False
    h = _decomposed(c, form)[0]
    return unicodedata.combining(h) == 0 and h not in _compositions()[0]


def ends_composition(c: str, form: str) -> bool:
    """Whether ``c``, a boundary character, also ends its normalized text: nothing after it can
    compose with it or reorder into it (a digit, ``"."``; not ``"e"``, ``"="`` or ``"가"``)."""
    if unicodedata.category(c) == "Cn":
        return False
    d = _decomposed(c, form)
    cp = ord(c)
    if (0xAC00 <= cp <= 0xD7A3 and (cp - 0xAC00) % 28 == 0) or "\u1161" <= d[-1] <= "\u1175":
        return False  # a Hangul LV syllable (or an L + V pair) takes a T jamo
    return all(unicodedata.combining(x) == 0 for x in d) and d[-1] not in _compositions()[1]


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

    ``exact`` (default: where it applies) holds back only what more text can still change
    (see the module docstring); ``False`` holds the last ``hold_words`` words instead.
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
        exact: bool | None = None,
    ) -> None:
        if not 0 < keep_tail < max_pending:
            raise ValueError("need 0 < keep_tail < max_pending")
        self._tok = tokenizer
        self._added = tuple(kept_added) if kept_added is not None else kept_added_tokens(tokenizer)
        self._max_added = max((len(a) for a in self._added), default=0)
        self._hold = max(1, hold_words)
        self.exact, self._form = exact_rule(tokenizer) if exact is None or exact else (False, None)
        if exact and not self.exact:
            raise ValueError("the exact hold-back is derived for Qwen2's pre-tokenizer only")
        convert = getattr(tokenizer, "convert_tokens_to_ids", None)
        self._added_ids = frozenset(
            i for i in (convert(a) if convert else None for a in self._added) if isinstance(i, int)
        )
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
        # Cut where the first held token starts (a word boundary, hence a character one), or
        # after all the text. A piece ends where the next one starts (tokens of one character
        # share a start and end): the offsets of a token holding a character that NFC composed
        # end before its combining marks.
        cut = len(pending) if n == len(ids) else offsets[n][0]
        pieces = []
        end = cut
        for k in range(n - 1, -1, -1):
            if k + 1 < n and offsets[k + 1][0] > offsets[k][0]:
                end = offsets[k + 1][0]
            pieces.append(Piece(ids[k], base + offsets[k][0], base + end))
        pieces.reverse()
        self._start = base + cut
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

    @staticmethod
    def _words(word_ids: Sequence[int | None]) -> list[int]:
        """Word index per token; a token without a word (should not happen) is its own word."""
        words: list[int] = []
        last = -1
        for k, w in enumerate(word_ids):
            if w is None:
                w = last + 1 if k else 0
            last = max(last, w)
            words.append(w)
        return words

    def _stable_count(
        self,
        pending: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
        word_ids: Sequence[int | None],
    ) -> int:
        """How many of the pending text's tokens no later text can change."""
        if self.exact:
            cut = self._hold_from(pending, ids, offsets, word_ids)
            n = next((k for k, (a, _) in enumerate(offsets) if a >= cut), len(ids))
        else:
            n = self._word_count(pending, ids, offsets, word_ids)
        # Never cut between two tokens that share a start (bytes of one character).
        while 0 < n < len(ids) and offsets[n][0] == offsets[n - 1][0]:
            n -= 1
        return n

    def _hold_from(
        self,
        pending: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
        word_ids: Sequence[int | None],
    ) -> int:
        """Offset in ``pending`` of the text more text can still change (the rule of the
        module docstring): everything before it is committed."""
        words = self._words(word_ids)
        firsts = [k for k in range(len(ids)) if k == 0 or words[k] != words[k - 1]]
        starts = [offsets[k][0] for k in firsts]
        cuts = self._cuts(pending, offsets, firsts)
        last = pending[starts[-1] :]
        # 1. The last word, unless no text can change it.
        if self._settled_word(ids[firsts[-1] :], last):
            hold = len(pending)
        else:
            hold = starts[-1]
            # 2. A newline run that more whitespace would join: "\n" + " " (+ "\n").
            if len(starts) > 1 and self._open_newline_run(pending[starts[-2] : starts[-1]], last):
                hold = starts[-2]
        # 4. What NFC can still compose or reorder (not across an added token: a segment
        # of its own).
        if self._form is not None:
            seg = max((offsets[k][1] for k, i in enumerate(ids) if i in self._added_ids), default=0)
            hold = min(hold, max(seg, self._normal_end(pending, seg)))
        # 3. A partial added token: the cut is also a word boundary of the text before it.
        segments = {s: self._segment(pending[:s]) for s in self._partial_added_starts(pending)}
        for b in reversed([b for b in [*cuts, len(pending)] if b <= hold]):
            if all(self._agrees(b, s, seg, ids, offsets) for s, seg in segments.items()):
                return b
        return 0

    @staticmethod
    def _agrees(
        b: int,
        s: int,
        segment: tuple[list[int], list[tuple[int, int]], set[int]],
        ids: list[int],
        offsets: list[tuple[int, int]],
    ) -> bool:
        """Whether cutting at ``b`` also holds if an added token completes at ``s``: ``b`` is a
        cut of the text before ``s`` tokenized alone, with the ids before it the same."""
        seg_ids, seg_offsets, seg_cuts = segment
        if b > s or (b < s and b not in seg_cuts):
            return False
        n = sum(1 for a, _ in offsets if a < b)
        n_seg = len(seg_ids) if b == s else sum(1 for a, _ in seg_offsets if a < b)
        return ids[:n] == seg_ids[:n_seg]

    def _cuts(self, text: str, offsets: Sequence[Sequence[int]], firsts: list[int]) -> list[int]:
        """The word starts of ``text`` (given its offsets and the first token of each word)
        where the text can be cut: no token before reaches past it (one character that
        normalizes to two words, U+0958), and, under a normalizer, the text before normalizes
        alone (not inside a run of marks NFC reorders: the offsets there are not in order)."""
        out = []
        reach = [0]  # reach[k]: how far the tokens before k reach
        for a, e in offsets:
            reach.append(max(reach[-1], a + 1, e))
        for k in firsts:
            b = offsets[k][0]
            if k and reach[k] > b:
                continue
            if self._form is not None and b < len(text) and not starts_composition(text[b], self._form):
                continue
            out.append(b)
        return out

    @staticmethod
    def _open_newline_run(before: str, last: str) -> bool:
        """Whether the last two words are a ``\\s*[\\r\\n]+`` run and the whitespace
        after it: more whitespace with a newline makes them one word."""
        return last.isspace() and before.isspace() and before[-1] in "\r\n"

    def _settled_word(self, ids: list[int], word: str) -> bool:
        """A last word no text can change: an added token, one digit (``\\p{N}`` matches one
        character), a whole contraction (the regex tries it first)."""
        if len(ids) == 1 and ids[0] in self._added_ids:
            return True
        if len(word) == 1 and unicodedata.category(word)[0] == "N":
            return True
        return word.lower() in _CONTRACTIONS

    def _normal_end(self, pending: str, lo: int) -> int:
        """Length of the prefix of ``pending`` that normalizes the same whatever follows."""
        form = self._form
        assert form is not None
        for b in range(len(pending) - 1, lo - 1, -1):
            c = pending[b]
            if starts_composition(c, form):
                return b + 1 if ends_composition(c, form) else b
        return lo

    def _segment(self, text: str) -> tuple[list[int], list[tuple[int, int]], set[int]]:
        """Ids, offsets and cuts of ``text`` tokenized alone (the segment before an added
        token)."""
        if not text:
            return [], [], {0}
        enc = self._tok(
            text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )
        offsets = [(int(a), int(e)) for a, e in enc["offset_mapping"]]
        words = self._words(enc.word_ids())
        firsts = [k for k in range(len(words)) if k == 0 or words[k] != words[k - 1]]
        return list(enc["input_ids"]), offsets, set(self._cuts(text, offsets, firsts))

    def _word_count(
        self,
        pending: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
        word_ids: Sequence[int | None],
    ) -> int:
        """Tokens before the last ``hold_words`` words (and before a partial added token and
        the word before it): for tokenizers the exact rule is not derived for."""
        words = self._words(word_ids)
        distinct = sorted(set(words))
        if len(distinct) <= self._hold:
            return 0
        hold_from_word = distinct[-self._hold]
        partial = self._partial_added_starts(pending)
        if partial:
            # The word containing the partial spelling and the word before it may change.
            k = next((k for k, (a, b) in enumerate(offsets) if b > partial[0]), len(ids) - 1)
            i = distinct.index(words[k])
            hold_from_word = min(hold_from_word, distinct[max(0, i - 1)])
        return next((k for k, w in enumerate(words) if w >= hold_from_word), len(ids))

    def _partial_added_starts(self, pending: str) -> list[int]:
        """Where a trailing proper prefix of an added-token spelling starts (earliest first)."""
        if not self._added:
            return []
        lo = max(0, len(pending) - self._max_added + 1)
        out = []
        for s in range(lo, len(pending)):
            tail = pending[s:]
            if any(len(a) > len(tail) and a.startswith(tail) for a in self._added):
                out.append(s)
        return out


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
