"""DeepSpeed ZeRO 0-3 against the torch engine on this device: dtype, losses, speed, memory.

    python benchmarks/bench_deepspeed.py --name h200            # 25M model at 32K, 50 steps
    python benchmarks/bench_deepspeed.py --name h200_270m_98k --flavor 270m --seq-len 98304 \
        --set lighthouse.topk=1536 --steps 12 --warmup-steps 4 --resume-stages
    python benchmarks/bench_deepspeed.py --name cpu --config configs/tiny_cpu.yaml --steps 6

Every run is one `python -m lhdist.train` process (world size 1: the loop makes a one-rank
process group with an in-memory store) with the same seed and data order; only the engine and
ZeRO stage differ. Per stage: the compute dtype the forward measured (`compute_dtype` event),
the largest per-step loss difference from the torch run, tokens/s after `--warmup-steps`
(torch's beside it), the measured peak memory (CUDA allocator peak; peak RSS on CPU) and
`lhdist check`'s estimate for that engine and stage. Resume check (`--resume-stages`): a
deterministic run of `--resume-steps` steps that checkpoints halfway, then a second run that
resumes from that checkpoint; `resume_exact` says whether every resumed loss equals the
uninterrupted one. Writes benchmarks/results/<date>_deepspeed_<name>.json after every run, so
a failure keeps what finished; a failed or timed-out run exits 1 with its log's tail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, environment, write_results  # noqa: E402
from runs import RunFailed, estimated_peak_gib, read_metrics, run_logged  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "configs/quality_32k_25m.yaml"
DEFAULT_CONFIG = ROOT / CONFIG_NAME


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--name", required=True, help="results file: <date>_deepspeed_<name>.json")
    ap.add_argument("--config", default=None, help=f"base YAML of all runs (default {CONFIG_NAME})")
    ap.add_argument(
        "--flavor", default=None, help="model.flavor on lhdist's defaults instead of a base YAML"
    )
    ap.add_argument("--steps", type=int, default=50, help="steps of each run (all Lighthouse)")
    ap.add_argument("--seq-len", type=int, default=32768, help="train.seq_len")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, all runs")
    ap.add_argument("--stages", type=int, nargs="*", default=[0, 1, 2, 3], help="ZeRO stages")
    ap.add_argument("--resume-stages", type=int, nargs="*", default=[1, 3], help="ZeRO stages")
    ap.add_argument("--resume-steps", type=int, default=10, help="steps of a resume check")
    ap.add_argument("--warmup-steps", type=int, default=5, help="steps left out of tokens/s")
    ap.add_argument("--run-timeout-s", type=float, default=600.0, help="kill a run after this")
    ap.add_argument("--work-dir", default="runs/bench_deepspeed", help="run directories")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the results JSON goes")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    args = ap.parse_args(argv)
    if args.flavor and args.config:
        ap.error("--flavor and --config exclude each other (a flavor runs on lhdist's defaults)")
    if args.flavor:
        args.set = [f"model.flavor={args.flavor}", *args.set]
    elif not args.config:
        args.config = str(DEFAULT_CONFIG)
    for stage in [*args.stages, *args.resume_stages]:
        if not 0 <= stage <= 3:
            ap.error(f"ZeRO stage {stage} must be 0, 1, 2 or 3")
    if args.steps <= args.warmup_steps:
        ap.error(f"--steps {args.steps} must exceed --warmup-steps {args.warmup_steps}")
    if args.resume_stages and (args.resume_steps < 2 or args.resume_steps % 2):
        ap.error(f"--resume-steps {args.resume_steps} must be even and >= 2 (resumes halfway)")
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            ap.error(f"override {item!r} must be section.key=value")
    return args


# --- runs -----------------------------------------------------------------------------------------


def base_overrides(args, steps: int) -> list[str]:
    """section.key=value of every run: the bench's size, no evals, Lighthouse for every step."""
    return [
        f"train.seq_len={args.seq_len}",
        f"train.steps={steps}",
        f"train.stage1_steps={steps}",
        "train.log_every=10",
        "train.tensorboard=false",
        "eval.batches=0",
        "eval.final=false",
        "checkpoint.enabled=false",
        *args.set,
    ]


def engine_overrides(stage: int | None) -> list[str]:
    """None: the torch engine; else DeepSpeed at that ZeRO stage."""
    if stage is None:
        return ["train.engine=torch"]
    return ["train.engine=deepspeed", f"train.zero_stage={stage}"]


def train_command(args, overrides: list[str], run_dir: Path) -> list[str]:
    cmd = [args.python, "-m", "lhdist.train"]
    cmd += ["--config", args.config] if args.config else []
    return cmd + [f"--{kv}" for kv in overrides] + [f"--train.run_dir={run_dir}"]


def summarise_run(run_dir: Path, warmup_steps: int) -> dict[str, Any]:
    steps, events = read_metrics(run_dir)
    if not steps:
        raise RunFailed(f"{run_dir}: no step records in metrics.jsonl")
    timed = [r for s, r in sorted(steps.items()) if s > warmup_steps] or list(steps.values())
    dtypes = [e["dtype"] for e in events if e["event"] == "compute_dtype"]
    return {
        "losses": {s: r["loss"] for s, r in sorted(steps.items())},
        "dtype": dtypes[0] if dtypes else None,
        "tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed),
        "peak_gib": max(r["memory_gib"] for r in steps.values()),
    }


