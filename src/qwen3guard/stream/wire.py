"""The wire codec of ``/v1/stream``, shared by the server (:mod:`qwen3guard.server.ws`) and the
client (:mod:`qwen3guard.stream.remote`): verdicts, updates, errors, policies and session
options as JSON.

Protocol (one JSON object per text message):

    client -> {"messages": [...] | "prompt text", "options": {...}}     (first message)
    server <- {"type": "opened", "prompt_verdict": VERDICT | null, "session": SESSION}
    client -> {"seq": n, "text": "chunk"} | {"seq": n, "ids": [1, 2]} | {"seq": n, "close": true}
            | {"seq": n, "rollback": offset} | {"seq": n, "end": true}
    server <- {"type": "update" | "closed", "seq": n, "update": UPDATE, "session": SESSION}
    server <- {"type": "error", "seq": n | null, "error": {"type": "GuardUnavailableError", ...}}

``rollback`` rolls the server's session back to ``offset`` (a character offset in its
``response_text``; :meth:`~qwen3guard.stream.session.StreamSession.rollback`) and is answered
with the update of re-feeding the kept text; ``end`` is
:meth:`~qwen3guard.stream.session.StreamSession.end` (judge the held-back text, keep the socket
for a rollback), answered with ``update``. ``close`` after ``end`` answers the ended update.

SESSION = {"flagged": bool, "verdict": VERDICT | null, "text_delta": str, "text_len": int}: the
server session's state after the step (``text_delta`` is what the step added to its
``response_text``, ``text_len`` that text's length, which a client checks its copy against;
servers older than rollback omit it). UPDATE
carries ``settled_offset`` (servers older than that field omit it; it then reads 0: nothing is
taken as settled). A request is answered before the next one is read and every answer echoes
its ``seq``, so answers cannot cross. After ``closed`` or ``error`` the server closes the socket.
Error types travel by name (:data:`ERRORS`); an unknown name reads as
:class:`~qwen3guard.GuardUnavailableError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import (
    ContextLengthError,
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    ModelFormatError,
    Qwen3GuardError,
)
from ..policy import Policy, Surface, SurfaceRule
from ..verdict import Category, RiskLevel, Role, Verdict
from .types import StreamUpdate, TokenVerdict

#: Error classes by wire name; subclasses before their bases (the first match names an error).
ERRORS: dict[str, type[Qwen3GuardError]] = {
    "ContextLengthError": ContextLengthError,
    "InvalidInputError": InvalidInputError,
    "GuardUnavailableError": GuardUnavailableError,
    "GuardOutputError": GuardOutputError,
    "ModelFormatError": ModelFormatError,
}


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of metadata: unknown objects become strings, NaN becomes null."""
    if depth > 6:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):  # enums
        return value.value
    return str(value)


def verdict_to_wire(v: Verdict | None) -> dict[str, Any] | None:
    if v is None:
        return None
    d = v.to_dict()
    d["metadata"] = jsonable(dict(v.metadata))
    return jsonable(d)


