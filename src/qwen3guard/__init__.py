"""qwen3guard: safety guardrails backed by the Qwen3Guard models."""

from . import tracing
from .errors import (
    ContextLengthError,
    GuardOutputError,
    GuardUnavailableError,
    InvalidInputError,
    ModelFormatError,
    Qwen3GuardError,
    Qwen3GuardViolation,
    RequestTooLargeError,
    UnsafeContentError,
)
from .guard import (
    Qwen3Guard,
    could_not_judge,
    get_default_guard,
    raise_if_blocked,
    set_default_guard,
)
from .policy import DEFAULT_REFUSAL_MESSAGE, METADATA_KEY, Decision, Policy, Surface, SurfaceRule
from .stream.gate import GateStep, StreamGate
from .stream.session import StreamBackend, StreamSession
from .stream.types import StreamUpdate, TokenVerdict
from .tracing import CheckEvent, CheckObserver
from .verdict import Category, RiskLevel, Role, Verdict, parse_gen_output

__version__ = "0.1.0"

__all__ = [
    "ContextLengthError",
    "DEFAULT_REFUSAL_MESSAGE",
    "METADATA_KEY",
    "Category",
    "CheckEvent",
    "CheckObserver",
    "Decision",
    "GateStep",
    "GuardOutputError",
    "GuardUnavailableError",
    "InvalidInputError",
    "ModelFormatError",
    "Policy",
    "Qwen3Guard",
    "Qwen3GuardError",
    "Qwen3GuardViolation",
    "RequestTooLargeError",
    "RiskLevel",
    "Role",
    "Surface",
    "StreamBackend",
    "StreamGate",
    "StreamSession",
    "StreamUpdate",
    "SurfaceRule",
    "TokenVerdict",
    "UnsafeContentError",
    "Verdict",
    "could_not_judge",
    "get_default_guard",
    "parse_gen_output",
    "raise_if_blocked",
    "set_default_guard",
    "tracing",
    "__version__",
]
