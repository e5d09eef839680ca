"""Qwen3Guard-Stream served by vLLM: sessions whose state lives in vLLM's prefix cache.

    from qwen3guard import Qwen3Guard
    from qwen3guard.stream.vllm import VLLMStreamBackend

    stream = VLLMStreamBackend("http://127.0.0.1:8000/v1", "Qwen/Qwen3Guard-Stream-0.6B")
    guard = Qwen3Guard(gen_backend, stream=stream)          # or Qwen3Guard(stream=stream)
    with guard.open_stream([{"role": "user", "content": "Tell me a story"}]) as session:
        update = session.feed_text(chunk)

The server is a stock vLLM with this project's plugins installed (``qwen3guard[vllm]``; see
:mod:`qwen3guard.vllm`)::

    python -m vllm.entrypoints.openai.api_server --model Qwen/Qwen3Guard-Stream-0.6B \\
        --runner pooling --pooler-config '{"task": "token_classify"}' \\
        --enable-prefix-caching --io-processor-plugin qwen3guard_stream

How a session works: it is the local session (:class:`~qwen3guard.stream.local
.LocalStreamSession`: the same prompt plan, re-tokenization, debounce, flag offsets,
``settled_offset``, context sliding and rollback), with the model's forward replaced by a
``POST /pooling`` that carries the **whole prefix** (prompt, template header and the answer
so far) and asks for the rows of the new tokens. The "cache" the session keeps is the list of
ids it has sent. vLLM's prefix cache makes a request cost only the tokens after the last full
cached block (at most one block of recomputation); any replica can answer any request,
correctly, and one that has the prefix cached answers it cheaply. A restarted server just
recomputes the prefix once.

- ``submit_every=k`` holds the answer's tokens until ``k`` have accumulated (and at
  ``close()``/``end()``) instead of sending every chunk: fewer requests, later verdicts. Text
  that is held is not judged, so it is not *settled* either (``settled_offset`` never passes
  unjudged text). ``k=1`` (the default) sends every chunk.
- ``cache_salt``: requests with different salts never share cached blocks (vLLM hashes the
  salt into the first block), so tenants cannot time each other's prompts through the cache.
  Pass one per tenant to the backend, or ``open_stream(..., cache_salt=...)`` per session.
- ``session_header`` (default ``x-session-id``): every request of a session carries this
  header with the session's id (``open_stream(..., session_id=...)``, default a random one), so
  a router with session affinity (consistent hashing on the header: vLLM's ``vllm-router
  --policy consistent_hash``, nginx ``hash $http_x_session_id consistent``) sends a session's
  requests to the replica that has its prefix cached. ``session_header=None`` sends none.
  Without affinity the verdicts are the same, only slower (docs/stream_on_vllm.md, scale-out).
- Failures: a refused connection, a timeout, an HTTP error or a malformed answer raise
  :class:`~qwen3guard.GuardUnavailableError` / :class:`~qwen3guard.GuardOutputError`, and the
  session refuses further feeds (an answer that was not judged is never taken as Safe; the
  gate applies the policy's fail-closed rule). Connection errors and a router's 502/503/504 are
  retried ``max_retries`` times first: a request is idempotent, it carries the whole prefix.

HTTP or in process: this backend talks to a vLLM server over HTTP; the same
:class:`~qwen3guard.vllm.io_processor.StreamIOProcessor` request works with vLLM's in-process
``LLM.encode``/``AsyncLLM`` (``PoolingParams(task="token_classify", use_activation=False,
skip_reading_prefix_cache=False)``; read against vLLM 0.32.0).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from ..errors import GuardOutputError, GuardUnavailableError, InvalidInputError, Qwen3GuardError
from ..gen.tokenize import ConversationEncoder
from ..policy import Policy
from .labels import resolve_labels
from .local import LocalStreamSession
from .local_backend import LocalStreamBackend, StepOutput
from .retokenize import kept_added_tokens
from .types import StreamUpdate, TokenVerdict

log = logging.getLogger(__name__)

__all__ = ["RequestStats", "VLLMStreamBackend", "VLLMStreamSession", "pooling_url"]


def pooling_url(base_url: str) -> str:
    """``http://h:8000/v1`` (or ``http://h:8000``) -> ``http://h:8000/pooling``."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path + "/pooling", "", ""))


