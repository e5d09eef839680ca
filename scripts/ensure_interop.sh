#!/usr/bin/env bash
# Make sure the interop virtualenv exists: any-guardrail (PyPI) with transformers < 5, for
# tests/test_interop_any_guardrail.py. Idempotent: does nothing when it is already there.
# Prints the venv's python on stdout.
#
#   QWEN3GUARD_INTEROP_PYTHON      use this interpreter instead (it must already import
#                                  any_guardrail and transformers < 5)
#   QWEN3GUARD_INTEROP_VENV        where to create the venv (default ~/.cache/qwen3guard/interop-venv)
#   QWEN3GUARD_INTEROP_TORCH       "share" (default): reuse the torch of TORCH_FROM_PYTHON through a
#                                  .pth file placed after the venv's own site-packages (so the
#                                  venv's transformers 4.x wins over the project's 5.x); "install":
#                                  pip-install a CPU torch into the venv (download.pytorch.org)
#   TORCH_FROM_PYTHON              interpreter whose torch is shared (default: .venv/bin/python)
#   INTEROP_BASE_PYTHON            interpreter that creates the venv (default python3; >= 3.11)
#
# No accelerate: it depends on torch, and pip would then fetch a CUDA torch.
# Versions: any-guardrail 0.7.7 (its Qwen3Guard wrapper, any_guardrail/guardrails/qwen3_guard/
# qwen3_guard.py, is what the test drives) and transformers 4.57.x, the line the official remote
# code and any-guardrail's Stream wrapper require.
set -euo pipefail

AG_VERSION="${QWEN3GUARD_ANY_GUARDRAIL_VERSION:-0.7.7}"
TF_SPEC="${QWEN3GUARD_INTEROP_TRANSFORMERS:-transformers>=4.57,<4.58}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ready() {
    "$1" - <<'PY' >/dev/null 2>&1
import sys
import any_guardrail, torch, transformers
sys.exit(0 if int(transformers.__version__.split(".")[0]) < 5 else 1)
PY
}

if [ -n "${QWEN3GUARD_INTEROP_PYTHON:-}" ]; then
    if ready "$QWEN3GUARD_INTEROP_PYTHON"; then
        echo "$QWEN3GUARD_INTEROP_PYTHON"
        exit 0
    fi
    echo "error: QWEN3GUARD_INTEROP_PYTHON=$QWEN3GUARD_INTEROP_PYTHON cannot import any_guardrail, torch and transformers<5" >&2
    exit 1
fi

VENV="${QWEN3GUARD_INTEROP_VENV:-$HOME/.cache/qwen3guard/interop-venv}"
PY="$VENV/bin/python"
if [ -x "$PY" ] && ready "$PY"; then
    echo "$PY"
    exit 0
fi

echo "creating the interop venv in $VENV (any-guardrail==$AG_VERSION, $TF_SPEC)" >&2
mkdir -p "$(dirname "$VENV")"
rm -rf "$VENV"
"${INTEROP_BASE_PYTHON:-python3}" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip >&2
"$PY" -m pip install -q "any-guardrail==$AG_VERSION" "$TF_SPEC" "huggingface-hub<1.0" \
    safetensors jinja2 numpy >&2
if [ "${QWEN3GUARD_INTEROP_TORCH:-share}" = "install" ]; then
    "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu >&2
else
    # Installed last, so pip never saw the shared packages while resolving.
    FROM="${TORCH_FROM_PYTHON:-$ROOT/.venv/bin/python}"
    TORCH_SITE="$("$FROM" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # a .pth directory is appended to sys.path after the venv's own site-packages
    echo "$TORCH_SITE" > "$SITE/zz_qwen3guard_shared_torch.pth"
fi
if ! ready "$PY"; then
    echo "error: the interop venv in $VENV cannot import any_guardrail, torch and transformers<5" >&2
    exit 1
fi
echo "$PY"