def verdict_from_wire(d: Mapping[str, Any] | None) -> Verdict | None:
    if d is None:
        return None
    try:
        scores = d.get("scores")
        return Verdict(
            risk=RiskLevel(d["risk"]),
            categories=tuple(Category(c) for c in d.get("categories") or ()),
            role=Role(d.get("role", "prompt")),
            refusal=d.get("refusal"),
            raw=d.get("raw"),
            scores=dict(scores) if scores is not None else None,
            latency_s=float(d.get("latency_s") or 0.0),
            windows=int(d.get("windows") or 1),
            metadata={**dict(d.get("metadata") or {}), "remote": True},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardOutputError(f"the server sent a malformed verdict: {exc}", raw=str(d)) from exc


def token_verdict_from_wire(d: Mapping[str, Any]) -> TokenVerdict:
    return TokenVerdict(
        index=int(d["index"]),
        token_id=None if d.get("token_id") is None else int(d["token_id"]),
        text=str(d.get("text", "")),
        risk=RiskLevel(d["risk"]),
        category=Category(d["category"]) if d.get("category") else None,
        risk_prob=float(d.get("risk_prob", 0.0)),
        unsafe_prob=float(d.get("unsafe_prob", 0.0)),
        controversial_prob=float(d.get("controversial_prob", 0.0)),
    )


def update_to_wire(u: StreamUpdate) -> dict[str, Any]:
    return {
        "token_verdicts": [jsonable(t.to_dict()) for t in u.token_verdicts],
        "flagged": bool(u.flagged),
        "verdict": verdict_to_wire(u.verdict),
        "flag_offset": u.flag_offset,
        "flag_token_index": u.flag_token_index,
        "tokens_seen": u.tokens_seen,
        "settled_offset": u.settled_offset,
        "metadata": jsonable(dict(u.metadata or {})),
    }


def update_from_wire(d: Mapping[str, Any]) -> StreamUpdate:
    try:
        return StreamUpdate(
            token_verdicts=tuple(token_verdict_from_wire(t) for t in d.get("token_verdicts") or ()),
            flagged=bool(d["flagged"]),
            verdict=verdict_from_wire(d.get("verdict")),
            flag_offset=d.get("flag_offset"),
            flag_token_index=d.get("flag_token_index"),
            tokens_seen=int(d.get("tokens_seen") or 0),
            settled_offset=int(d.get("settled_offset") or 0),
            metadata={**dict(d.get("metadata") or {}), "remote": True},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardOutputError(
            f"the server sent a malformed stream update: {exc}", raw=str(d)[:500]
        ) from exc


def error_to_wire(exc: BaseException, seq: int | None = None) -> dict[str, Any]:
    name = type(exc).__name__
    for wire_name, cls in ERRORS.items():
        if isinstance(exc, cls):
            name = wire_name
            break
    else:
        name = "GuardUnavailableError"
    return {"type": "error", "seq": seq, "error": {"type": name, "message": str(exc)}}


def error_from_wire(d: Mapping[str, Any]) -> Qwen3GuardError:
    err = d.get("error") or {}
    cls = ERRORS.get(str(err.get("type")), GuardUnavailableError)
    msg = f"stream server: {err.get('message', 'unknown error')}"
    if cls is GuardOutputError:
        return GuardOutputError(msg)
    return cls(msg)


def policy_to_wire(policy: Policy) -> dict[str, Any]:
    def rule(r: SurfaceRule) -> dict[str, Any]:
        return {
            "mode": r.mode,
            "ignore_categories": None
            if r.ignore_categories is None
            else sorted(c.value for c in r.ignore_categories),
            "block_categories": None
            if r.block_categories is None
            else sorted(c.value for c in r.block_categories),
            "enabled": r.enabled,
        }

    return {
        "mode": policy.mode,
        "ignore_categories": sorted(c.value for c in policy.ignore_categories),
        "block_categories": sorted(c.value for c in policy.block_categories),
        "surfaces": {s.value: rule(r) for s, r in policy.surfaces.items()},
        "fail_open": policy.fail_open,
    }


def policy_from_wire(d: Any) -> Policy:
    if isinstance(d, str):
        return Policy(mode=d)  # type: ignore[arg-type]
    if not isinstance(d, Mapping):
        raise InvalidInputError("'policy' must be 'strict', 'loose' or a policy object")
    try:
        surfaces = {
            Surface(k): SurfaceRule(
                mode=v.get("mode"),
                ignore_categories=v.get("ignore_categories"),
                block_categories=v.get("block_categories"),
                enabled=bool(v.get("enabled", True)),
            )
            for k, v in dict(d.get("surfaces") or {}).items()
        }
        return Policy(
            mode=d.get("mode", "strict"),
            ignore_categories=frozenset(Category(c) for c in d.get("ignore_categories") or ()),
            block_categories=frozenset(Category(c) for c in d.get("block_categories") or ()),
            surfaces=surfaces,
            fail_open=bool(d.get("fail_open", False)),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"'policy' is not a valid policy: {exc}") from exc


def options_to_wire(options: Mapping[str, Any]) -> dict[str, Any]:
    """Session options as JSON: a :class:`Policy` goes as its fields."""
    out = {}
    for k, v in options.items():
        out[k] = policy_to_wire(v) if isinstance(v, Policy) else v
    return out


#: Session options a server accepts from clients, and how it checks them.
def options_from_wire(options: Any) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise InvalidInputError("'options' must be an object")
    out: dict[str, Any] = {}
    for k, v in options.items():
        if k == "policy":
            out["policy"] = policy_from_wire(v)
        elif k == "debounce":
            if not isinstance(v, str):
                raise InvalidInputError("'debounce' must be a string")
            out["debounce"] = v
        elif k == "fallback_every":
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise InvalidInputError("'fallback_every' must be an int in 1..4096")
            out["fallback_every"] = v
        else:
            raise InvalidInputError(
                f"unknown stream option {k!r} (accepted: policy, debounce, fallback_every)"
            )
    return out


def decode_answer(raw: Any, expect: tuple[str, ...], seq: int | None) -> dict[str, Any]:
    """A server answer as a dict of one of the ``expect`` types (and, when ``seq`` is given,
    answering that request); an ``error`` answer raises its error."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise GuardOutputError(
            "the stream server sent a message that is not JSON", raw=str(raw)[:500]
        ) from exc
    if not isinstance(msg, dict):
        raise GuardOutputError(
            "the stream server sent a message that is not an object", raw=str(raw)[:500]
        )
    if msg.get("type") == "error":
        raise error_from_wire(msg)
    if msg.get("type") not in expect:
        raise GuardOutputError(
            f"the stream server sent {msg.get('type')!r}, expected {' or '.join(expect)}",
            raw=str(raw)[:500],
        )
    if seq is not None and msg.get("seq") != seq:
        raise GuardOutputError(
            f"the stream server answered request {msg.get('seq')!r} to request {seq}",
            raw=str(raw)[:500],
        )
    return msg
