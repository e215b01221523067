#!/usr/bin/env bash
# Every GPU measurement the open issues still need (as of 2026-12-04), in priority order, as one
# detached job for scripts/gpu_job.sh (one 30-minute device session; the machine start takes
# ~4.5 min of it):
#   call 1:  bash scripts/gpu_job.sh start benchmarks/device_pending.sh && sleep 540; bash scripts/gpu_job.sh collect
#   call 2+: sleep 580; bash scripts/gpu_job.sh collect          (carry [".whl"] every time)
# Each part has a hard limit and its own log under /tmp/job; results JSON go to /tmp/job/results.
set -u
JOB=/tmp/job OUT=  # detached: scripts/gpu_job.sh collect packs /tmp/job
source benchmarks/device_part.sh  # part NAME LIMIT_S COMMAND...
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
CFG=configs/quality_32k_25m.yaml
# 1. Issue 14: the untried levers beside a dense arm of this session, 3 seeds, one seed's three
#    arms at a time on the one GPU (tokens/s then relative; both stages' speeds alone are in
#    earlier results). Beside them, two reruns of seed 0 with strict train.deterministic, 100
#    steps across the stage switch: do they reproduce each other (sharing the GPU must not matter)?
det() {
  timeout 300 python3 -m lhdist.train --config $CFG --train.deterministic=true --train.steps=100 \
    --train.stage1_steps=60 --train.seed=0 --data.seed=0 --eval.every=0 --eval.final=false \
    --train.tensorboard=false --checkpoint.resume=none --train.run_dir=$JOB/det_$1 \
    > $JOB/det_$1.log 2>&1
}
det a & det b &
part quality_levers 1150 python3 benchmarks/bench_quality.py --name 32k_25m_levers3 \
  --config $CFG --arm dense lighthouse.enabled=false --arm rewarm50 optim.resume_warmup_steps=50 \
  --arm scatter_mean lighthouse.scatter=mean --baseline dense --seeds 0 1 2 --jobs 3 \
  --work-dir $JOB/quality --out-dir "$RES"
wait
# 2. Issue 15: ZeRO-1 at 32K beside torch, clipping on (DeepSpeed reads the norm back every
#    step) and off (optim.grad_clip=0: no norm, no read).
part zero1_clip 150 python3 benchmarks/bench_deepspeed.py --name h200_zero1_clip --stages 1 \
  --resume-stages --work-dir $JOB/ds_clip --out-dir "$RES" --run-timeout-s 70
part zero1_noclip 150 python3 benchmarks/bench_deepspeed.py --name h200_zero1_noclip --stages 1 \
  --resume-stages --set optim.grad_clip=0 --work-dir $JOB/ds_noclip --out-dir "$RES" \
  --run-timeout-s 70
# 3. Issue 14: strictly causal stage 1 over 3 seeds (seed 0 alone so far), with its own dense arm.
part quality_causal 800 python3 benchmarks/bench_quality.py --name 32k_25m_causal \
  --config $CFG --arm dense lighthouse.enabled=false --arm causal lighthouse.competition=causal \
  --baseline dense --seeds 0 1 2 --jobs 2 --work-dir $JOB/quality_causal --out-dir "$RES"
touch $JOB/done
