#!/usr/bin/env bash
# Every GPU measurement the open issues still need, in priority order, as one detached job for
# scripts/gpu_job.sh (a 30-minute device session fits about parts 1-5):
#   call 1:  bash scripts/gpu_job.sh start benchmarks/device_pending.sh; sleep 540; bash scripts/gpu_job.sh collect
#   call 2+: sleep 580; bash scripts/gpu_job.sh collect          (carry [".whl"] every time)
# Each part has a hard limit and its own log under /tmp/job; results JSON go to /tmp/job/results.
set -u
JOB=/tmp/job OUT=  # detached: scripts/gpu_job.sh collect packs /tmp/job
source benchmarks/device_part.sh  # part NAME LIMIT_S COMMAND...
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 1. Issue 15: DeepSpeed ZeRO 0-3 in bf16 vs the torch engine at 32K, memory vs estimate, resume.
part deepspeed 330 python3 benchmarks/bench_deepspeed.py --name h200 --out-dir "$RES" \
  --work-dir $JOB/ds_runs --run-timeout-s 120
# 2. Issue 14: a longer dense tail (500 + 500), 3 seeds, one run at a time; compared offline with
#    the dense and 700 + 300 arms of benchmarks/results/2026-12-03_quality_32k_25m/.
part quality_tail 450 python3 benchmarks/bench_quality.py --name 32k_25m_tail500 \
  --config configs/quality_32k_25m.yaml --arm tail500 train.stage1_steps=500 --baseline tail500 \
  --seeds 0 1 2 --work-dir $JOB/quality --out-dir "$RES"
# 3. Issue 16: export a short 98K run, load it in transformers in bf16, compare logits.
part hf_export 200 python3 benchmarks/check_hf_export.py --out-dir "$RES"
# 4. Issue 15 at 98K, 270M: ZeRO 0-3 vs torch, a few steps each (no resume check: done at 32K).
part deepspeed_98k 300 python3 benchmarks/bench_deepspeed.py --name h200_270m_98k --flavor 270m \
  --seq-len 98304 --set lighthouse.topk=1536 train.activation_checkpointing=auto --steps 8 \
  --warmup-steps 3 --resume-stages --out-dir "$RES" --work-dir $JOB/ds98_runs --run-timeout-s 100
# 5. Issue 18: training-step speed at 98K (270M) and 32K (25M), eager/compiled, cuDNN/flash.
part train_speed 520 env OUT="$RES" bash benchmarks/device_train_speed.sh
# 6. GPU-marked tests (compile on/off losses, SDPA priority, the op on CUDA).
part gpu_tests 240 python3 -m pytest -q -x -m gpu tests/train/test_compile.py \
  tests/train/test_sdpa_priority.py tests/ops/test_gpu.py
# 7. Issue 14: re-warmup after the switch (700 + 300, 50 warmup steps at the switch), 3 seeds.
part quality_rewarm 450 python3 benchmarks/bench_quality.py --name 32k_25m_rewarm50 \
  --config configs/quality_32k_25m.yaml --arm rewarm50 optim.resume_warmup_steps=50 \
  --baseline rewarm50 --seeds 0 1 2 --work-dir $JOB/quality --out-dir "$RES"
touch $JOB/done
