"""The retry rule of :class:`~qwen3guard.gen.remote.OpenAIGenBackend`, shared by its sync and
async loops, which differ only in how they wait (``time.sleep`` / ``asyncio.sleep``).

Connection errors, timeouts, HTTP 408, 429 and 5xx are retried with exponential backoff (from
``backoff_s``, capped at ``max_backoff_s``, honouring ``Retry-After`` up to that cap), at most
``max_retries`` times; anything else, or what still fails, becomes the error the caller gets:
:class:`GuardUnavailableError`, or :class:`GuardOutputError` for an answer that is not a chat
completion.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ..errors import GuardOutputError, GuardUnavailableError

log = logging.getLogger(__name__)


class Retry:
    """One call's attempts. After a failure, :meth:`failed` says how long to wait before the next
    attempt, or None when there is none; ``error`` is then what the caller gets."""

    def __init__(self, backend: Any, what: str) -> None:
        self.backend = backend  # an OpenAIGenBackend: its settings and whether it is closed
        self.what = what
        self.attempt = 0
        self.error: Exception = GuardUnavailableError(f"{what}: no attempt was made")

    def failed(self, exc: BaseException) -> float | None:
        b = self.backend
        retry, self.error = classify(b._openai, exc, f"{self.what} to {b.base_url}", b.timeout)
        if not retry or self.attempt >= b.max_retries or b._closed:
            return None
        log.info("retrying %s after %s (attempt %d)", self.what, self.error, self.attempt + 1)
        wait = delay(self.attempt, exc, b.backoff_s, b.max_backoff_s)
        self.attempt += 1
        return wait


def classify(openai: Any, exc: BaseException, where: str, timeout: float) -> tuple[bool, Exception]:
    """(retryable?, the error to hand the caller)."""
    o = openai
    if isinstance(exc, (GuardOutputError, GuardUnavailableError)):
        return False, exc
    if isinstance(exc, o.APITimeoutError):
        return True, chain(GuardUnavailableError(f"{where} timed out after {timeout}s"), exc)
    if isinstance(exc, o.APIConnectionError):
        return True, chain(
            GuardUnavailableError(f"{where} failed: connection error ({_cause(exc)})"), exc
        )
    if isinstance(exc, o.APIResponseValidationError):
        return False, chain(GuardOutputError(f"{where}: the response is not a chat completion"), exc)
    if isinstance(exc, o.APIStatusError):
        status = exc.status_code
        err = chain(GuardUnavailableError(f"{where} failed: HTTP {status}: {_short(exc)}"), exc)
        return (status == 429 or status >= 500 or status == 408), err
    if isinstance(exc, (ValueError, TypeError, AttributeError)):  # a body we cannot read
        return False, chain(GuardOutputError(f"{where}: unreadable response ({exc})"), exc)
    return False, chain(GuardUnavailableError(f"{where} failed: {exc!r}"), exc)


def delay(attempt: int, exc: BaseException | None, backoff_s: float, max_backoff_s: float) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, jittered, ``Retry-After``
    honoured up to the cap."""
    wait = min(max_backoff_s, backoff_s * (2**attempt))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        try:
            after = float(headers.get("retry-after", ""))
            wait = max(wait, min(after, max_backoff_s))
        except (TypeError, ValueError):
            pass
    return wait * random.uniform(0.75, 1.0)


def chain(err: Exception, cause: BaseException) -> Exception:
    err.__cause__ = cause
    return err


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(exc)


def _short(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"][:300]
        if isinstance(body.get("message"), str):
            return body["message"][:300]
    return str(getattr(exc, "message", exc))[:300]
