"""Steady-state training steps per stage on this device: tokens/s, both MFUs, peak memory and
where the time goes.

    python benchmarks/bench_train.py --name h200_270m_98k --flavors 270m --seq-lens 98304 \
        --set lighthouse.topk=1536 --compile off on
    python benchmarks/bench_train.py --name h200_25m_32k --config configs/quality_32k_25m.yaml \
        --seq-lens 32768 --compile off on

One `python -m lhdist.train` process per (flavor, seq_len, compile, activation checkpointing,
SDPA priority), world size 1, with both stages: stage 1 (Lighthouse in the sparse layers) for
warm-up + measured + profiled steps, then stage 2 (dense everywhere) for as many. Per stage:
tokens/s and both MFUs over the measured steps only (warm-up, compilation and profiled steps
left out), the peak memory of the stage (CUDA allocator; peak RSS on CPU) beside `lhdist
check`'s estimate, the activation-checkpointing plan that ran, and the time split (attention,
matmuls, optimizer, data, other, idle) of its profiled steps (`train_time_split.py`). Writes
benchmarks/results/<date>_train_step_<name>.json after every run (a failed run is recorded
with its error and the others still run; the exit code is then 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, environment, write_results  # noqa: E402
from runs import RunFailed, estimated_peak_gib, read_metrics, run_logged  # noqa: E402
from train_time_split import steps_in_name, time_split  # noqa: E402

GIB = 2**30
AC_MODES = ("none", "full", "ffn", "auto")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--name", required=True, help="results file: <date>_train_step_<name>.json")
    ap.add_argument("--config", default=None, help="base YAML of every run (default: defaults)")
    ap.add_argument("--flavors", nargs="*", default=[], help="model.flavor of each run")
    ap.add_argument("--seq-lens", type=int, nargs="+", required=True, help="train.seq_len")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--warmup-steps", type=int, default=2, help="per stage, not measured")
    ap.add_argument("--steps", type=int, default=4, help="measured steps per stage")
    ap.add_argument("--profile-steps", type=int, default=1, help="profiled steps per stage")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    ap.add_argument("--activation-checkpointing", nargs="+", default=["auto"], choices=AC_MODES)
    ap.add_argument("--sdpa-priority", nargs="+", default=["cudnn"], choices=["cudnn", "default"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, all runs")
    ap.add_argument("--run-timeout-s", type=float, default=600.0, help="kill a run after this")
    ap.add_argument("--work-dir", default="runs/bench_train", help="run directories")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the results JSON goes")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    args = ap.parse_args(argv)
    if args.warmup_steps < 1 or args.steps < 1 or args.profile_steps < 0:
        ap.error("need --warmup-steps >= 1, --steps >= 1 and --profile-steps >= 0")
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            ap.error(f"override {item!r} must be section.key=value")
    return args


# --- one run --------------------------------------------------------------------------------------


def stage_windows(args) -> dict[int, tuple[int, int, int]]:
    """stage -> (first measured step, last measured step, last step) of the run's step layout:
    per stage warm-up, measured, then profiled steps."""
    per_stage = args.warmup_steps + args.steps + args.profile_steps
    windows, offset = {}, 0
    for stage in sorted(args.stages):
        first = offset + args.warmup_steps + 1
        windows[stage] = (first, first + args.steps - 1, offset + per_stage)
        offset += per_stage
    return windows


def run_overrides(args, flavor: str | None, seq_len: int, compile_: str, ac: str, sdpa: str):
    windows = stage_windows(args)
    stage1_steps = windows[1][2] if 1 in windows else 0
    profile = []
    for _, last_measured, last in windows.values():
        if last > last_measured:
            profile += [last_measured + 1, last]
    overrides = [f"model.flavor={flavor}"] if flavor else []
    return overrides + [
        f"train.seq_len={seq_len}",
        f"train.steps={max(last for _, _, last in windows.values())}",
        f"train.stage1_steps={stage1_steps}",
        f"train.compile={'true' if compile_ == 'on' else 'false'}",
        f"train.activation_checkpointing={ac}",
        f"train.sdpa_priority={sdpa}",
        f"train.profile_steps=[{', '.join(map(str, profile))}]",
        "train.log_every=1000000",  # read back at the first, profiled and last steps only
        "train.tensorboard=false",
        "eval.batches=0",
        "eval.final=false",
        "checkpoint.enabled=false",
        "data.verify_hashes=false",
        *args.set,
    ]


def train_command(args, overrides: list[str], run_dir: Path) -> list[str]:
    cmd = [args.python, "-m", "lhdist.train"]
    cmd += ["--config", args.config] if args.config else []
    return cmd + [f"--{kv}" for kv in overrides] + [f"--train.run_dir={run_dir}"]


def summarise_stage(steps: dict[int, dict], stage: int, window: tuple[int, int, int]) -> dict:
    first, last, _ = window
    timed = [steps[s] for s in range(first, last + 1) if s in steps]
    if not timed or any(r["stage"] != stage for r in timed):
        raise RunFailed(f"stage {stage}: measured steps {first}-{last} missing or of another stage")
    seconds = sum(r["step_time_s"] for r in timed)
    tokens_per_s = sum(r["tokens"] for r in timed) / seconds
    # MFU is tokens/s times a constant of the stage: rescale a step's to the mean tokens/s.
    row = timed[0]
    scale = tokens_per_s / row["tokens_per_s"]
    in_stage = [r for r in steps.values() if r["stage"] == stage]
    return {
        "tokens_per_s": tokens_per_s,
        "step_time_s_median": statistics.median(r["step_time_s"] for r in timed),
        "mfu_executed": row["mfu_executed"] * scale if row["mfu_executed"] is not None else None,
        "mfu_dense": row["mfu_dense"] * scale if row["mfu_dense"] is not None else None,
        "peak_gib": max(r["memory_gib"] for r in in_stage),
        "measured_steps": [first, last],
        "final_loss": in_stage[-1]["loss"],
    }


def one_run(args, flavor, seq_len, compile_, ac, sdpa) -> list[dict[str, Any]]:
    import torch

    label = f"{flavor or 'config'}-{seq_len}-compile_{compile_}-ac_{ac}-sdpa_{sdpa}"
    run_dir = Path(args.work_dir) / label
    shutil.rmtree(run_dir / "profile", ignore_errors=True)
    overrides = run_overrides(args, flavor, seq_len, compile_, ac, sdpa)
    run_logged(train_command(args, overrides, run_dir), run_dir, label, args.run_timeout_s,
               tag="train")  # fmt: skip
    steps, events = read_metrics(run_dir)
    start = next(e for e in events if e["event"] == "start")
    traces = sorted((run_dir / "profile").glob("trace_rank0_steps*.json"))
    cuda = torch.cuda.is_available()
    memory = torch.cuda.get_device_properties(0).total_memory if cuda else None
    estimates = estimated_peak_gib(args.config, overrides, "cuda" if cuda else "cpu", memory)
    rows = []
    for stage, window in stage_windows(args).items():
        trace = next((t for t in traces if window[1] < steps_in_name_first(t) <= window[2]), None)
        row = {
            "flavor": flavor or "config",
            "params": start["params"],
            "seq_len": seq_len,
            "stage": stage,
            "compile": compile_ == "on",
            "sdpa_priority": sdpa,
            "activation_checkpointing": ac,
            "activation_checkpointing_plan": start.get("activation_checkpointing"),
            **summarise_stage(steps, stage, window),
            "estimate_gib": estimates.get(stage),
            "time_split": time_split(trace, steps_in_name(trace)) if trace else None,
            "trace": str(trace) if trace else None,
        }
        print(f"[train] {label} stage {stage}: {json.dumps(row)}", flush=True)
        rows.append(row)
    return rows


def steps_in_name_first(trace: Path) -> int:
    return int(trace.name.split("steps", 1)[1].split("-", 1)[0])


# --- the benchmark --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload: dict[str, Any] = {
        "environment": environment(),
        "config": {
            "file": args.config,
            "set": args.set,
            "warmup_steps_excluded": args.warmup_steps,
            "measured_steps": args.steps,
            "profiled_steps": args.profile_steps,
        },
        "runs": [],
        "errors": [],
    }
    print(f"[train] environment: {json.dumps(payload['environment'])}", flush=True)

    def save() -> Path:
        return write_results(f"train_step_{args.name}", payload, Path(args.out_dir))

    grid = itertools.product(
        args.flavors or [None], args.seq_lens, args.compile, args.activation_checkpointing,
        args.sdpa_priority,
    )  # fmt: skip
    for flavor, seq_len, compile_, ac, sdpa in grid:
        try:
            payload["runs"] += one_run(args, flavor, seq_len, compile_, ac, sdpa)
        except RunFailed as error:
            payload["errors"].append(str(error))
            print(f"[train] FAILED: {error}", flush=True)
        save()
    path = save()
    print(f"[train] wrote {path}", flush=True)
    return 1 if payload["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
