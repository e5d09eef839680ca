"""The IO-processor plugin that lets a client read vLLM's prefix cache for Stream's per-token
outputs (read against vLLM 0.32.0: ``vllm/plugins/io_processors/interface.py``,
``vllm/entrypoints/pooling/pooling/io_processor.py``, ``vllm/pooling_params.py``,
``vllm/renderers/base.py``).

Why a plugin: stock ``/pooling`` drops unknown request fields, and
``PoolingParams.verify`` sets ``skip_reading_prefix_cache=True`` for ``token_classify`` (the
output would otherwise miss the cached positions). A client that knows this, and wants only
the rows of its new tokens, can read the cache: the plugin's :meth:`merge_pooling_params`
returns ``task="token_classify"``, ``use_activation=False`` and
``skip_reading_prefix_cache=False``.

Request (``POST /pooling``; select the plugin with ``--io-processor-plugin
qwen3guard_stream``)::

    {"model": "...", "data": {
        "prompt_token_ids": [...],      # the whole prefix: prompt, header and answer so far
        "from": 812,                    # the first position whose rows the client wants
        "query_index": 57,              # optional: also return this position's query heads
        "cache_salt": "tenant-a",       # optional: prefix-cache isolation (see below)
        "read_cache": true}}            # optional, default true

Response ``data``::

    {"first": 800, "num_cached_tokens": 800, "num_tokens": 830,
     "sizes": [3, 8, 3, 9],             # risk, category, query risk, query category
     "rows": [[...], ...],              # response heads (risk | category) from ``first`` on
     "query": [...] | null}             # query heads (query risk | query category)

vLLM computes (and returns rows for) only the positions after its cached blocks, so ``first``
is ``max(from, num_cached_tokens)``. ``first > from`` happens when more of the sequence was
cached than the client expected (another request carried the same tokens further); the client
then asks for the prefix that ends at ``first`` (vLLM always computes at least a prompt's last
token), which costs the gap plus at most one block. ``"read_cache": false`` computes all.

Per-request state: vLLM 0.32 calls ``merge_pooling_params()`` without the request, right after
``pre_process`` in the same synchronous block (``get_request_factory_online``), and
``post_process`` with the request id only. So ``pre_process`` leaves the cache flag for the
next ``merge_pooling_params`` call and the wanted positions under the request id.

``cache_salt`` is passed on in the prompt dict; vLLM's renderer copies it into the engine
input (``renderers/base.py``: ``if cache_salt := prompt.get("cache_salt")``), so requests with
different salts never share cached blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from vllm.config import VllmConfig
from vllm.outputs import PoolingRequestOutput
from vllm.plugins.io_processors.interface import IOProcessor
from vllm.pooling_params import PoolingParams

from .model import head_sizes

_MAX_PENDING = 4096  # requests whose post-processing has not run yet (failed ones expire)


class StreamIOProcessor(IOProcessor[dict, dict]):
    def __init__(self, vllm_config: VllmConfig, renderer: Any = None) -> None:
        super().__init__(vllm_config, renderer)
        self.sizes = head_sizes(vllm_config.model_config.hf_config)
        self.max_len = int(vllm_config.model_config.max_model_len)
        self._next_read_cache = True
        self._pending: OrderedDict[Any, tuple[int, int | None]] = OrderedDict()

    def parse_data(self, data: object) -> dict:
        if not isinstance(data, dict):
            raise ValueError("data must be an object with prompt_token_ids")
        ids = data.get("prompt_token_ids")
        # set(map(type, ...)): the one pass over the prefix, at C speed (bools are not ints here)
        if not isinstance(ids, list) or not ids or set(map(type, ids)) != {int} or min(ids) < 0:
            raise ValueError("data.prompt_token_ids must be a non-empty list of token ids")
        if len(ids) > self.max_len:
            raise ValueError(
                f"data.prompt_token_ids has {len(ids)} tokens, over max_model_len {self.max_len}"
            )
        first = data.get("from", 0)
        if not isinstance(first, int) or not 0 <= first <= len(ids):
            raise ValueError("data.from must be a position in prompt_token_ids")
        query = data.get("query_index")
        if query is not None and (not isinstance(query, int) or not 0 <= query < len(ids)):
            raise ValueError("data.query_index must be a position in prompt_token_ids")
        salt = data.get("cache_salt")
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise ValueError("data.cache_salt must be a non-empty string")
        read = data.get("read_cache", True)
        if not isinstance(read, bool):
            raise ValueError("data.read_cache must be true or false")
        return {"ids": ids, "from": first, "query_index": query, "cache_salt": salt,
                "read_cache": read}

    def pre_process(
        self, prompt: dict, request_id: str | None = None, **kwargs: Any
    ) -> dict:
        self._next_read_cache = prompt["read_cache"]
        self._pending[request_id] = (prompt["from"], prompt["query_index"])
        while len(self._pending) > _MAX_PENDING:
            self._pending.popitem(last=False)
        out: dict[str, Any] = {"prompt_token_ids": prompt["ids"]}
        if prompt["cache_salt"]:
            out["cache_salt"] = prompt["cache_salt"]
        return out

    def merge_pooling_params(self, params: PoolingParams | None = None) -> PoolingParams:
        read, self._next_read_cache = self._next_read_cache, True
        params = params or PoolingParams()
        params.task = "token_classify"
        params.use_activation = False
        params.skip_reading_prefix_cache = not read
        return params

    def post_process(
        self,
        model_output: Sequence[PoolingRequestOutput],
        request_id: str | None = None,
        **kwargs: Any,
    ) -> dict:
        want_from, query_index = self._pending.pop(request_id, (0, None))
        if len(model_output) != 1:
            raise ValueError(f"expected one output, got {len(model_output)}")
        out = model_output[0]
        data = out.outputs.data
        n_tokens = len(out.prompt_token_ids) if out.prompt_token_ids else None
        computed_from = int(out.num_cached_tokens or 0)
        if n_tokens is None:
            n_tokens = computed_from + int(data.shape[0])
        # Rows are returned for the positions vLLM computed: [num_cached_tokens, n_tokens).
        computed_from = n_tokens - int(data.shape[0])
        first = max(want_from, computed_from)
        nr, nc, nqr, nqc = self.sizes
        resp = data[first - computed_from :, : nr + nc].float().tolist()
        query = None
        if query_index is not None and query_index >= computed_from:
            query = data[query_index - computed_from, nr + nc : nr + nc + nqr + nqc]
            query = query.float().tolist()
        return {
            "first": first,
            "num_cached_tokens": int(out.num_cached_tokens or 0),
            "num_tokens": n_tokens,
            "sizes": [nr, nc, nqr, nqc],
            "rows": resp,
            "query": query,
        }