@dataclass(frozen=True)
class RequestStats:
    """One request to vLLM: the tokens it carried, how many vLLM read from its cache, and how
    many it computed (``num_tokens - num_cached_tokens``); ``wanted_from`` is the first
    position whose rows were asked for (so ``num_tokens - wanted_from`` tokens were new)."""

    num_tokens: int
    num_cached_tokens: int
    wanted_from: int
    cache_read_off: bool = False
    fill: bool = False  # a second request of the same forward (see ``forward``)
    seconds: float = 0.0

    @property
    def computed(self) -> int:
        return self.num_tokens - self.num_cached_tokens


class VLLMStreamBackend:
    """Opens Stream sessions on a vLLM server running the project's plugins.

    ``model``: the served model name (default: the server's only model). ``tokenizer``: a
    path or hub id with the Stream checkpoint's tokenizer, chat template and config (default:
    ``model``); the client plans prompts exactly as the local session does. ``cache_salt``:
    the default salt of every request (one per tenant); a session may pass its own.
    ``submit_every``: tokens per request (see the module docstring). ``read_cache=False``
    makes every request compute its whole prefix (a baseline for benchmarks).
    ``session_header``: the header that carries each session's id, for a router with session
    affinity (None: no header). ``headers``: sent with every request (e.g. a gateway's)."""

    name = "vllm-stream"

    # The prompt plan, verdict reading and session bookkeeping are the local backend's.
    plan_prompt = LocalStreamBackend.plan_prompt
    _encode_prompt = LocalStreamBackend._encode_prompt
    query_verdict = LocalStreamBackend.query_verdict
    token_verdicts = LocalStreamBackend.token_verdicts
    _session_opened = LocalStreamBackend._session_opened
    _session_released = LocalStreamBackend._session_released
    active_sessions = LocalStreamBackend.active_sessions

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        tokenizer: Any = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        cache_salt: str | None = None,
        submit_every: int = 1,
        max_context_tokens: int | None = None,
        read_cache: bool = True,
        log_requests: int = 100_000,
        session_header: str | None = "x-session-id",
        headers: dict[str, str] | None = None,
    ) -> None:
        import httpx
        import torch
        from transformers import AutoConfig, AutoTokenizer

        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if submit_every < 1:
            raise ValueError("submit_every must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.url = pooling_url(base_url)
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.cache_salt = cache_salt
        self.submit_every = int(submit_every)
        self.read_cache = bool(read_cache)
        self.session_header = session_header or None
        self.extra_headers = dict(headers or {})
        self._http = httpx.Client(
            timeout=self.timeout, headers={**self.extra_headers, **self._headers()}
        )
        self._torch = torch
        server_len: int | None = None
        root = model
        if model is None:
            model, root, server_len = self._served_model()
        self.model = model
        source = tokenizer if tokenizer is not None else root
        self.tokenizer: Any = cast(
            Any, AutoTokenizer.from_pretrained(source) if isinstance(source, str) else source
        )
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidInputError(f"the tokenizer of {source} has no chat template")
        self.config = AutoConfig.from_pretrained(
            source if isinstance(source, str) else self.tokenizer.name_or_path
        )
        self.encoder = ConversationEncoder(self.tokenizer)
        ctx = int(getattr(self.config, "max_position_embeddings", 0) or 32768)
        for limit in (max_context_tokens, server_len):
            if limit:
                ctx = min(ctx, int(limit))
        self.max_context_tokens = ctx
        self.vocab_size = int(getattr(self.config, "vocab_size", 0) or len(self.tokenizer))
        self.labels = resolve_labels(self.config)
        self.kept_added = kept_added_tokens(self.tokenizer)
        self.im_end_id = self._token_id("<|im_end|>")
        self._sizes = (
            len(self.labels.risk),
            len(self.labels.category),
            len(self.labels.query_risk),
            len(self.labels.query_category),
        )
        self._live: set[Any] = set()
        self._closed = False
        self._lock = threading.Lock()
        self._tls = threading.local()
        self.forwards_run = 0
        #: The most recent requests (for tests and benchmarks), oldest first.
        self.requests: deque[RequestStats] = deque(maxlen=log_requests)

    # -- public --------------------------------------------------------------------------

    def open_session(self, prompt_messages: Any, **options: Any) -> VLLMStreamSession:
        """A session on the served model; the prompt is judged on open."""
        if self._closed:
            raise GuardUnavailableError("the vLLM Stream backend has been closed")
        return VLLMStreamSession(self, prompt_messages, **options)

    async def aopen_session(self, prompt_messages: Any, **options: Any) -> VLLMStreamSession:
        import asyncio

        return await asyncio.to_thread(self.open_session, prompt_messages, **options)

    def close(self) -> None:
        self._closed = True
        self._http.close()

    # -- used by sessions ----------------------------------------------------------------

    def _token_id(self, token: str) -> int | None:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == self.tokenizer.unk_token_id:
            return None
        return tid

    def crop(self, cache: Any, length: int) -> Any:
        """The prefix cut back to ``length`` ids (a rollback)."""
        if cache is None:
            return None
        return _Prefix(cache.ids[:length], cache.salt, cache.session_id,
                       _ids_json(cache.ids[:length]))

    def forward(
        self,
        ids: Sequence[int],
        cache: Any,
        *,
        query_index: int | None = None,
        last: int | None = None,
        salt: str | None = None,
    ) -> tuple[StepOutput, _Prefix]:
        """The local backend's ``forward`` over HTTP: ``cache`` is the :class:`_Prefix` sent
        so far (None: none); one request carries all of it plus ``ids`` and returns the
        rows of the last ``last`` positions (default: all of ``ids``)."""
        prefix = cache.ids if cache is not None else []
        if cache is not None:
            salt, sid = cache.salt, cache.session_id
        else:
            salt = salt or getattr(self._tls, "salt", None) or self.cache_salt
            sid = getattr(self._tls, "session_id", None)
        full = [*prefix, *ids]
        # The JSON of the ids sent so far is kept with the prefix: a request appends only its
        # new ids instead of re-encoding the whole prefix.
        head = "" if cache is None else cache.encoded or _ids_json(prefix)
        new = _ids_json(ids)
        enc = f"{head},{new}" if head and new else head or new
        n = len(ids) if last is None else last
        want = len(full) - n
        if not self.read_cache:  # a baseline: every request computes its whole prefix
            data = self._pool(full, want, query_index, salt, read_cache=False, session_id=sid,
                              encoded=enc)
            step = self._step(data["rows"], data.get("query"), n, query_index)
            return step, _Prefix(full, salt, sid, enc)
        data = self._pool(full, want, query_index, salt, session_id=sid, encoded=enc)
        rows = list(data["rows"])
        hi = data["first"]
        while hi > want:
            # More was cached than this session had sent (another request carried the same
            # tokens further): vLLM returns rows only for what it computes, and it always
            # computes at least the last token. Ask for the prefix that ends where the rows
            # began; each step computes at most the gap plus one block.
            more = self._pool(full[:hi], want, None, salt, fill=True, session_id=sid)
            if more["first"] >= hi:
                raise GuardOutputError("vLLM did not return the rows asked for")
            rows = list(more["rows"]) + rows
            hi = more["first"]
        query = data.get("query")
        if query_index is not None and query is None:
            query = self._pool(full[: query_index + 1], query_index, query_index, salt,
                               fill=True, session_id=sid).get("query")
            if query is None:
                raise GuardOutputError("vLLM did not return the query heads asked for")
        return self._step(rows, query, n, query_index), _Prefix(full, salt, sid, enc)

    def _step(
        self, rows: Any, query: Any, n: int, query_index: int | None
    ) -> StepOutput:
        torch = self._torch
        nr, nc, nqr, nqc = self._sizes
        if not isinstance(rows, list) or len(rows) != n or any(len(r) != nr + nc for r in rows):
            raise GuardOutputError(
                f"vLLM returned {len(rows) if isinstance(rows, list) else 'no'} rows for {n} "
                "tokens (or rows of the wrong width); "
                "is the server running the qwen3guard_stream IO processor on a Stream model?"
            )
        t = torch.tensor(rows, dtype=torch.float32).reshape(n, nr + nc)
        q_risk = q_cat = None
        if query_index is not None:
            if query is None:
                raise GuardOutputError("vLLM did not return the query heads asked for")
            q = torch.tensor(query, dtype=torch.float32)
            if q.numel() != nqr + nqc:
                raise GuardOutputError("vLLM returned query heads of the wrong width")
            q_risk, q_cat = q[:nqr], q[nqr:]
        self.forwards_run += 1
        return StepOutput(t[:, :nr], t[:, nr:], q_risk, q_cat)

    # -- HTTP ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _session_headers(self, session_id: str | None) -> dict[str, str] | None:
        if self.session_header and session_id:
            return {self.session_header: session_id}
        return None

    def _served_model(self) -> tuple[str, str, int | None]:
        """(served name, checkpoint path or hub id, max_model_len) of the only model."""
        try:
            r = self._http.get(self.base_url + ("" if self.base_url.endswith("/v1") else "/v1")
                               + "/models")
            r.raise_for_status()
            models = r.json()["data"]
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(f"could not list the models at {self.base_url}", exc) from exc
        if len(models) != 1:
            raise InvalidInputError(
                f"{self.base_url} serves {len(models)} models; pass model= to pick one"
            )
        m = models[0]
        return str(m["id"]), str(m.get("root") or m["id"]), m.get("max_model_len")

    def _pool(
        self,
        ids: list[int],
        want: int,
        query_index: int | None,
        salt: str | None,
        *,
        read_cache: bool = True,
        fill: bool = False,
        session_id: str | None = None,
        encoded: str | None = None,
    ) -> dict[str, Any]:
        """One request; ``encoded``: the JSON of ``ids`` without brackets, if the caller
        has it (else it is encoded here)."""
        if self._closed:
            raise GuardUnavailableError("the vLLM Stream backend has been closed")
        rest: dict[str, Any] = {"from": want, "read_cache": read_cache}
        if query_index is not None:
            rest["query_index"] = query_index
        if salt:
            rest["cache_salt"] = salt
        enc = _ids_json(ids) if encoded is None else encoded
        content = (
            f'{{"model":{json.dumps(self.model)},"data":{{"prompt_token_ids":[{enc}],'
            f"{json.dumps(rest, separators=(',', ':'))[1:]}}}"
        ).encode()
        headers = {"Content-Type": "application/json",
                   **(self._session_headers(session_id) or {})}
        import httpx

        t0 = time.perf_counter()
        attempt = 0
        while True:
            try:
                r = self._http.post(self.url, content=content, headers=headers)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt >= self.max_retries:
                    raise _unavailable(f"vLLM at {self.url}", exc) from exc
            except Exception as exc:  # noqa: BLE001 - timeouts and the rest: no retry
                raise _unavailable(f"vLLM at {self.url}", exc) from exc
            else:
                # A router in front of the replicas answers 502/503/504 for a replica that went
                # away; the request carries the whole prefix, so another replica can answer it.
                if r.status_code not in _GATEWAY_ERRORS or attempt >= self.max_retries:
                    break
            attempt += 1
            time.sleep(0.2 * attempt)
        if r.status_code != 200:
            raise GuardUnavailableError(
                f"vLLM at {self.url} answered HTTP {r.status_code}: {r.text[:500]}"
            )
        try:
            data = r.json()["data"]
            first = int(data["first"])
            cached = int(data["num_cached_tokens"])
            rows = data["rows"]
            if not isinstance(rows, list):
                raise TypeError("rows is not a list")
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise GuardOutputError(
                f"vLLM at {self.url} sent an answer that is not the qwen3guard_stream IO "
                f"processor's ({exc}); start it with --io-processor-plugin qwen3guard_stream"
            ) from exc
        self.requests.append(
            RequestStats(len(ids), cached, want, not read_cache, fill, time.perf_counter() - t0)
        )
        data["first"] = first
        return data


_GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(frozen=True)
class _Prefix:
    """What a vLLM session keeps instead of a KV cache: the ids it has sent, its salt and its
    id (the affinity header's value)."""

    ids: list[int]
    salt: str | None = None
    session_id: str | None = None
    encoded: str = field(default="", repr=False, compare=False)  # ``_ids_json(ids)``


def _ids_json(ids: Sequence[int]) -> str:
    """Token ids as the inside of a JSON array (``1,2,3``)."""
    return ",".join(map(str, map(int, ids)))


def _unavailable(what: str, exc: BaseException) -> GuardUnavailableError:
    import httpx

    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return GuardUnavailableError(f"{what}: timed out")
    return GuardUnavailableError(f"{what}: {type(exc).__name__}: {exc}")


class VLLMStreamSession(LocalStreamSession):
    """A moderation session on a vLLM-served Stream model (see the module docstring).

    Options besides the local session's (``policy``, ``debounce``, ``record_logits``):
    ``cache_salt`` (default: the backend's), ``submit_every`` (default: the backend's) and
    ``session_id`` (the affinity header's value; default a random hex id)."""

    _backend: VLLMStreamBackend  # type: ignore[assignment]

    def __init__(
        self,
        backend: VLLMStreamBackend,
        prompt_messages: Any,
        *,
        policy: Policy | None = None,
        debounce: str = "report",
        record_logits: bool = False,
        cache_salt: str | None = None,
        submit_every: int | None = None,
        session_id: str | None = None,
    ) -> None:
        import uuid

        k = backend.submit_every if submit_every is None else int(submit_every)
        if k < 1:
            raise InvalidInputError("submit_every must be >= 1")
        self._submit_every = k
        self._pending: list[tuple[int, int | None, str]] = []
        self._deferred_scored = 0
        self._force = False
        self._failure: Qwen3GuardError | None = None
        self._salt = cache_salt if cache_salt is not None else backend.cache_salt
        self.session_id = session_id or uuid.uuid4().hex
        backend._tls.salt = self._salt  # the prompt's requests (open, windows) carry it
        backend._tls.session_id = self.session_id
        try:
            super().__init__(
                backend,  # type: ignore[arg-type]
                prompt_messages,
                policy=policy,
                debounce=debounce,
                record_logits=record_logits,
            )
        finally:
            backend._tls.salt = None
            backend._tls.session_id = None

    @property
    def submit_every(self) -> int:
        return self._submit_every

    @property
    def pending_tokens(self) -> int:
        """Answer tokens held back until ``submit_every`` are collected (not yet judged)."""
        return len(self._pending)

    # -- failures end the session ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(f"the stream session failed earlier: {self._failure}")
        super()._check_open()

    def _guarded(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Qwen3GuardError as exc:
            if not isinstance(exc, InvalidInputError):
                self._failure = exc
            raise

    def _feed_text(self, chunk: str) -> StreamUpdate:
        return self._guarded(super()._feed_text, chunk)

    def _feed_ids(self, ids: list[int]) -> StreamUpdate:
        return self._guarded(super()._feed_ids, ids)

    # -- the forward over HTTP ---------------------------------------------------------------

    def _slide(self) -> None:
        salt = self._salt
        plan = self._plan
        head = plan.ids + self._tail_ids
        ctx = self._backend.max_context_tokens
        keep = max(0, (ctx - len(head)) // 2)
        recent = list(self._recent)[-keep:] if keep else []
        self._backend._tls.session_id = self.session_id
        try:
            _, cache = self._backend.forward(head + recent, None, last=0, salt=salt)
        finally:
            self._backend._tls.session_id = None
        self._kv.cache = cache
        self._cache_len = len(head) + len(recent)
        self._slides += 1

    # -- batching across tokens --------------------------------------------------------------

    def _run(self, items: list[tuple[int, int | None, str]]) -> list[TokenVerdict]:
        self._pending.extend(items)
        n_answer = sum(1 for _, s, _ in self._pending if s is not None)
        if not self._pending or (not self._force and n_answer < self._submit_every):
            return []
        batch, self._pending = self._pending, []
        tvs = super()._run(batch)
        if self._deferred_scored:
            self._scored_end = max(self._scored_end, self._deferred_scored)
            self._deferred_scored = 0
        return tvs

    def _run_pieces(self, pieces: Any) -> StreamUpdate:
        before = self._scored_end
        update = super()._run_pieces(pieces)
        if self._pending:  # nothing was judged: the text is not scored yet
            self._deferred_scored = max(self._deferred_scored, self._scored_end)
            self._scored_end = before
            update = self._snapshot(update.token_verdicts, dict(update.metadata))
        return update

    def _close(self) -> StreamUpdate:
        def run() -> StreamUpdate:
            self._force = True
            try:
                tvs: list[TokenVerdict] = []
                if self._retok is not None:
                    tvs = list(self._run_pieces(self._retok.flush()).token_verdicts)
                    self._retok = None
                tvs.extend(self._run([]))
            finally:
                self._force = False
            self._debouncer.finish()
            self._ended = True
            return self._snapshot(tvs, {"closed": True})

        return self._guarded(run)

    def _reset_answer(self) -> None:
        self._pending = []
        self._deferred_scored = 0
        super()._reset_answer()

    def _snapshot(
        self, token_verdicts: Sequence[TokenVerdict] = (), metadata: dict[str, Any] | None = None
    ) -> StreamUpdate:
        meta = dict(metadata or {})
        meta["backend"] = "vllm"
        if self._pending:
            meta["pending_tokens"] = len(self._pending)
        return super()._snapshot(token_verdicts, meta)

