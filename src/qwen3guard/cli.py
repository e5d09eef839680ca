"""`qwen3guard`: moderate | label | eval | serve | demo | tiny."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

TINY = "tiny"
OFFICIAL_MAX_NEW_TOKENS = 128  # eval/eval_gen.py of QwenLM/Qwen3Guard @ 6a52eca
# Where a model named on the command line is missing, what the user can do.
MODEL_HINT = "pass --model DIR (a local checkpoint, or 'tiny' for the built-in small one)"
STREAM_MODEL_HINT = ("pass --stream-model DIR (a local checkpoint, or 'tiny' for the built-in "
                     "small one)")

EXIT_STATUS = """\
exit status:
  0 allowed (moderate), or the command completed
  1 blocked: the policy blocks the content (moderate)
  2 error: unusable input, a model that cannot be loaded, a bad option (one line on
    stderr; --debug or QWEN3GUARD_DEBUG=1 adds the traceback)
  130 interrupted (Ctrl-C)
"""

LABEL_FIELDS = """\
input (JSONL, one object per line): the conversation is read from the first of
  "message" or "messages"  a list of {"role": ..., "content": ...} (the last
                           message's role decides prompt or response moderation)
  "prompt"                 a user prompt, with "response" (optional) the
                           assistant's answer to judge
  "text"                   a user prompt
Every other field is copied unchanged.

output: each input row with "qwen3guard" added (the verdict: "risk",
"categories", "role", "refusal", "raw" model output, "latency_s", and "row",
the input line's index), or "qwen3guard_error" ({"row", "error"}) when the row
cannot be judged as given (not JSON, no conversation, empty content, output
that does not parse). A guard that fails stops the run (exit status 2);
running again resumes after the last complete output row.
"""

EVAL_FIELDS = """\
input (JSONL, Qwen3GuardTest rows, one object per line):
  "message"                the conversation: a list of {"role", "content"}; the
                           last message's role decides prompt or response
                           moderation ("messages", "prompt" + "response" or
                           "text" are read too, as in `qwen3guard label`)
  "label"                  the gold label: "Safe" or "Unsafe" (any case)
  "source"                 optional: metrics are also given per source
  "unsafe_start_index", "unsafe_end_index"
                           optional, --mode stream: token indices (ids of the
                           whole conversation rendered by the Stream model's chat
                           template) of the first unsafe sentence; rows with
                           them get detection-latency metrics
A row without a conversation or a Safe/Unsafe label is listed as an error, not
scored.
"""


def _debug_enabled(args: argparse.Namespace | None = None) -> bool:
    env = os.environ.get("QWEN3GUARD_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _locate(name: str, hint: str) -> str:
    from .defaults import locate_model

    return locate_model(name, hint=hint)


def _build_progress() -> Any:
    """A reporter for the built-in checkpoints' build: one progress bar per stage on stderr
    (tqdm, from the ``cli`` extra), or a line per stage without it."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the cli extra
        tqdm = None

    state: dict[str, Any] = {"stage": None, "bar": None}

    def report(stage: str, done: int, total: int) -> None:
        if stage != state["stage"]:
            if state["bar"] is not None:
                state["bar"].close()
                state["bar"] = None
            state["stage"] = stage
            if tqdm is not None:
                state["bar"] = tqdm(total=total, desc=stage, unit="step", file=sys.stderr,
                                    dynamic_ncols=True, leave=True)
            else:  # pragma: no cover
                print(f"  {stage} ({total} steps)", file=sys.stderr, flush=True)
        bar = state["bar"]
        if bar is not None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
                state["bar"] = None

    return report


def _ensure_tiny() -> Any:
    """The built-in checkpoints' directory, built once with a progress bar per stage (the
    builder itself says where it builds)."""
    from .tiny import default_dir, ensure_built

    if not (default_dir() / "BUILD").exists():
        _quiet_loading()
    return ensure_built(progress=_build_progress())


def _resolve_models(model: str | None, stream_model: str | None) -> tuple[str, str | None]:
    """``tiny`` names the built-in small checkpoints (built on first use, offline). Other names
    go through :func:`qwen3guard.defaults.locate_model`: a missing directory, or a hub model
    that is neither reachable nor cached, fails at once with a one-line reason."""
    model = model or os.environ.get("QWEN3GUARD_MODEL") or "Qwen/Qwen3Guard-Gen-0.6B"
    _quiet_loading()
    if TINY in (model, stream_model):
        root = _ensure_tiny()
        if model == TINY:
            model = str(root / "gen")
        if stream_model == TINY:
            stream_model = str(root / "stream")
    model = _locate(model, MODEL_HINT)
    if stream_model is not None:
        stream_model = _locate(stream_model, STREAM_MODEL_HINT)
    return model, stream_model


# Undo what _quiet_loading changed, when the command ends (for in-process callers).
_RESTORE: list[Any] = []


def _quiet_loading() -> None:
    """Turn off transformers' "Loading weights" / "Writing model shards" bars (its
    ``utils.logging.tqdm``, read in transformers 5.24 core_model_loading.py and
    modeling_utils.py) before a model is loaded or built; :func:`main` restores them when the
    command ends. ``disable_progress_bar`` also turns huggingface_hub's bars off; those are
    turned back on (when they were on), so a real download still shows its progress. Called
    only where a model is loaded, so commands that load none never import transformers."""
    if _RESTORE:
        return
    try:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )
        from transformers.utils import logging as hf_logging
    except ImportError:  # no local extra: nothing loads here
        return
    was_on, hub_was_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if not hub_was_off:
        enable_progress_bars()

    def restore() -> None:
        if was_on:
            hf_logging.enable_progress_bar()
        if hub_was_off:
            disable_progress_bars()

    _RESTORE.append(restore)


@contextlib.contextmanager
def _restoring() -> Iterator[None]:
    try:
        yield
    finally:
        while _RESTORE:
            _RESTORE.pop()()


def _guard(args: argparse.Namespace, *, stream: bool = False) -> Any:
    from . import Policy, Qwen3Guard

    policy = Policy(mode=args.policy)
    if getattr(args, "endpoint", None):
        return Qwen3Guard.from_endpoint(args.endpoint, args.endpoint_model, api_key=args.api_key,
                                        policy=policy)
    model, stream_model = _resolve_models(args.model, getattr(args, "stream_model", None))
    return Qwen3Guard.from_pretrained(
        model, stream_model=stream_model if stream else None, device=args.device,
        dtype=args.dtype, policy=policy,
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Gen checkpoint: a path, a hub id, or 'tiny' for the "
                   "built-in small checkpoint (default: $QWEN3GUARD_MODEL or Qwen3Guard-Gen-0.6B)")
    p.add_argument("--endpoint", help="use a served Gen model at this OpenAI-compatible base URL")
    p.add_argument("--endpoint-model", help="model name on the endpoint (default: the first)")
    p.add_argument("--api-key", default=os.environ.get("QWEN3GUARD_API_KEY"),
                   help="the endpoint's API key (default: $QWEN3GUARD_API_KEY)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if "
                   "available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: float32 "
                   "on CPU; bfloat16 on CUDA where supported, else float16)")
    p.add_argument("--policy", choices=["strict", "loose"], default="strict",
                   help="strict: Controversial is blocked; loose: it is allowed")


def cmd_moderate(args: argparse.Namespace) -> int:
    """0 allowed, 1 blocked; an error (the input, the model) raises, and :func:`main` makes it
    exit status 2 with one line on stderr."""
    with _guard(args) as guard:
        if args.response is not None:
            verdict = guard.check_response(args.text, args.response)
            surface = "output"
        else:
            verdict = guard.check_prompt(args.text)
            surface = "input"
        decision = guard.decide(verdict, surface)
    if args.json:
        print(json.dumps({**verdict.to_dict(), "blocked": decision.blocked}, ensure_ascii=False))
    else:
        cats = ", ".join(c.value for c in verdict.categories) or "None"
        line = f"Safety: {verdict.risk.value}\nCategories: {cats}"
        if verdict.refusal is not None:
            line += f"\nRefusal: {'Yes' if verdict.refusal else 'No'}"
        print(line + f"\nDecision: {'block' if decision.blocked else 'allow'} ({args.policy})")
    # Exit status tells scripts whether the policy blocked the content.
    return 1 if decision.blocked else 0


def cmd_label(args: argparse.Namespace) -> int:
    from .labeling import label_file

    if not os.path.isfile(args.input):  # before a model is loaded
        raise FileNotFoundError(f"no such file: {args.input}")
    with _guard(args) as guard:
        stats = label_file(guard, args.input, args.output, batch_size=args.batch_size,
                           progress=not args.no_progress)
    print(json.dumps(stats), file=sys.stderr)
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from . import tiny

    if args.action == "build":
        _quiet_loading()
        out = tiny.build(args.dir, seed=args.seed, progress=_build_progress())
        print(out)
    else:
        print(_ensure_tiny())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, stream_model=args.stream_model)


