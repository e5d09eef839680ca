"""Running a guard on benchmark rows, through the backends' public APIs.

Gen: :func:`predict_gen` (verdicts through ``guard.check_batch``: windows, fail closed) and
:func:`predict_gen_raw` (the model's raw answers through the Gen backend's ``generate``, for
``--compat official``).

Stream: :func:`predict_stream` (this project's way: a session opened on the prompt is fed the
answer's ids) and :func:`predict_stream_official` (``eval/eval_stream.py`` of QwenLM/Qwen3Guard
at commit 6a52eca94b3d2aedb8aebd36baa353828d4166f1: one forward over the whole conversation,
scored from its ``split_idx``). Both use the local Stream backend's public ``forward`` /
``token_verdicts`` / ``query_verdict`` / ``plan_prompt`` and its ``tokenizer``.

Where scoring starts in an answer (``split_idx``), official, ``process_conversation_response``:

- not thinking: after the *first* ``</think>`` + ``\\n\\n`` token pair of the conversation
  (``index + 1``); without such a pair the script's ``assert`` fails;
- ``--thinking``: the index of the ``assistant`` token of the *first* ``<|im_start|>``
  ``assistant`` pair, ``+ 4`` (the header ``assistant``, ``\\n``, ``<think>``, ``\\n``), whatever
  those tokens are: with an empty think block (``<think>`` ``\\n\\n`` ``</think>``) scoring
  starts at ``</think>``.

:func:`official_split` is that rule, used by ``--compat official``. :func:`score_start` is this
project's: the same two rules, applied to the *last* assistant turn (the answer being judged;
on single-turn data, which Qwen3GuardTest is, the two coincide) and, for ``--thinking``, only
when the turn opens with ``<think>``; a template without think blocks (the built-in small
checkpoints') scores from the answer's first token instead of failing or skipping 2 tokens.
``tests/test_fidelity_eval.py`` shows where the two differ.

The 4 template tokens after the user turn (``\\n``, ``<|im_start|>``, ``assistant``, ``\\n``):
the official README's streaming loop feeds them with ``role="assistant"`` and prints their
risk; the official evaluation does not score them (``split_idx`` is past them), and neither do
this project's sessions, which feed them but report no verdict for them. A risk on a template
token is not a risk of anything the assistant wrote, and a flag there would stop an answer
before its first token: they are deliberately not reported (``tests/test_fidelity_eval.py::
test_template_tokens_after_the_user_turn_are_not_scored``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import GuardOutputError, GuardUnavailableError, InvalidInputError
from ..verdict import Verdict
from .metrics import consecutive_flag


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the cli extra is not installed: no bar
        return None
    return tqdm(total=total, unit="row", desc=desc, file=sys.stderr)


# -- Gen --------------------------------------------------------------------------------------


def predict_gen(
    guard: Any, conversations: Sequence[Any], *, batch_size: int = 16, progress: bool = False
) -> list[Verdict | Exception]:
    """Gen verdicts for many conversations, ``batch_size`` per ``check_batch`` call. A row the
    guard cannot judge yields its exception in place; an unreachable guard raises."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    bar = progress_bar(len(conversations), "gen eval", progress)
    out: list[Verdict | Exception] = []
    try:
        for start in range(0, len(conversations), batch_size):
            batch = list(conversations[start : start + batch_size])
            for r in guard.check_batch(batch, return_exceptions=True):
                if isinstance(r, GuardUnavailableError):
                    raise r
                out.append(r)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return out


