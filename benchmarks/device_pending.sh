#!/usr/bin/env bash
# Every GPU measurement the open issues still need (as of 2026-12-03, third session), in
# priority order, as one detached job for scripts/gpu_job.sh (a 30-minute device session fits
# about part 1; the machine start takes ~4.5 min of it):
#   call 1:  bash scripts/gpu_job.sh start benchmarks/device_pending.sh; sleep 540; bash scripts/gpu_job.sh collect
#   call 2+: sleep 580; bash scripts/gpu_job.sh collect          (carry [".whl"] every time)
# Each part has a hard limit and its own log under /tmp/job; results JSON go to /tmp/job/results.
set -u
JOB=/tmp/job OUT=  # detached: scripts/gpu_job.sh collect packs /tmp/job
source benchmarks/device_part.sh  # part NAME LIMIT_S COMMAND...
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 1. Issue 14: the two untried levers beside a dense arm of the same session (pairs across
#    sessions carry ~0.1 nats of noise), 3 seeds each, one run at a time (~125 s per run).
part quality_levers 1250 python3 benchmarks/bench_quality.py --name 32k_25m_levers2 \
  --config configs/quality_32k_25m.yaml --arm dense lighthouse.enabled=false \
  --arm rewarm50 optim.resume_warmup_steps=50 --arm scatter_mean lighthouse.scatter=mean \
  --baseline dense --seeds 0 1 2 --work-dir $JOB/quality --out-dir "$RES"
# 2. Issue 14: strictly causal stage 1 over 3 seeds (seed 0 alone so far), with its own dense arm.
part quality_causal 800 python3 benchmarks/bench_quality.py --name 32k_25m_causal \
  --config configs/quality_32k_25m.yaml --arm dense lighthouse.enabled=false \
  --arm causal lighthouse.competition=causal --baseline dense --seeds 0 1 2 \
  --work-dir $JOB/quality_causal --out-dir "$RES"
# 3. Issue 18: the 25M model at 32K, eager and compiled; the 1M 12-layer step.
part train_speed_32k 150 python3 benchmarks/bench_train.py --name h200_25m_32k \
  --config configs/quality_32k_25m.yaml --seq-lens 32768 --compile off on --warmup-steps 2 \
  --steps 4 --profile-steps 1 --work-dir $JOB/bench_train --out-dir "$RES" --run-timeout-s 100
touch $JOB/done
