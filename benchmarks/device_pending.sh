#!/usr/bin/env bash
# Every GPU measurement the open issues still need (as of 2026-12-04), in priority order, as one
# detached job for scripts/gpu_job.sh (one 30-minute device session; the machine start took 30 s
# to 4.5 min). The start call must end well inside the 600 s call limit, or its collect is lost:
#   call 1:  bash scripts/gpu_job.sh start benchmarks/device_pending.sh && sleep 520; bash scripts/gpu_job.sh collect
#   call 2+: sleep 560; bash scripts/gpu_job.sh collect          (carry [".whl"] every time)
# Each part has a hard limit and its own log under /tmp/job; results JSON go to /tmp/job/results.
set -u
JOB=/tmp/job OUT=  # detached: scripts/gpu_job.sh collect packs /tmp/job
source benchmarks/device_part.sh  # part NAME LIMIT_S COMMAND...
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 1. Issue 15: ZeRO-1 at 32K beside torch, clipping on (DeepSpeed reads the norm back every
#    step) and off (optim.grad_clip=0: no norm, no read). ~50 s each.
part zero1_clip 150 python3 benchmarks/bench_deepspeed.py --name h200_zero1_clip --stages 1 \
  --resume-stages --work-dir $JOB/ds_clip --out-dir "$RES" --run-timeout-s 70
part zero1_noclip 150 python3 benchmarks/bench_deepspeed.py --name h200_zero1_noclip --stages 1 \
  --resume-stages --set optim.grad_clip=0 --work-dir $JOB/ds_noclip --out-dir "$RES" \
  --run-timeout-s 70
# 2. Issue 18 (cheap, so first): the 25M model at 32K, eager and compiled.
part train_speed_32k 150 python3 benchmarks/bench_train.py --name h200_25m_32k \
  --config configs/quality_32k_25m.yaml --seq-lens 32768 --compile off on --warmup-steps 2 \
  --steps 4 --profile-steps 1 --work-dir $JOB/bench_train --out-dir "$RES" --run-timeout-s 100
# 3. Issue 18: the 270M flavor's dense step at head dim 128 (8 heads, 4 kv heads) instead of 64:
#    the projected 49.8% MFU (benchmarks/README.md), measured.
part train_speed_98k_hd128 200 python3 benchmarks/bench_train.py --name h200_270m_hd128_98k \
  --flavors 270m --seq-lens 98304 --set lighthouse.topk=1536 train.engine=torch \
  model.num_heads=8 model.num_kv_heads=4 --compile on --warmup-steps 2 --steps 4 \
  --profile-steps 1 --work-dir $JOB/bench_train_hd128 --out-dir "$RES" --run-timeout-s 190
# 4. Issue 14: the 98K quality runs, dense vs Lighthouse + resume, 3 seeds (~2100 s in all, an
#    estimate: two sessions), one run at a time (sharing the GPU bought ~3% at 32K);
#    seed-major, so a cut leaves whole pairs. To finish in a later session what a cut one left:
#    here, `echo /.runs/ >> .git/info/exclude; mkdir -p .runs && tar xzf
#    /work/.device/N/job.tgz -C .runs`, then carry [".whl", ".runs"]: the finished runs are
#    copied in below and kept (--keep-finished), and only the rest train.
[ -d .runs/job/quality_98k ] && cp -r .runs/job/quality_98k $JOB/
part quality_98k 1500 python3 benchmarks/bench_quality.py --name 98k_25m \
  --config configs/quality_98k_25m.yaml --arm dense lighthouse.enabled=false --arm lighthouse \
  --baseline dense --seeds 0 1 2 --work-dir $JOB/quality_98k --keep-finished --out-dir "$RES"
# 5. Issue 14 (a session of its own, ~1150 s): at 32K with a dense arm of its own, strictly
#    causal stage 1 over 3 seeds (seed 0 alone so far) and a dense step every 4th stage-1 step.
part quality_causal 1200 python3 benchmarks/bench_quality.py --name 32k_25m_causal_dense4 \
  --config configs/quality_32k_25m.yaml --arm dense lighthouse.enabled=false \
  --arm causal lighthouse.competition=causal --arm dense4 lighthouse.dense_every=4 \
  --baseline dense --seeds 0 1 2 --work-dir $JOB/quality_causal --out-dir "$RES"
touch $JOB/done