def max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    if sorted(a) != sorted(b):
        raise RunFailed(f"runs logged different steps: {sorted(a)} vs {sorted(b)}")
    return max(abs(a[s] - b[s]) for s in a)


def estimate_gib(args, overrides: list[str], device_type: str) -> float:
    """`lhdist check`'s stage-1 peak estimate (every step of a run here is Lighthouse) on one
    rank, with the activation-checkpointing plan the run itself picks on this device."""
    import torch

    memory = torch.cuda.get_device_properties(0).total_memory if device_type == "cuda" else None
    return estimated_peak_gib(args.config, overrides, device_type, memory)[1]


# --- the benchmark --------------------------------------------------------------------------------


def stage_runs(args, payload: dict, save) -> None:
    """The torch run, then one DeepSpeed run per ZeRO stage, compared with it."""
    import torch

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    work, base = Path(args.work_dir), base_overrides(args, args.steps)
    torch_dir = work / "torch"
    run_logged(train_command(args, base + engine_overrides(None), torch_dir), torch_dir,
               "torch", args.run_timeout_s)  # fmt: skip
    reference = summarise_run(torch_dir, args.warmup_steps)
    payload["torch"] = {
        "dtype": reference["dtype"],
        "tokens_per_s": reference["tokens_per_s"],
        "peak_gib": reference["peak_gib"],
        "estimate_gib": estimate_gib(args, base + engine_overrides(None), device_type),
    }
    save()
    for stage in args.stages:
        overrides = base + engine_overrides(stage)
        run_dir = work / f"zero{stage}"
        run_logged(train_command(args, overrides, run_dir), run_dir, f"ZeRO-{stage}",
                   args.run_timeout_s)  # fmt: skip
        run = summarise_run(run_dir, args.warmup_steps)
        payload["stages"][str(stage)] = {
            "dtype": run["dtype"],
            "max_loss_diff_vs_torch": max_diff(run["losses"], reference["losses"]),
            "tokens_per_s": run["tokens_per_s"],
            "torch_tokens_per_s": reference["tokens_per_s"],
            "peak_gib": run["peak_gib"],
            "estimate_gib": estimate_gib(args, overrides, device_type),
        }
        print(f"[deepspeed] ZeRO-{stage}: {json.dumps(payload['stages'][str(stage)])}", flush=True)
        save()


def resume_runs(args, payload: dict, save) -> None:
    """Per stage: N deterministic steps checkpointing at N/2, then a run resuming at N/2."""
    n, half = args.resume_steps, args.resume_steps // 2
    for stage in args.resume_stages:
        work = Path(args.work_dir) / f"resume_zero{stage}"
        overrides = base_overrides(args, n) + engine_overrides(stage) + [
            "train.deterministic=true", "train.log_every=1",
        ]  # fmt: skip
        full_dir, resumed_dir = work / "uninterrupted", work / "resumed"
        saving = overrides + [
            "checkpoint.enabled=true", f"checkpoint.every={half}", "checkpoint.keep_last=2",
            f"checkpoint.dir={full_dir / 'checkpoints'}", "checkpoint.resume=none",
        ]  # fmt: skip
        run_logged(train_command(args, saving, full_dir), full_dir, f"ZeRO-{stage} {n} steps",
                   args.run_timeout_s)  # fmt: skip
        checkpoint = full_dir / "checkpoints" / f"step_{half:08d}"
        resuming = overrides + [f"checkpoint.resume={checkpoint}"]
        run_logged(train_command(args, resuming, resumed_dir), resumed_dir,
                   f"ZeRO-{stage} resumed at {half}", args.run_timeout_s)  # fmt: skip
        full, _ = read_metrics(full_dir)
        resumed, _ = read_metrics(resumed_dir)
        later = {s: full[s]["loss"] for s in full if s > half}
        diff = max_diff({s: r["loss"] for s, r in resumed.items()}, later)
        payload["resume"][str(stage)] = {
            "steps": n,
            "resumed_at": half,
            "resume_exact": diff == 0.0,
            "max_loss_diff": diff,
        }
        print(f"[deepspeed] resume ZeRO-{stage}: {json.dumps(payload['resume'][str(stage)])}",
              flush=True)  # fmt: skip
        save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload: dict[str, Any] = {
        "environment": environment(),
        "config": {
            "file": args.config,
            "flavor": args.flavor,
            "steps": args.steps,
            "seq_len": args.seq_len,
            "set": args.set,
            "warmup_steps_excluded": args.warmup_steps,
        },
        "torch": None,
        "stages": {},
        "resume": {},
    }
    print(f"[deepspeed] environment: {json.dumps(payload['environment'])}", flush=True)
    out_dir = Path(args.out_dir)

    def save() -> Path:
        return write_results(f"deepspeed_{args.name}", payload, out_dir)

    try:
        stage_runs(args, payload, save)
        resume_runs(args, payload, save)
    except RunFailed as error:
        payload["error"] = str(error)
        path = save()
        print(f"[deepspeed] FAILED: {error}\n[deepspeed] partial results: {path}", flush=True)
        return 1
    path = save()
    print(f"[deepspeed] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
