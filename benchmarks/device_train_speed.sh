#!/usr/bin/env bash
# Issue 18's measurements in one GPU call (~8 min on one H200): bench_train.py, both stages, at
# 98K (270M flavor, Lighthouse L3/p4/k1536 tile) and 32K (the 25M model of
# configs/quality_32k_25m.yaml), eager and compiled, cuDNN-first SDPA against torch's order,
# activation checkpointing `auto`. Each part has its own time limit and results file (written
# after every run), so a slow compile costs only its own part. Results go to $OUT (the device
# tool's folder) or benchmarks/results/.
#
#   bash benchmarks/device_train_speed.sh            # from the repository root
set -u
OUT_DIR="${OUT:-benchmarks/results}"
WORK="${TMPDIR:-/tmp}/bench_train"
STEPS=(--warmup-steps 2 --steps 4 --profile-steps 1 --work-dir "$WORK" --out-dir "$OUT_DIR")
M270_98K=(--flavors 270m --seq-lens 98304 --set lighthouse.topk=1536 train.engine=torch)
M25_32K=(--config configs/quality_32k_25m.yaml --seq-lens 32768)
status=0

part() {  # part LIMIT_S RUN_LIMIT_S ARGS...: one bench_train invocation under a hard limit
  local limit=$1 run_limit=$2
  shift 2
  echo "== bench_train $* (limit ${limit}s)"
  timeout "$limit" python benchmarks/bench_train.py "$@" "${STEPS[@]}" \
    --run-timeout-s "$run_limit" || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 1. The dense kernel: cuDNN first (the default) vs torch's order (flash), eager.
part 170 150 --name h200_270m_98k_eager "${M270_98K[@]}" --sdpa-priority cudnn default
# 2. 98K compiled (inductor; two graphs: Lighthouse block and dense block).
part 170 160 --name h200_270m_98k_compiled "${M270_98K[@]}" --compile on
# 3. The 25M model at 32K, eager and compiled.
part 150 100 --name h200_25m_32k "${M25_32K[@]}" --compile off on
ls -l "$OUT_DIR"/*train_step_h200_* 2>/dev/null
exit $status
