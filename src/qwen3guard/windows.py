"""Content longer than the model's context is judged whole, in overlapping windows.

A window is a character span of the judged message; the other messages of the conversation
are context and keep their most recent part when they must be shortened. The verdict of a
windowed content is the worst of its windows (see ``verdict.worst``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .messages import Message

# Maps a text to the end offsets (in characters) of its tokens, in order.
TokenEnds = Callable[[str], Sequence[int]]


def char_spans(ends: Sequence[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """Split a text whose tokens end at ``ends`` into spans of at most ``size`` tokens that
    overlap by ``overlap`` tokens, so no phrase is cut without also appearing whole."""
    n = len(ends)
    if size <= 0:
        raise ValueError("window size must be positive")
    overlap = max(0, min(overlap, size // 2))
    if n <= size:
        return [(0, ends[-1] if n else 0)]
    spans = []
    start_tok = 0
    step = size - overlap
    while True:
        end_tok = min(start_tok + size, n)
        start_char = ends[start_tok - 1] if start_tok > 0 else 0
        spans.append((start_char, ends[end_tok - 1]))
        if end_tok >= n:
            break
        start_tok += step
    return spans


def window_conversation(
    messages: Sequence[Message],
    *,
    token_ends: TokenEnds,
    budget: int,
    overlap_fraction: float = 0.125,
) -> list[list[Message]]:
    """Return one conversation per window; a single one when everything fits in ``budget``."""
    lengths = [len(token_ends(m["content"])) for m in messages]
    if sum(lengths) <= budget:
        return [list(messages)]
    *context, judged = messages
    # Context gets at most a third of the budget, newest first; the judged message the rest.
    context_budget = budget // 3 if context else 0
    kept: list[Message] = []
    remaining = context_budget
    for m, n in zip(reversed(context), reversed(lengths[:-1])):
        if remaining <= 0:
            break
        if n <= remaining:
            kept.append(m)
            remaining -= n
        else:
            ends = token_ends(m["content"])
            cut = ends[n - remaining - 1]
            kept.append({"role": m["role"], "content": m["content"][cut:]})
            remaining = 0
    kept.reverse()
    # Keep the system message's position rule of the template: if it was dropped, fine.
    size = budget - sum(len(token_ends(m["content"])) for m in kept)
    size = max(size, budget // 2)
    spans = char_spans(token_ends(judged["content"]), size, int(size * overlap_fraction))
    text = judged["content"]
    spans[-1] = (spans[-1][0], len(text))  # the tail after the last token end, if any
    return [kept + [{"role": judged["role"], "content": text[a:b]}] for a, b in spans]


def approx_token_ends(text: str) -> list[int]:
    """Estimated token end offsets for a tokenizer we cannot see, erring towards more tokens.

    Costs per character, against Qwen3's byte-level BPE (151k vocabulary): ASCII letters and
    whitespace 0.4 (English averages over 4 characters a token; even random letters about
    2.5), digits and punctuation 1 (digits are split one by one), 2-byte characters 1,
    3-byte characters (CJK) 1.5, 4-byte characters (emoji) 4, one per UTF-8 byte, the hard
    bound of a byte-level BPE. Text built to beat the estimate can still overflow a window;
    the server then refuses the request and the check fails closed. Pass ``token_ends=`` to
    :class:`~qwen3guard.gen.remote.OpenAIGenBackend` (e.g. the checkpoint's tokenizer offsets) to be exact.
    """
    ends: list[int] = []
    cost = 0.0
    for i, ch in enumerate(text):
        if ch.isascii():
            cost += 0.4 if (ch.isalpha() or ch.isspace()) else 1.0
        else:
            cost += _WIDE_COST.get(len(ch.encode("utf-8", "surrogatepass")), 4.0)
        while cost >= 1.0 - 1e-9:
            ends.append(i + 1)
            cost -= 1.0
    if cost > 1e-9 or (text and not ends):
        ends.append(len(text))
    return ends


_WIDE_COST = {2: 1.0, 3: 1.5, 4: 4.0}
