#!/usr/bin/env bash
# Install vLLM's router (`vllm-router` on PyPI: the Rust router of vllm-project/router, with the
# consistent_hash policy on the x-session-id header) in its own venv, for the scale-out recipe
# (scripts/scale_out.py, docs/stream_on_vllm.md). Never into the project's .venv. Idempotent;
# prints the router executable on stdout.
#
#   QWEN3GUARD_ROUTER_VENV     where to create the venv (default ~/.cache/qwen3guard/router-venv)
#   QWEN3GUARD_ROUTER_VERSION  vllm-router version (default 0.1.17, the one the recipe ran with)
set -euo pipefail

VENV="${QWEN3GUARD_ROUTER_VENV:-$HOME/.cache/qwen3guard/router-venv}"
VERSION="${QWEN3GUARD_ROUTER_VERSION:-0.1.17}"
if [ -x "$VENV/bin/vllm-router" ] && "$VENV/bin/python" -m pip show vllm-router 2>/dev/null \
        | grep -q "^Version: $VERSION\$"; then
    echo "$VENV/bin/vllm-router"
    exit 0
fi
python3 -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "vllm-router==$VERSION" >&2
echo "$VENV/bin/vllm-router"
