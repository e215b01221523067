#!/usr/bin/env bash
# Every GPU measurement the open issues still need, in priority order, as one detached job for
# scripts/gpu_job.sh (a 30-minute device session fits parts 1-4 and the start of 5):
#   call 1:  bash scripts/gpu_job.sh start benchmarks/device_pending.sh; sleep 540; bash scripts/gpu_job.sh collect
#   call 2+: sleep 580; bash scripts/gpu_job.sh collect          (carry [".whl"] every time)
# Each part has a hard limit and its own log under /tmp/job; results JSON go to /tmp/job/results.
set -u
JOB=/tmp/job
RES=$JOB/results
mkdir -p "$RES"
part() {  # part NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $(date +%T) $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$JOB/$name.log" 2>&1
  echo "== $(date +%T) $name exit $?"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 1. Smoke: the merged step (interval read-back, prefetch, cuDNN-first SDPA) on CUDA, both stages,
#    and the GPU-marked tests.
part smoke_train 120 python3 -m lhdist.train --config configs/quality_32k_25m.yaml \
  --train.steps=30 --train.stage1_steps=15 --train.log_every=5 --eval.every=15 --eval.batches=2 \
  --eval.final=false --train.run_dir=$JOB/smoke --checkpoint.resume=none --train.tensorboard=false
part gpu_tests 240 python3 -m pytest -q -x -m gpu tests/train/test_compile.py \
  tests/train/test_sdpa_priority.py tests/ops/test_gpu.py
# 2. Issue 15: DeepSpeed ZeRO 0-3 in bf16 vs the torch engine, memory vs estimate, resume.
part deepspeed 330 python3 benchmarks/bench_deepspeed.py --name h200 --out-dir "$RES" \
  --work-dir $JOB/ds_runs --run-timeout-s 120
# 3. Issue 16: export a short 98K run, load it in transformers in bf16, compare logits.
part hf_export 200 python3 benchmarks/check_hf_export.py --out-dir "$RES"
# 4. Issue 18: training-step speed at 98K (270M) and 32K (25M), eager/compiled, cuDNN/flash.
part train_speed 520 env OUT="$RES" bash benchmarks/device_train_speed.sh
# 5. Issue 14: a longer dense tail (500 + 500) against dense, 3 seeds, one run at a time.
part quality_tail 1500 python3 benchmarks/bench_quality.py --name 32k_25m_tail \
  --config configs/quality_32k_25m.yaml --arm dense lighthouse.enabled=false \
  --arm tail500 train.stage1_steps=500 --seeds 0 1 2 --work-dir $JOB/quality --out-dir "$RES"
touch $JOB/done
