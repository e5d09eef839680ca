"""`qwen3guard`: moderate | label | eval | serve | demo | tiny."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

TINY = "tiny"
OFFICIAL_MAX_NEW_TOKENS = 128  # eval/eval_gen.py of QwenLM/Qwen3Guard @ 6a52eca


def _resolve_models(model: str | None, stream_model: str | None) -> tuple[str, str | None]:
    """``tiny`` names the built-in small checkpoints (built on first use, offline)."""
    model = model or os.environ.get("QWEN3GUARD_MODEL") or "Qwen/Qwen3Guard-Gen-0.6B"
    if TINY in (model, stream_model):
        from .tiny import ensure_built

        root = ensure_built()
        if model == TINY:
            model = str(root / "gen")
        if stream_model == TINY:
            stream_model = str(root / "stream")
    return model, stream_model


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
    p.add_argument("--api-key", default=os.environ.get("QWEN3GUARD_API_KEY"))
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--policy", choices=["strict", "loose"], default="strict")


def cmd_moderate(args: argparse.Namespace) -> int:
    from . import InvalidInputError

    with _guard(args) as guard:
        try:
            if args.response is not None:
                verdict = guard.check_response(args.text, args.response)
                surface = "output"
            else:
                verdict = guard.check_prompt(args.text)
                surface = "input"
        except InvalidInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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

    with _guard(args) as guard:
        stats = label_file(guard, args.input, args.output, batch_size=args.batch_size,
                           progress=not args.no_progress)
    print(json.dumps(stats), file=sys.stderr)
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from . import tiny

    if args.action == "build":
        out = tiny.build(args.dir, seed=args.seed)
        print(out)
    else:
        print(tiny.ensure_built())
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
    parser = argparse.ArgumentParser(prog="qwen3guard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("moderate", help="judge one prompt, or a response with --response")
    p.add_argument("text", help="the prompt (or, with --response, the prompt it answers)")
    p.add_argument("--response", help="judge this response to TEXT (includes refusal)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_model_args(p)
    p.set_defaults(func=cmd_moderate)

    p = sub.add_parser("label", help="label a JSONL dataset; re-running resumes")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("tiny", help="build the built-in small checkpoints")
    p.add_argument("action", choices=["build", "path"])
    p.add_argument("dir", nargs="?", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("demo", help="offline demo on the built-in small checkpoints")
    p.add_argument("--model", default=TINY)
    p.add_argument("--stream-model", default=TINY)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="Qwen3GuardTest-style metrics on a JSONL file")
    p.add_argument("input")
    p.add_argument("--mode", choices=["gen", "stream"], default="gen")
    p.add_argument("--stream-model", default=None)
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                   help="stream mode: score the thinking too (default: when the answer has a "
                   "<think> block; with --compat official: off, as the official flag)")
    p.add_argument("--compat", choices=["official"], default=None,
                   help="also compute and print what the official eval_gen.py / eval_stream.py "
                   "(QwenLM/Qwen3Guard @ 6a52eca) print, on the same predictions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_eval)

    try:
        from .server.cli import add_serve_arguments, run_serve
    except ImportError:  # the server extra is not installed
        pass
    else:
        p = sub.add_parser("serve", help="serve Gen (OpenAI-compatible), moderations and Stream")
        add_serve_arguments(p)
        p.set_defaults(func=run_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tiny" and args.action == "build" and not args.dir:
        print("error: tiny build needs a DIR", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
