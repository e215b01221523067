#!/usr/bin/env bash
# One node, one process per GPU (or NPROC CPU processes on gloo), via torchrun:
#   CONFIG=configs/llama_530m_lh-l3p4k1536_cp2dp4.yaml bash launch/torchrun.sh [--section.key=value ...]
#   NPROC=2 bash launch/torchrun.sh --train.steps=20          # 2 CPU ranks on a laptop
#   SCRIPT=benchmarks/bench_1m_job.py bash launch/torchrun.sh --seq-len 1048576
# Environment (all optional):
#   CONFIG             YAML for `python -m lhdist.train --config` (default configs/tiny_cpu.yaml)
#   NPROC              processes on this node (default: the GPUs torch sees, else 1)
#   SCRIPT             run this Python file instead of `-m lhdist.train --config $CONFIG`
#   PYTHON             interpreter (default python3)
#   NCCL_NVLS_ENABLE   NVLink SHARP multicast; 0 (off) unless set
#   LHDIST_DRY_RUN=1   print the command instead of running it
# Arguments are passed to the entry point (`--section.key=value` overrides for training).
set -euo pipefail

PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/tiny_cpu.yaml}
if [[ -z ${NPROC:-} ]]; then
  NPROC=$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
# torchrun sets OMP_NUM_THREADS=1 per process on its own; lhdist sets torch's threads itself.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [[ -n ${SCRIPT:-} ]]; then
  entry=("$SCRIPT")
else
  entry=(-m lhdist.train --config "$CONFIG")
fi
cmd=("$PYTHON" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node "$NPROC"
     "${entry[@]}" "$@")

if [[ ${LHDIST_DRY_RUN:-0} == 1 ]]; then
  echo "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE OMP_NUM_THREADS=$OMP_NUM_THREADS"
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"