def predict_gen_raw(
    guard: Any, conversations: Sequence[Any], *, batch_size: int = 16, progress: bool = False
) -> list[str | Exception]:
    """The Gen model's raw answers (``guard.gen.generate``), one per conversation, as
    ``eval_gen.py`` reads them: the whole conversation in one prompt (no windows), greedy,
    ``max_new_tokens`` of the backend (the official script uses 128: ``qwen3guard eval
    --compat official`` builds its guard so). End-of-turn tokens are removed, as the script's
    ``decode(..., skip_special_tokens=True)`` does. A row the backend cannot run (too long,
    bad input) yields its exception; an unreachable guard raises."""
    from ..messages import normalize_messages

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    backend = getattr(guard, "gen", None)
    if backend is None:
        raise GuardUnavailableError("Gen evaluation needs a Gen model")
    bar = progress_bar(len(conversations), "gen eval (official)", progress)
    out: list[str | Exception] = [InvalidInputError("not run")] * len(conversations)
    try:
        for start in range(0, len(conversations), batch_size):
            idx: list[int] = []
            batch: list[Any] = []
            for k in range(start, min(start + batch_size, len(conversations))):
                try:
                    batch.append(normalize_messages(conversations[k]))
                    idx.append(k)
                except InvalidInputError as exc:
                    out[k] = exc
            results = backend.generate(batch) if batch else []
            for k, r in zip(idx, results):
                if isinstance(r, GuardUnavailableError):
                    raise r
                if isinstance(r, BaseException):
                    out[k] = r if isinstance(r, Exception) else RuntimeError(str(r))
                else:
                    out[k] = str(r).replace("<|im_end|>", "").replace("<|endoftext|>", "")
            if bar is not None:
                bar.update(min(batch_size, len(conversations) - start))
    finally:
        if bar is not None:
            bar.close()
    return out


# -- Stream -----------------------------------------------------------------------------------


@dataclass
class StreamPrediction:
    """What the Stream model said about one row.

    For an answer: ``risks`` are the scored tokens' risks (from ``split_index`` on, in
    whole-conversation ids), ``pred`` / ``flag_index`` the official rule's result
    (``flag_index`` in whole-conversation ids, ``None`` when not flagged). For a prompt: ``pred``
    is the query head's risk and there is no ``flag_index``.
    """

    kind: str  # "response" | "prompt"
    pred: str
    flag_index: int | None = None
    split_index: int | None = None
    n_ids: int | None = None
    risks: list[str] = field(default_factory=list)
    # where the session's own ("eval") debounce first flagged, in whole-conversation ids
    session_flag_index: int | None = None
    # "session": fed token by token to a session opened on the prompt; "forward": one forward
    # over the whole conversation (the official computation)
    method: str | None = None

    @property
    def flag_response_index(self) -> int | None:
        """The flagged token's position among the scored tokens (0 = first scored)."""
        if self.flag_index is None or self.split_index is None:
            return None
        return self.flag_index - self.split_index


def stream_tokenizer(guard: Any) -> Any:
    """The local Stream model's tokenizer (the benchmark's token indices refer to it)."""
    backend = getattr(guard, "stream", None)
    tok = getattr(backend, "tokenizer", None)
    if tok is not None:
        return tok
    raise GuardUnavailableError(
        "stream evaluation needs a local Stream model (its tokenizer gives the token indices "
        "the benchmark's unsafe spans refer to): pass --stream-model"
    )


def conversation_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, official: bool = False
) -> list[int]:
    """The whole conversation's ids as the official script computes them: the chat template's
    text (``add_generation_prompt=False, enable_thinking=False``), tokenized (``official``:
    with the tokenizer's default special tokens, exactly as ``tokenizer(text)``; Qwen
    tokenizers add none)."""
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        tokenize=False,
        add_generation_prompt=False,
        enable_thinking=False,
    )
    if not isinstance(text, str):
        text = text[0]
    if official:
        return list(tokenizer(text)["input_ids"])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def official_split(tokens: Sequence[str], *, thinking: bool) -> int | None:
    """``split_idx`` of ``process_conversation_response`` (see the module doc); ``None`` where
    the official script's ``assert`` fails."""
    for i in range(1, len(tokens)):
        if thinking and tokens[i - 1] == "<|im_start|>" and tokens[i] == "assistant":
            return i + 4
        if not thinking and tokens[i - 1] == "</think>" and tokens[i] == "\n\n":
            return i + 1
    return None


