#!/usr/bin/env bash
# The GPU measurements still pending, sized for one device call (no detached job: a machine goes
# back 30 s after a call and takes a detached job with it). Parts run in priority order, each
# under a hard limit, and $OUT/job.tgz is packed after every part, so a cut keeps what finished.
# As of 2026-12-03 (third session, ~250 s of device time left): issue 15's DeepSpeed ZeRO 0-3
# against the torch engine at 98K on the 270M flavor, then issue 18's compiled 98K step.
#   run (carry [".whl"]): bash benchmarks/device_rest.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LHDIST_CACHE_DIR=/tmp/lhcache PYTHONUNBUFFERED=1
source benchmarks/device_part.sh  # part NAME LIMIT_S COMMAND...
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
part deepspeed_98k 260 python3 benchmarks/bench_deepspeed.py --name h200_270m_98k --flavor 270m \
  --seq-len 98304 --set lighthouse.topk=1536 train.activation_checkpointing=auto --steps 8 \
  --warmup-steps 3 --resume-stages --out-dir "$RES" --work-dir $JOB/ds98_runs --run-timeout-s 90
part train_speed_98k_compiled 170 python3 benchmarks/bench_train.py --name h200_270m_98k_compiled \
  --flavors 270m --seq-lens 98304 --set lighthouse.topk=1536 train.engine=torch --compile on \
  --warmup-steps 2 --steps 4 --profile-steps 1 --work-dir /tmp/bench_train --out-dir "$RES" \
  --run-timeout-s 160
tail -n 3 "$JOB"/*.log