def _eval_guard(args: argparse.Namespace) -> Any:
    """Gen mode: the guard ``qwen3guard moderate`` would build (local or ``--endpoint``), with
    ``max_new_tokens=128`` under ``--compat official`` (``eval_gen.py``'s setting). Stream
    mode: only the Stream model, in process (``--stream-model``; default ``tiny`` with
    ``--model tiny``, else the 0.6B hub model); Gen is not loaded."""
    from . import Policy, Qwen3Guard

    policy = Policy(mode=args.policy)
    if args.mode == "gen":
        if args.compat == "official" and not args.endpoint:
            model, _ = _resolve_models(args.model, None)
            return Qwen3Guard.from_pretrained(
                model, device=args.device, dtype=args.dtype, policy=policy,
                max_new_tokens=OFFICIAL_MAX_NEW_TOKENS,
            )
        return _guard(args, stream=False)
    stream_model = args.stream_model
    if stream_model is None:
        from .guard import DEFAULT_STREAM_MODEL

        stream_model = TINY if args.model == TINY else DEFAULT_STREAM_MODEL
    if stream_model == TINY:  # the built-in checkpoints' stream/ directory
        _, stream_model = _resolve_models(TINY, TINY)
    else:
        _quiet_loading()
        stream_model = _locate(stream_model, STREAM_MODEL_HINT)
    return Qwen3Guard.from_pretrained(
        None, stream_model=stream_model, device=args.device, dtype=args.dtype, policy=policy
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """``qwen3guard eval``: 0 when the metrics were computed, 2 for unusable input."""
    from pathlib import Path

    from .evaluation import evaluate_gen, evaluate_stream, format_summary, load_rows

    path = Path(args.input)
    if not path.is_file():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    rows = load_rows(path)
    usable = [r for r in rows if r.error is None or (args.compat and r.label_error)]
    if not usable:
        print(f"error: {path} has no row with a conversation and a Safe/Unsafe label",
              file=sys.stderr)
        return 2
    if args.mode == "stream" and args.endpoint:
        print("error: stream evaluation runs the Stream model in process (--stream-model): the "
              "benchmark's token indices refer to its tokenizer; --endpoint is for --mode gen",
              file=sys.stderr)
        return 2
    if args.compat == "official" and args.mode == "gen" and args.endpoint:
        print("note: --compat official with --endpoint: max_new_tokens is the server's, not "
              f"the official {OFFICIAL_MAX_NEW_TOKENS}", file=sys.stderr)
    progress = not args.no_progress
    with _eval_guard(args) as guard:
        if args.mode == "gen":
            report = evaluate_gen(guard, rows, batch_size=args.batch_size or 16,
                                  progress=progress, compat=args.compat)
        else:
            report = evaluate_stream(guard, rows, thinking=args.thinking, progress=progress,
                                     compat=args.compat)
    report = {"input": str(path), "model": args.model, "stream_model": args.stream_model,
              "policy": args.policy, **report}
    print(format_summary(report))
    if args.report:
        out = Path(args.report)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, print the traceback too (or set QWEN3GUARD_DEBUG=1)")
    parser = argparse.ArgumentParser(prog="qwen3guard", description=__doc__, epilog=EXIT_STATUS,
                                     formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("moderate", help="judge one prompt, or a response with --response",
                       parents=[common], epilog=EXIT_STATUS, formatter_class=raw,
                       description="Judge one prompt (or, with --response, the answer to it) "
                       "and print the verdict and the policy's decision.")
    p.add_argument("text", help="the prompt (or, with --response, the prompt it answers)")
    p.add_argument("--response", help="judge this response to TEXT (includes refusal)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_model_args(p)
    p.set_defaults(func=cmd_moderate)

    p = sub.add_parser("label", help="label a JSONL dataset; re-running resumes",
                       parents=[common], epilog=LABEL_FIELDS + "\n" + EXIT_STATUS,
                       formatter_class=raw,
                       description="Add a verdict to every row of a JSONL file.")
    p.add_argument("input", help="the JSONL file to label (fields below)")
    p.add_argument("output", help="the labeled JSONL file (resumed when it exists)")
    p.add_argument("--batch-size", type=int, default=16, help="rows judged together")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("tiny", help="build the built-in small checkpoints", parents=[common],
                       epilog=EXIT_STATUS, formatter_class=raw)
    p.add_argument("action", choices=["build", "path"],
                   help="build: into DIR; path: print the cached build's directory (built once "
                   "if missing)")
    p.add_argument("dir", nargs="?", default=None, help="where 'build' writes gen/ and stream/")
    p.add_argument("--seed", type=int, default=0, help="the build's seed")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("demo", help="offline demo on the built-in small checkpoints",
                       parents=[common], epilog=EXIT_STATUS, formatter_class=raw)
    p.add_argument("--model", default=TINY, help="Gen checkpoint (default: tiny)")
    p.add_argument("--stream-model", default=TINY, help="Stream checkpoint (default: tiny)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="Qwen3GuardTest-style metrics on a JSONL file",
                       parents=[common], epilog=EVAL_FIELDS + "\n" + EXIT_STATUS,
                       formatter_class=raw,
                       description="Unsafe precision / recall / F1 (and, in stream mode, "
                       "detection latency) of a guard on labeled rows.")
    p.add_argument("input", help="the JSONL file of labeled rows (fields below)")
    p.add_argument("--mode", choices=["gen", "stream"], default="gen",
                   help="gen: judge each row with the Gen model (--model or --endpoint); "
                   "stream: with the Stream model, token by token (--stream-model), which also "
                   "gives detection latency on rows with an unsafe span (default: gen)")
    p.add_argument("--stream-model", default=None,
                   help="--mode stream: the Stream checkpoint, a path, a hub id or 'tiny' "
                   "(default: tiny with --model tiny, else Qwen/Qwen3Guard-Stream-0.6B)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                   help="stream mode: score the thinking too (default: when the answer has a "
                   "<think> block; with --compat official: off, as the official flag)")
    p.add_argument("--compat", choices=["official"], default=None,
                   help="also compute and print what the official eval_gen.py / eval_stream.py "
                   "(QwenLM/Qwen3Guard @ 6a52eca) print, on the same predictions")
    p.add_argument("--batch-size", type=int, default=16, help="gen mode: rows judged together")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_eval)

    try:
        from .server.cli import add_serve_arguments, run_serve
    except ImportError:  # the server extra is not installed
        pass
    else:
        p = sub.add_parser("serve", help="serve Gen (OpenAI-compatible), moderations and Stream",
                           parents=[common], epilog=EXIT_STATUS, formatter_class=raw)
        add_serve_arguments(p)
        p.set_defaults(func=run_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 allowed / done, 1 blocked, 2 error (one line on stderr,
    the traceback with ``--debug`` or ``QWEN3GUARD_DEBUG=1``), 130 interrupted."""
    args = build_parser().parse_args(argv)
    if args.command == "tiny" and args.action == "build" and not args.dir:
        print("error: tiny build needs a DIR", file=sys.stderr)
        return 2
    try:
        with _restoring():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure: one line, exit status 2
        if _debug_enabled(args):
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