def score_start(tokens: Sequence[str], turn_start: int, fed_start: int, *, thinking: bool) -> int:
    """This project's ``split_idx`` for the answer turn opened by ``tokens[turn_start]``
    (``<|im_start|>``); ``fed_start`` is the first index after the turn's header.

    Thinking: assistant index + 4 (the official rule) when the turn opens with ``<think>``.
    Not thinking: after the turn's first ``</think>`` + ``\\n\\n``. Otherwise ``fed_start``.
    """
    a = turn_start + 1  # the role token
    if thinking:
        if a + 2 < len(tokens) and tokens[a + 2] == "<think>":
            return a + 4
        return fed_start
    for j in range(max(turn_start, 1), len(tokens)):
        if tokens[j - 1] == "</think>" and tokens[j] == "\n\n":
            return j + 1
    return fed_start


def has_think(text: Any) -> bool:
    return isinstance(text, str) and ("<think>" in text or "</think>" in text)


def session_prefix(guard: Any, tokenizer: Any, prompt: Sequence[Mapping[str, Any]]) -> list[int]:
    """The ids a local Stream session is primed with before the answer's first id: the
    rendered prompt and the assistant header (the template text the session feeds ahead of
    the first ``feed_ids``)."""
    from ..stream.retokenize import encode_plain

    plan_prompt = getattr(guard.stream, "plan_prompt", None)
    if plan_prompt is None:
        raise GuardUnavailableError(
            "stream evaluation needs a local Stream model (its sessions' token positions must "
            "be known to place the benchmark's unsafe spans): pass --stream-model"
        )
    plan = plan_prompt([dict(m) for m in prompt])
    if getattr(plan, "window_verdicts", ()):
        raise InvalidInputError("the prompt is longer than half the Stream model's context")
    return list(plan.ids) + encode_plain(tokenizer, plan.tail)


def predict_stream(
    guard: Any,
    conversation: Any,
    *,
    thinking: bool | None = None,
    tokenizer: Any = None,
    feed_size: int = 1,
) -> StreamPrediction:
    """Run the Stream model on one row the project's way.

    A prompt row: the session's prompt verdict. An answer row: the whole conversation is
    tokenized as the official script does; a session opened on the prompt is fed the ids after
    the assistant header, ``feed_size`` ids per ``feed_ids`` call, through the closing
    ``<|im_end|>``; the tokens from :func:`score_start` on are scored with
    :func:`~qwen3guard.evaluation.metrics.consecutive_flag`. When the session's own rendering
    of the prompt is not a prefix of those ids (a Qwen3 template writes an empty think block
    after the prompt, so an answer with its own thinking cannot follow it), one forward over
    the whole conversation is used instead. ``thinking=None``: thinking exactly when the answer
    has a ``<think>`` block.
    """
    from ..messages import normalize_messages

    messages = normalize_messages(conversation)
    if messages[-1]["role"] != "assistant":
        with guard.open_stream(messages, debounce="eval") as session:
            verdict = session.prompt_verdict
        if verdict is None:
            raise GuardOutputError("the Stream session gave no prompt verdict")
        return StreamPrediction(kind="prompt", pred=verdict.risk.value)
    if feed_size < 1:
        raise ValueError("feed_size must be at least 1")

    tok = tokenizer if tokenizer is not None else stream_tokenizer(guard)
    if thinking is None:
        thinking = has_think(messages[-1]["content"])
    ids = conversation_ids(tok, messages)
    tokens = [tok.decode([i]) for i in ids]
    prefix = session_prefix(guard, tok, messages[:-1])
    if ids[: len(prefix)] == prefix:
        fed_start = len(prefix)
        turn_start = max((k for k in range(fed_start) if tokens[k] == "<|im_start|>"), default=0)
        split = score_start(tokens, turn_start, fed_start, thinking=thinking)
        if split >= fed_start:
            return _by_session(guard, messages, ids, fed_start, split, feed_size)
    turn_start = max((k for k, t in enumerate(tokens) if t == "<|im_start|>"), default=0)
    header_end = next(
        (k + 1 for k in range(turn_start + 1, len(tokens)) if "\n" in tokens[k]), turn_start
    )
    split = score_start(tokens, turn_start, header_end, thinking=thinking)
    return _by_forward(guard, ids, split)


