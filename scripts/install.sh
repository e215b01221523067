#!/usr/bin/env bash
# Installs lhdist and what it needs from this checkout, without ever pulling a CUDA torch onto a
# CPU machine or replacing a cluster's preinstalled torch:
#   bash scripts/install.sh          # runtime: torch (if none), lhdist, streaming, deepspeed
#   bash scripts/install.sh --dev    # + test and lint tools
# Steps already done are skipped, so a second run takes a few seconds.
#   torch              installed (pinned) only if none is importable; every later pip call is
#                      constrained to the torch found, and the script checks it is unchanged.
#   lhdist             editable, with the extras `data` (what streaming's MDS writer and reader
#                      import), `tensorboard` and `hf` (safetensors, tokenizers: lhdist export and
#                      checkpoint.init_from); skipped while its build/install-stamp-* matches.
#   mosaicml-streaming --no-deps: its requirements pull torchvision (hence a CUDA torch) and
#                      transformers, which lhdist never imports (lhdist.train.data loads only
#                      the writer and reader submodules).
#   deepspeed          an sdist whose setup imports torch: built against the installed torch
#                      (--no-build-isolation) with no ops compiled ahead (DS_BUILD_OPS=0: it
#                      JIT-builds them on GPU machines); its other requirements are small.
# Environment: PYTHON (interpreter), LHDIST_TORCH_SPEC, LHDIST_STREAMING_VERSION,
# LHDIST_DEEPSPEED_VERSION, LHDIST_SKIP_DEEPSPEED=1 (leave DeepSpeed out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${LHDIST_TORCH_SPEC:-torch==2.13.0}
STREAMING_VERSION=${LHDIST_STREAMING_VERSION:-0.13.0}
DEEPSPEED_VERSION=${LHDIST_DEEPSPEED_VERSION:-0.19.8}
extras="data,tensorboard,hf"
for arg in "$@"; do
  case "$arg" in
    --dev) extras="$extras,dev" ;;
    *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
  esac
done
start=$SECONDS

# (pip's "Location ... is ignored" lines are noise from index folders a machine may configure.)
pip_install() {
  "$PY" -m pip install -q --root-user-action=ignore "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
# Succeeds when distribution $1 is installed at exactly version $2.
has_version() {
  "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null
}
torch_version() { "$PY" -c "import importlib.metadata as m; print(m.version('torch'))"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[install] no torch found: installing $TORCH_SPEC"
  pip_install "$TORCH_SPEC"
fi
torch_before=$(torch_version)
# Every later pip call is held to this torch: a conflict fails loudly instead of replacing it.
torch_pin=$(mktemp)
trap 'rm -f "$torch_pin"' EXIT
echo "torch==$torch_before" > "$torch_pin"

stamp_file=build/install-stamp-${extras//,/-}
stamp="$("$PY" -c 'import sys; print(sys.executable, sys.prefix)') $extras $PWD
$(sha256sum pyproject.toml | cut -d' ' -f1)"
# Succeeds when lhdist is installed editable from this checkout.
# (Run from / so that the checkout's own lhdist.egg-info is not what importlib finds.)
lhdist_here() {
  local repo=$PWD
  (cd / && "$PY" -c "import importlib.metadata as m, json, pathlib, sys
url = json.loads(m.distribution('lhdist').read_text('direct_url.json') or '{}').get('url')
sys.exit(url != pathlib.Path(sys.argv[1]).as_uri())" "$repo") 2>/dev/null
}
if [[ -f $stamp_file && "$(cat $stamp_file)" == "$stamp" ]] && lhdist_here; then
  echo "[install] lhdist[$extras] already installed"
else
  echo "[install] lhdist[$extras] (editable)"
  pip_install -c "$torch_pin" -e ".[$extras]"
  mkdir -p build && printf '%s\n' "$stamp" > "$stamp_file"
fi

if ! has_version mosaicml-streaming "$STREAMING_VERSION"; then
  echo "[install] mosaicml-streaming==$STREAMING_VERSION (--no-deps)"
  pip_install --no-deps "mosaicml-streaming==$STREAMING_VERSION"
fi

if [[ "${LHDIST_SKIP_DEEPSPEED:-0}" != 1 ]] && ! has_version deepspeed "$DEEPSPEED_VERSION"; then
  echo "[install] deepspeed==$DEEPSPEED_VERSION (built against torch $torch_before, no ops)"
  DS_BUILD_OPS=0 pip_install -c "$torch_pin" --no-build-isolation "deepspeed==$DEEPSPEED_VERSION"
  "$PY" -c "import deepspeed" >/dev/null 2>&1 || {
    echo "[install] error: deepspeed installed but does not import:" >&2
    "$PY" -c "import deepspeed" >&2
    exit 1
  }
fi

torch_after=$(torch_version)
if [[ "$torch_after" != "$torch_before" ]]; then
  echo "[install] error: a step replaced torch $torch_before with $torch_after" >&2
  exit 1
fi
"$PY" -c "from lhdist.train.data import streaming_modules; streaming_modules()" || {
  echo "[install] error: mosaicml-streaming's MDS writer/reader do not import (above)" >&2
  exit 1
}
echo "[install] lhdist installed (torch $torch_after) in $((SECONDS - start)) s"
