#!/usr/bin/env bash
# Installs lhdist and what it needs from this checkout, without ever pulling a CUDA torch onto a
# CPU machine: torch is installed first (pinned) only if none is importable.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --dev    # + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${LHDIST_TORCH_SPEC:-torch==2.13.0}
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[install] no torch found: installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".${extras}"
echo "[install] lhdist installed (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
