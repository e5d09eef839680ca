"""Qwen3Guard-Gen behind an OpenAI-compatible API: vLLM, SGLang or ``qwen3guard serve``.

Each conversation is one chat completion (temperature 0, a small ``max_tokens``); the server
renders the checkpoint's own chat template. A batch is sent as concurrent requests, at most
``max_concurrency`` in flight per backend (sync: a thread pool; async: a semaphore per event
loop). Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff,
``max_retries`` times (so at most ``1 + max_retries`` attempts per conversation); anything that
still fails becomes :class:`GuardUnavailableError`, an answer without text becomes
:class:`GuardOutputError`. Neither is ever read as Safe: the facade's policy decides whether
a failure blocks (the default) or is allowed with a warning (``Policy(fail_open=True)``).

Content is data. A remote server tokenizes the *rendered* prompt with special-token parsing on,
so a message containing the text ``<|im_end|>`` would otherwise close the turn it sits in and
let the content write its own template (and its own "verdict"). Before sending, every ``<|`` in a
message gets a zero-width space (U+200B) after it and the tag-like added tokens of Qwen3's
tokenizer (``<think>``, ``</tool_call>``, ...) get one after their ``<``: the text reads the
same to the model but can no longer be matched as a special token. (The in-process backend
needs no such trick: it encodes content with special-token parsing off.)

Long content is split into windows by the facade (``split_windows``). Without the server's
tokenizer the window size is estimated from characters, conservatively (see
:func:`approx_token_ends`), within ``max_context_tokens`` (default 2048; ``"auto"`` asks the
server, which vLLM answers with ``max_model_len`` in ``GET /v1/models``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ..errors import ContextLengthError, GuardOutputError, GuardUnavailableError
from ..messages import Message
from ..windows import approx_token_ends, window_conversation
from .base import GenBackend
from .retry import Retry, chain

log = logging.getLogger(__name__)

ZWSP = "\u200b"
# `<|anything|>`-style special tokens: break the `<|` opener. Every `<|` is broken, whether or
# not a token of that name exists on the server: the server's vocabulary is unknown here.
_PIPE_OPEN = re.compile(r"<\|")
# Qwen3's added tokens that look like tags.
_TAG_TOKENS = re.compile(r"<(?=/?(?:think|tool_call|tool_response)>)")

DEFAULT_CONTEXT_TOKENS = 2048


def neutralize_special_tokens(text: str) -> str:
    """Make special-token spellings inside content plain text for a server-side tokenizer.

    ``<|im_end|>`` becomes ``<|\\u200bim_end|>`` and ``</think>`` becomes ``<\\u200b/think>``.
    The model still reads the characters; the tokenizer can no longer match the token.
    """
    if "<" not in text:
        return text
    text = _PIPE_OPEN.sub("<|" + ZWSP, text)
    return _TAG_TOKENS.sub("<" + ZWSP, text)


def normalize_base_url(base_url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path is kept as given."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class OpenAIGenBackend(GenBackend):
    """Qwen3Guard-Gen over the OpenAI chat-completions API.

    - ``base_url``: ``http://host:8000/v1`` (a URL without a path gets ``/v1``).
    - ``model``: the served model id; ``None`` uses the first one ``GET /v1/models`` lists.
    - ``api_key``: sent as ``Authorization: Bearer``; ``None`` sends a placeholder, never
      ``OPENAI_API_KEY`` from the environment (a guard server is not OpenAI).
    - ``timeout``: seconds per attempt; ``max_retries``: extra attempts after a connection
      error, timeout, 408, 429 or 5xx (exponential backoff from ``backoff_s``, capped at
      ``max_backoff_s``, honouring ``Retry-After`` up to that cap). Other 4xx are not retried.
    - ``max_concurrency``: requests in flight at once from this backend (sync and, per event
      loop, async).
    - ``max_tokens``: the answer's token budget (a verdict is under 20 tokens).
    - ``max_context_tokens`` / ``template_overhead_tokens`` / ``token_ends``: how long contents
      are windowed (see the module docstring).
    - ``extra_body``: extra JSON fields for every request (e.g. vLLM sampling options).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_concurrency: int = 16,
        max_tokens: int = 64,
        max_context_tokens: int | Literal["auto"] = DEFAULT_CONTEXT_TOKENS,
        template_overhead_tokens: int = 640,
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
        extra_body: dict[str, Any] | None = None,
        default_headers: dict[str, str] | None = None,
        token_ends: Callable[[str], Sequence[int]] | None = None,
    ) -> None:
        import openai

        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_context_tokens != "auto" and (
            not isinstance(max_context_tokens, int) or max_context_tokens < 256
        ):
            raise ValueError("max_context_tokens must be an int >= 256 or 'auto'")
        self._openai = openai
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.max_tokens = int(max_tokens)
        self.template_overhead_tokens = int(template_overhead_tokens)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.extra_body = dict(extra_body or {})
        self._headers = dict(default_headers or {})
        self._token_ends = token_ends or approx_token_ends
        self._max_context: int | Literal["auto"] = max_context_tokens
        self._server_max_len: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "EMPTY",
            timeout=self.timeout,
            max_retries=0,
            default_headers=self._headers or None,
        )
        self._sem = threading.BoundedSemaphore(self.max_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        # One AsyncOpenAI client (and semaphore) per event loop: an async HTTP connection pool
        # belongs to the loop that opened it.
        self._async: weakref.WeakKeyDictionary[Any, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )

    # -- GenBackend ---------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Sequence[Message]]) -> list[str | BaseException]:
        convs = [list(c) for c in conversations]
        if not convs:
            return []
        try:
            self._check_open()
            model = self._resolve_model()
        except GuardUnavailableError as exc:
            return [exc for _ in convs]
        if len(convs) == 1:
            return [self._complete(model, convs[0])]
        try:
            pool = self._get_pool()
            futures = [pool.submit(self._complete, model, c) for c in convs]
        except (GuardUnavailableError, RuntimeError) as exc:  # closed meanwhile
            return [GuardUnavailableError(f"the remote Gen backend is closed ({exc})")] * len(convs)
        out: list[str | BaseException] = []
        for f in futures:
            try:
                out.append(f.result())
            except BaseException as exc:  # noqa: BLE001 - cancelled by close()
                out.append(
                    chain(GuardUnavailableError(f"the Gen request did not run: {exc!r}"), exc)
                )
        return out

    async def agenerate(
        self, conversations: Sequence[Sequence[Message]]
    ) -> list[str | BaseException]:
        convs = [list(c) for c in conversations]
        if not convs:
            return []
        try:
            self._check_open()
            client, sem = self._async_state()
            model = await self._aresolve_model(client)
        except GuardUnavailableError as exc:
            return [exc for _ in convs]
        return list(await asyncio.gather(*(self._acomplete(client, sem, model, c) for c in convs)))

    def split_windows(self, conversation: Sequence[Message]) -> list[list[Message]]:
        budget = self.context_tokens() - self.template_overhead_tokens - self.max_tokens - 16
        if budget < 64:
            raise ContextLengthError(
                f"max_context_tokens={self.context_tokens()} leaves no room for content "
                f"(template overhead {self.template_overhead_tokens}, max_tokens {self.max_tokens})"
            )
        return window_conversation(conversation, token_ends=self._token_ends, budget=budget)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        for loop, (client, _) in list(self._async.items()):
            if loop.is_closed() or not loop.is_running():
                continue
            with contextlib.suppress(RuntimeError):  # best effort, on its own loop
                asyncio.run_coroutine_threadsafe(client.close(), loop)
        self._async.clear()

    async def aclose(self) -> None:
        """Close, awaiting the current loop's async client."""
        state = self._async.get(asyncio.get_running_loop())
        if state is not None:
            await state[0].close()
            self._async.pop(asyncio.get_running_loop(), None)
        self.close()

    # -- introspection --------------------------------------------------------------------------

    def context_tokens(self) -> int:
        """The context size windows are sized for."""
        if self._max_context != "auto":
            return int(self._max_context)
        if self._server_max_len is None:
            try:
                self._resolve_model(force_list=True)
            except GuardUnavailableError as exc:
                log.warning(
                    "could not ask the server for its context length (%s); using %d",
                    exc,
                    DEFAULT_CONTEXT_TOKENS,
                )
                return DEFAULT_CONTEXT_TOKENS
        return self._server_max_len or DEFAULT_CONTEXT_TOKENS

    # -- internals: model --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GuardUnavailableError("the remote Gen backend has been closed")

    def _pick_model(self, data: Sequence[Any]) -> str:
        if not data:
            raise GuardUnavailableError(f"{self.base_url}/models lists no model")
        chosen = None
        if self.model is not None:
            chosen = next((m for m in data if getattr(m, "id", None) == self.model), None)
        entry = chosen or data[0]
        max_len = getattr(entry, "max_model_len", None)
        if isinstance(max_len, int) and max_len > 0:
            self._server_max_len = max_len
        return self.model or str(entry.id)

    def _resolve_model(self, *, force_list: bool = False) -> str:
        if self.model is not None and not force_list:
            return self.model
        retry = Retry(self, "listing models")
        while True:
            try:
                return self._adopt(self._client.models.list())
            except Exception as exc:  # noqa: BLE001 - classified by _Retry
                delay = retry.failed(exc)
                if delay is None:
                    raise retry.error from None
                time.sleep(delay)

    async def _aresolve_model(self, client: Any) -> str:
        if self.model is not None:
            return self.model
        retry = Retry(self, "listing models")
        while True:
            try:
                return self._adopt(await client.models.list())
            except Exception as exc:  # noqa: BLE001 - classified by _Retry
                delay = retry.failed(exc)
                if delay is None:
                    raise retry.error from None
                await asyncio.sleep(delay)

    def _adopt(self, page: Any) -> str:
        with self._lock:
            model = self._pick_model(list(page.data))
            if self.model is None:
                self.model = model
        return model

    # -- internals: completions ------------------------------------------------------------------

    def _request(self, model: str, conversation: Sequence[Message]) -> dict[str, Any]:
        messages = [
            {"role": m["role"], "content": neutralize_special_tokens(m["content"])}
            for m in conversation
        ]
        kw: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
            "n": 1,
            "stream": False,
        }
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        return kw

    def _complete(self, model: str, conversation: Sequence[Message]) -> str | BaseException:
        kw = self._request(model, conversation)
        retry = Retry(self, "Gen request")
        while True:
            try:
                with self._sem:
                    resp = self._client.chat.completions.create(**kw)
                return self._text_of(resp)
            except Exception as exc:  # noqa: BLE001 - classified by _Retry
                delay = retry.failed(exc)
                if delay is None:
                    return retry.error
                time.sleep(delay)

    async def _acomplete(
        self, client: Any, sem: asyncio.Semaphore, model: str, conversation: Sequence[Message]
    ) -> str | BaseException:
        kw = self._request(model, conversation)
        retry = Retry(self, "Gen request")
        while True:
            try:
                async with sem:
                    resp = await client.chat.completions.create(**kw)
                return self._text_of(resp)
            except Exception as exc:  # noqa: BLE001 - classified by _Retry
                delay = retry.failed(exc)
                if delay is None:
                    return retry.error
                await asyncio.sleep(delay)

    def _text_of(self, resp: Any) -> str:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise GuardOutputError("the server's completion has no choices", raw=None)
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            raise GuardOutputError("the server's completion has no text content", raw=None)
        return content

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise GuardUnavailableError("the remote Gen backend has been closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.max_concurrency, thread_name_prefix="qwen3guard-remote"
                )
            return self._pool

    def _async_state(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        state = self._async.get(loop)
        if state is None:
            # Forget clients of loops that are gone (each asyncio.run() makes a new loop); a
            # client can hold its loop alive, so the weak keys alone would not free them.
            for old in [lp for lp in list(self._async.keys()) if lp.is_closed()]:
                self._async.pop(old, None)
            # A plain HTTP client, not the SDK's default wrapper: that one schedules its own
            # aclose() on whatever loop runs when it is collected, which fails for a client of
            # a loop that is gone ("Event loop is closed").
            client = self._openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.api_key or "EMPTY",
                timeout=self.timeout,
                max_retries=0,
                default_headers=self._headers or None,
                http_client=self._openai.DefaultAsyncHttpxClient(timeout=self.timeout),
            )
            state = (client, asyncio.Semaphore(self.max_concurrency))
            self._async[loop] = state
        return state
