#!/usr/bin/env bash
# Wheels for a GPU machine without network (the device image has torch, triton, numpy, tqdm,
# filelock, xxhash, pyyaml, matplotlib, tensorboard, transformers): download cp312 manylinux
# wheels of what lhdist needs beyond that into .whl/, to be carried there and installed with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
# For work longer than one 10-minute call, scripts/gpu_job.sh runs it detached.
# Usage: bash scripts/gpu_wheels.sh [--deepspeed]   (run where pip reaches PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d .whl "$@"
}
# mosaicml-streaming imports catalogue at import time, and these compressors for MDS shards.
download mosaicml-streaming==0.13.0 catalogue zstd python-snappy cramjam Brotli
if [[ "${1:-}" == "--deepspeed" ]]; then
  # DeepSpeed's sdist builds a py3-none-any wheel with no compiled ops.
  (cd .whl && DS_BUILD_OPS=0 python3 -m pip wheel -q deepspeed==0.19.8 --no-deps --no-build-isolation)
  download hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
fi
ls -la .whl
