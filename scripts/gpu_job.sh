#!/usr/bin/env bash
# Long GPU work across several device calls (each call is capped at 10 minutes, and a machine
# goes back 30 s after a call ends): `start` installs the carried wheels (scripts/gpu_wheels.sh),
# snapshots the tree to /tmp/snap (later calls re-copy the tree; the job must not see edits) and
# runs SCRIPT there in its own process session, so it outlives the call; `collect` packs
# /tmp/job into $OUT/job.tgz (the device returns at most 8 files, 2 folders deep).
#   call 1:  bash scripts/gpu_job.sh start benchmarks/my_job.sh && sleep 540; bash scripts/gpu_job.sh collect
#   call 2+: sleep 580; bash scripts/gpu_job.sh collect        (carry [".whl"] in every call)
# SCRIPT writes under /tmp/job and touches /tmp/job/done at the end.
set -uo pipefail
case "${1:-}" in
  start)
    compgen -G ".whl/*.whl" > /dev/null || {
      echo "no wheels in .whl/: run scripts/gpu_wheels.sh --deepspeed here and carry .whl" >&2
      exit 2
    }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    rm -rf /tmp/snap /tmp/job && mkdir -p /tmp/job && cp -r "$PWD" /tmp/snap && rm -rf /tmp/snap/.whl
    cd /tmp/snap || exit 1
    export PYTHONPATH=/tmp/site:/tmp/snap LHDIST_CACHE_DIR=/tmp/lhcache PYTHONUNBUFFERED=1
    python3 -c "import torch, deepspeed, streaming, lhdist.train.loop" || exit 3  # fail now, not later
    setsid nohup bash "$2" > /tmp/job/job.log 2>&1 < /dev/null &
    sleep 20 && tail -5 /tmp/job/job.log ;;
  collect)
    (cd /tmp && tar czf "$OUT/job.tgz" --exclude='*.pt' --exclude='*.safetensors' job)
    tail -5 /tmp/job/job.log; ls /tmp/job
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
  *) echo "usage: gpu_job.sh start SCRIPT | collect" >&2; exit 2 ;;
esac