def _finish(
    ids: Sequence[int], split: int, risks: list[str], method: str, session_flag: int | None = None
) -> StreamPrediction:
    pred, pos = consecutive_flag(risks)
    return StreamPrediction(
        kind="response",
        pred=pred,
        flag_index=split + pos if pos >= 0 else None,
        split_index=split,
        n_ids=len(ids),
        risks=risks,
        session_flag_index=session_flag,
        method=method,
    )


def _by_session(
    guard: Any,
    messages: Sequence[Mapping[str, Any]],
    ids: Sequence[int],
    fed_start: int,
    split: int,
    feed_size: int,
) -> StreamPrediction:
    risks_at: dict[int, str] = {}
    session_flag = None
    with guard.open_stream(list(messages[:-1]), debounce="eval") as session:
        for k in range(fed_start, len(ids), feed_size):
            update = session.feed_ids(ids[k : k + feed_size])
            for tv in update.token_verdicts:
                risks_at[fed_start + tv.index] = tv.risk.value
            if session_flag is None and update.flagged:
                session_flag = fed_start + update.flag_token_index
    missing = [i for i in range(split, len(ids)) if i not in risks_at]
    if missing:
        raise GuardOutputError(
            f"the Stream session did not judge {len(missing)} of the {len(ids) - split} "
            "scored tokens"
        )
    risks = [risks_at[i] for i in range(split, len(ids))]
    return _finish(ids, split, risks, "session", session_flag)


def _forward_risks(guard: Any, ids: Sequence[int]) -> list[str]:
    backend = guard.stream
    limit = getattr(backend, "max_context_tokens", None)
    if limit is not None and len(ids) > limit:
        raise InvalidInputError(
            f"the conversation ({len(ids)} tokens) is longer than the Stream model's context"
        )
    out, _ = backend.forward(list(ids), None)
    return [tv.risk.value for tv in backend.token_verdicts(out, 0)]


def _by_forward(guard: Any, ids: Sequence[int], split: int) -> StreamPrediction:
    return _finish(ids, split, _forward_risks(guard, ids)[split:], "forward")


def predict_stream_official(
    guard: Any, conversation: Any, *, thinking: bool, tokenizer: Any = None
) -> StreamPrediction:
    """One row as ``eval_stream.py`` @ 6a52eca computes it: the row's messages as given, the
    whole conversation in one forward, argmax risk per position.

    An answer row (``--data_type response``): scored from :func:`official_split` to the end
    (the closing ``<|im_end|>`` and ``\\n`` included), flagged with ``consecutive_unsafe``. A
    prompt row (``--data_type prompt``): the query head's risk at the ``<|im_end|>`` closing the
    last user turn (``pred_risk_levels[-1]`` of ``_find_last_user_content_index``'s span).
    Where the script's ``assert`` fails, a :class:`GuardOutputError` for the row.
    """
    tok = tokenizer if tokenizer is not None else stream_tokenizer(guard)
    messages = [dict(m) for m in conversation]
    ids = conversation_ids(tok, messages, official=True)
    tokens = [tok.decode([i]) for i in ids]
    last_role = str(messages[-1].get("role", "")) if messages else ""
    if last_role == "assistant":
        split = official_split(tokens, thinking=thinking)
        if split is None:
            need = "'<|im_start|>' 'assistant'" if thinking else "'</think>' '\\n\\n'"
            raise GuardOutputError(
                f"no {need} token pair: the official script's assert fails on this row"
            )
        return _finish(ids, split, _forward_risks(guard, ids)[split:], "forward")
    for i in range(len(tokens) - 2, -1, -1):
        if tokens[i] == "<|im_start|>" and tokens[i + 1] == "user":
            end = next((j for j in range(i + 3, len(tokens)) if tokens[j] == "<|im_end|>"), None)
            if end is None:
                continue
            backend = guard.stream
            out, _ = backend.forward(list(ids[: end + 1]), None, query_index=end, last=1)
            return StreamPrediction(
                kind="prompt", pred=backend.query_verdict(out).risk.value, n_ids=len(ids),
                method="forward",
            )
    raise GuardOutputError("no user turn: the official script's assert fails on this row")
