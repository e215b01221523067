#!/usr/bin/env bash
# What the 2026-12-03 session's detached job (benchmarks/device_pending.sh) did not reach before
# its machine went back, sized for one device call (~9 minutes): the HF export check, the last
# seed of the quality tail500 arm, and the 98K 270M training-step speed, cuDNN-first vs torch's
# SDPA order. Packs $OUT/job.tgz after every part, so a cut keeps what finished.
#   run (carry [".whl"]): bash benchmarks/device_rest.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD LHDIST_CACHE_DIR=/tmp/lhcache PYTHONUNBUFFERED=1
JOB=/tmp/job RES=/tmp/job/results
mkdir -p "$RES"
part() {  # part NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $(date +%T) $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$JOB/$name.log" 2>&1
  echo "== $(date +%T) $name exit $?"
  (cd /tmp && tar czf "$OUT/job.tgz" --exclude='*.pt' --exclude='*.safetensors' job)
}
part hf_export 150 python3 benchmarks/check_hf_export.py --out-dir "$RES"
part quality_tail500_seed2 170 python3 -m lhdist.train --config configs/quality_32k_25m.yaml \
  --train.stage1_steps=500 --train.seed=2 --data.seed=2 --train.run_dir=$JOB/tail500_seed_2 \
  --checkpoint.resume=none --train.tensorboard=false
part train_speed_98k 200 python3 benchmarks/bench_train.py --name h200_270m_98k_eager \
  --flavors 270m --seq-lens 98304 --set lighthouse.topk=1536 train.engine=torch \
  --sdpa-priority cudnn default --warmup-steps 2 --steps 4 --profile-steps 1 \
  --work-dir /tmp/bench_train --out-dir "$RES" --run-timeout-s 90
tail -3 $JOB/*.log
