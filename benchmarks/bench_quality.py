"""Quality benchmark: dense from scratch vs Lighthouse + dense resume, several seeds, paired.

Every arm trains the same model on the same data order, steps and schedule; only the arm's
overrides differ. Seed s sets both the weight init and the data order (train.seed = data.seed =
s), so arm A's seed s and arm B's seed s saw the same batches from the same init: their
difference is a paired measurement, and the spread of the differences over seeds is the noise.

    python benchmarks/bench_quality.py --name 32k_25m --config configs/quality_32k_25m.yaml \
        --arm dense lighthouse.enabled=false --arm lighthouse --seeds 0 1 2
    lhdist bench quality ...   # the same

Each run is `python -m lhdist.train` in its own process (run_dir under --work-dir), `--jobs`
at a time; with several GPUs the runs are spread over them (one GPU each). Writes
benchmarks/results/<date>_quality_<name>.json (and a PNG of the curves when matplotlib is
installed). Wall-clock is the sum of step times (evals excluded); with --jobs > 1 on one GPU the
runs share it, so tokens/s is then a relative number only (`concurrent_runs` says so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, environment  # noqa: E402
from runs import read_metrics  # noqa: E402

# Two-sided 95% Student-t quantiles by degrees of freedom (n seeds - 1); beyond 10: 2.0.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}
TAIL_STEPS = 50  # the final train loss is the mean over this many last steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--name", required=True, help="results file: <date>_quality_<name>.json")
    ap.add_argument("--config", default=None, help="base YAML every arm starts from")
    ap.add_argument(
        "--arm",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY=VALUE"),
        help="an arm and its config overrides, e.g. --arm dense lighthouse.enabled=false "
        "(repeat; default: dense and lighthouse)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="at least 3")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm"
    )
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--work-dir", default="runs/bench_quality", help="run directories")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the results JSON goes")
    ap.add_argument("--baseline", default="dense", help="the arm the others are compared with")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    ap.add_argument(
        "--keep-finished",
        action="store_true",
        help="keep the runs under --work-dir that finished with the same command (a cut\n"
        "invocation, or runs copied back from another session); train only the rest",
    )
    ap.add_argument(
        "--summarise-only",
        action="store_true",
        help="train nothing: summarise the finished runs already under --work-dir",
    )
    args = ap.parse_args(argv)
    args.arm = args.arm or [["dense", "lighthouse.enabled=false"], ["lighthouse"]]
    names = [a[0] for a in args.arm]
    if len(set(names)) != len(names):
        ap.error(f"arm names repeat: {names}")
    if args.baseline not in names:
        ap.error(f"--baseline {args.baseline!r} is not one of the arms {names}")
    if len(args.seeds) < 3 or len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds {args.seeds}: need at least 3 distinct seeds (noise needs repeats)")
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs} must be >= 1")
    for item in [*args.set, *(kv for a in args.arm for kv in a[1:])]:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            ap.error(f"override {item!r} must be section.key=value")
    return args


# --- running --------------------------------------------------------------------------------------


def run_command(args, arm: list[str], seed: int, run_dir: Path) -> list[str]:
    cmd = [args.python, "-m", "lhdist.train"]
    if args.config:
        cmd += ["--config", args.config]
    cmd += [f"--{kv}" for kv in args.set]
    cmd += [f"--{kv}" for kv in arm[1:]]
    cmd += [
        f"--train.seed={seed}",
        f"--data.seed={seed}",
        f"--train.run_dir={run_dir}",
        "--checkpoint.resume=none",
        "--train.tensorboard=false",
    ]
    return cmd


def gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v for v in visible.split(",") if v]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def run_all(args) -> list[dict[str, Any]]:
    """Every (arm, seed) run, `--jobs` at a time; returns what each wrote (metrics, evals)."""
    work = Path(args.work_dir)
    runs = [(arm, seed) for seed in args.seeds for arm in args.arm]  # pairs finish together
    gpus = gpu_ids()
    # A run takes a GPU from this pool and returns it when it ends, so with --jobs <= GPUs no two
    # runs ever share one (assigning by run index would, once runs finish out of order).
    free_gpus: queue.Queue[str] = queue.Queue()
    for i in range(args.jobs if gpus else 0):
        free_gpus.put(gpus[i % len(gpus)])
    t0 = time.perf_counter()

    def one(i: int) -> dict[str, Any]:
        arm, seed = runs[i]
        run_dir = work / arm[0] / f"seed_{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = run_command(args, arm, seed, run_dir)
        if args.keep_finished and finished_with(run_dir, cmd):
            result = read_run(run_dir)
            result.update(arm=arm[0], seed=seed, kept=True)
            print(f"[quality] {arm[0]:<20} seed {seed}: kept the finished run", flush=True)
            return result
        for stale in ("metrics.jsonl", "eval_final.json"):
            (run_dir / stale).unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        gpu = free_gpus.get() if gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        start = time.perf_counter()
        try:
            with open(run_dir / "log.txt", "w") as log:
                log.write(shlex.join(cmd) + "\n")
                log.flush()
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            if gpu is not None:
                free_gpus.put(gpu)
        if code != 0:
            tail = (run_dir / "log.txt").read_text().splitlines()[-15:]
            raise RuntimeError(f"{arm[0]} seed {seed} exited {code}:\n" + "\n".join(tail))
        result = read_run(run_dir)
        result.update(arm=arm[0], seed=seed, process_s=time.perf_counter() - start)
        print(
            f"[quality] {arm[0]:<20} seed {seed}: final val (dense) "
            f"{result['final_val_loss_dense']:.4f}  train {result['final_train_loss']:.4f}  "
            f"{result['wall_s']:.1f} s of steps  ({time.perf_counter() - t0:.0f} s elapsed)",
            flush=True,
        )
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(one, range(len(runs))))


def finished_with(run_dir: Path, cmd: list[str]) -> bool:
    """Whether `run_dir` holds a run that reached its end ("done" event) with the arguments of
    `cmd`; the interpreter and the run directory may differ (another machine, a copied tree)."""
    log, metrics = run_dir / "log.txt", run_dir / "metrics.jsonl"
    if not log.is_file() or not metrics.is_file():
        return False

    def essence(argv: list[str]) -> list[str]:
        return [a for a in argv[1:] if not a.startswith("--train.run_dir=")]

    first = log.read_text().splitlines()[:1]
    if not first or essence(shlex.split(first[0])) != essence(cmd):
        return False
    return any(e["event"] == "done" for e in read_metrics(run_dir)[1])


def collect_runs(args) -> list[dict[str, Any]]:
    """The runs a previous invocation left under --work-dir (every arm x seed must be there)."""
    runs = []
    for arm in args.arm:
        for seed in args.seeds:
            run_dir = Path(args.work_dir) / arm[0] / f"seed_{seed}"
            runs.append(read_run(run_dir) | {"arm": arm[0], "seed": seed})
    return runs


def read_run(run_dir: Path) -> dict[str, Any]:
    """Per-step losses, evals and stage timings of one run from its metrics.jsonl."""
    by_step, events = read_metrics(run_dir)
    steps = [by_step[s] for s in sorted(by_step)]
    evals = [
        {k: v for k, v in e.items() if k not in ("event", "time")}
        for e in events
        if e["event"] == "eval"
    ]
    final = None
    if not steps or not evals:
        raise RuntimeError(f"{run_dir}: no steps or no eval records in metrics.jsonl")
    by_stage: dict[int, list[dict]] = {}
    for r in steps:
        by_stage.setdefault(r["stage"], []).append(r)

    def stage_speed(stage: int) -> float | None:
        rows = by_stage.get(stage, [])
        rows = rows[2:] if len(rows) > 4 else rows  # a stage's first steps warm up
        if not rows:
            return None
        return sum(r["tokens"] for r in rows) / sum(r["step_time_s"] for r in rows)

    final_file = run_dir / "eval_final.json"
    if final_file.is_file():
        final = json.loads(final_file.read_text())
    last = evals[-1]
    return {
        "steps": len(steps),
        "loss": [r["loss"] for r in steps],
        "step_time_s": [r["step_time_s"] for r in steps],
        "stage": [r["stage"] for r in steps],
        "evals": evals,
        "final_val_loss_dense": last["val_loss_dense"],
        "final_val_loss_lighthouse": last.get("val_loss_lighthouse"),
        "final_train_loss": statistics.fmean(r["loss"] for r in steps[-TAIL_STEPS:]),
        "wall_s": sum(r["step_time_s"] for r in steps),
        "wall_s_stage1": sum(r["step_time_s"] for r in by_stage.get(1, [])),
        "wall_s_stage2": sum(r["step_time_s"] for r in by_stage.get(2, [])),
        "tokens_per_s_stage1": stage_speed(1),
        "tokens_per_s_stage2": stage_speed(2),
        "peak_gib": max(r["memory_gib"] for r in steps),
        "passkey": final.get("passkey") if final else None,
        "position_loss": final.get("position_loss") if final else None,
    }


# --- statistics -----------------------------------------------------------------------------------


def mean_sem(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, sem


def paired(diffs: list[float]) -> dict[str, Any]:
    """Mean paired difference, its s.e. and 95% t-interval, and whether that holds 0."""
    mean, sem = mean_sem(diffs)
    half = T95.get(len(diffs) - 1, 2.0) * sem
    return {
        "per_seed": diffs,
        "mean": mean,
        "sem": sem,
        "ci95": [mean - half, mean + half],
        "within_noise": bool(mean - half <= 0.0 <= mean + half),
        "same_sign_all_seeds": bool(all(d > 0 for d in diffs) or all(d < 0 for d in diffs)),
    }


def leak(evals: list[dict]) -> dict[str, float] | None:
    """At the last stage-1 eval: Lighthouse val loss minus the same weights' dense val loss,
    and minus their causal re-selection (how much the look-ahead lowers the Lighthouse loss)."""
    stage1 = [e for e in evals if e["stage"] == 1 and e.get("val_loss_lighthouse") is not None]
    if not stage1:
        return None
    e = stage1[-1]
    out = {
        "step": e["step"],
        "lighthouse_minus_dense": e["val_loss_lighthouse"] - e["val_loss_dense"],
    }
    if e.get("val_loss_lighthouse_causal") is not None:
        out["lighthouse_minus_causal"] = e["val_loss_lighthouse"] - e["val_loss_lighthouse_causal"]
    return out


def passkey_mean(rows: list[dict] | None) -> dict[str, float] | None:
    if not rows:
        return None
    by_mode: dict[str, list[float]] = {}
    for r in rows:
        by_mode.setdefault(r["attention"], []).append(r["accuracy"])
    return {mode: statistics.fmean(v) for mode, v in by_mode.items()}


def val_at_wall(run: dict[str, Any], seconds: float) -> float:
    """The run's held-out loss (dense attention) after `seconds` of steps, linear between its
    evals; past its last eval, that eval's value."""
    elapsed, clock = 0.0, {}
    for step, dt in enumerate(run["step_time_s"], start=1):
        elapsed += dt
        clock[step] = elapsed
    points = [(clock[e["step"]], e["val_loss_dense"]) for e in run["evals"] if e["step"] in clock]
    if seconds >= points[-1][0]:
        return points[-1][1]
    for (w0, v0), (w1, v1) in zip([(0.0, points[0][1]), *points], points):
        if w0 <= seconds <= w1:
            return v0 + (v1 - v0) * (seconds - w0) / (w1 - w0) if w1 > w0 else v1
    raise AssertionError("unreachable: seconds lies within the evals")


def equal_wall_clock(run: dict[str, Any], base: dict[str, Any]) -> float:
    """Run minus baseline held-out loss when the faster of the two finished: what a fixed
    time budget buys (the slower one's loss is interpolated at that moment)."""
    budget = min(run["wall_s"], base["wall_s"])
    return val_at_wall(run, budget) - val_at_wall(base, budget)


def summarise(args, runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    base = {r["seed"]: r for r in runs if r["arm"] == args.baseline}
    for arm in args.arm:
        name = arm[0]
        mine = sorted((r for r in runs if r["arm"] == name), key=lambda r: r["seed"])
        val_mean, val_sem = mean_sem([r["final_val_loss_dense"] for r in mine])
        train_mean, train_sem = mean_sem([r["final_train_loss"] for r in mine])
        stage1 = sum(1 for s in mine[0]["stage"] if s == 1)
        summary = {
            "overrides": arm[1:],
            "seeds": [r["seed"] for r in mine],
            "final_val_loss_dense": val_mean,
            "final_val_loss_dense_sem": val_sem,
            "final_train_loss": train_mean,
            "final_train_loss_sem": train_sem,
            "wall_s": statistics.fmean(r["wall_s"] for r in mine),
            "wall_s_stage1": statistics.fmean(r["wall_s_stage1"] for r in mine),
            "wall_s_stage2": statistics.fmean(r["wall_s_stage2"] for r in mine),
            "tokens_per_s_stage1": _mean_or_none([r["tokens_per_s_stage1"] for r in mine]),
            "tokens_per_s_stage2": _mean_or_none([r["tokens_per_s_stage2"] for r in mine]),
            "steps": mine[0]["steps"],
            "stage1_steps": stage1,
            "per_seed": [
                {
                    k: r[k]
                    for k in (
                        "seed",
                        "final_val_loss_dense",
                        "final_val_loss_lighthouse",
                        "final_train_loss",
                        "wall_s",
                        "wall_s_stage1",
                        "wall_s_stage2",
                        "tokens_per_s_stage1",
                        "tokens_per_s_stage2",
                        "peak_gib",
                        "evals",
                        "passkey",
                        "position_loss",
                    )
                }  # fmt: skip
                | {"leak": leak(r["evals"]), "passkey_mean": passkey_mean(r["passkey"])}
                for r in mine
            ],
        }
        if name != args.baseline:
            val_diffs = [
                r["final_val_loss_dense"] - base[r["seed"]]["final_val_loss_dense"] for r in mine
            ]
            summary["vs_baseline_val_loss_dense"] = paired(val_diffs)
            summary["vs_baseline_val_loss_dense_equal_wall_clock"] = paired(
                [equal_wall_clock(r, base[r["seed"]]) for r in mine]
            )
            summary["wall_clock_ratio_vs_baseline"] = statistics.fmean(
                base[r["seed"]]["wall_s"] / r["wall_s"] for r in mine
            )
            summary["vs_baseline_val_loss_dense_by_step"] = gap_by_eval_step(mine, base)
            summary["vs_baseline_train_loss_after_switch"] = train_gap_after_switch(
                mine, base, stage1
            )
        leaks = [r["leak"] for r in summary["per_seed"]]
        if all(x and "lighthouse_minus_causal" in x for x in leaks):
            # Same weights, two selections: the look-ahead's share of the stage-1 val loss.
            summary["leak_lighthouse_minus_causal"] = paired(
                [x["lighthouse_minus_causal"] for x in leaks]
            )
        arms[name] = summary
    return arms


def gap_by_eval_step(mine: list[dict], base: dict[int, dict]) -> dict[str, Any]:
    """Paired held-out (dense) difference from the baseline at every eval step all runs share."""

    def by_step(r):
        return {e["step"]: e["val_loss_dense"] for e in r["evals"]}

    pairs = [(by_step(r), by_step(base[r["seed"]])) for r in mine]
    common = set.intersection(*(set(a) & set(b) for a, b in pairs))
    return {str(step): paired([a[step] - b[step] for a, b in pairs]) for step in sorted(common)}


def train_gap_after_switch(mine: list[dict], base: dict[int, dict], switch: int) -> dict:
    """Paired train-loss difference from the baseline (same batches) in windows after the stage
    switch: steps switch+1..+50, +51..+100, +101..+200, +201..end (those that exist)."""
    steps = min(len(r["loss"]) for r in [*mine, *(base[r["seed"]] for r in mine)])
    if not 0 < switch < steps:
        return {}
    edges = [switch + d for d in (0, 50, 100, 200) if switch + d < steps] + [steps]
    out = {}
    for lo, hi in zip(edges, edges[1:]):  # steps lo+1..hi (1-based) are indices lo..hi-1
        diffs = []
        for r in mine:
            theirs = base[r["seed"]]["loss"]
            diffs.append(statistics.fmean(a - b for a, b in zip(r["loss"][lo:hi], theirs[lo:hi])))
        out[f"{lo + 1}-{hi}"] = paired(diffs)
    return out


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def verdicts(arms: dict[str, Any], baseline: str) -> list[str]:
    """One sentence per arm: its paired difference from the baseline, in or beyond noise."""
    lines = []
    for name, a in arms.items():
        d = a.get("vs_baseline_val_loss_dense")
        if d is None:
            continue
        lo, hi = d["ci95"]
        where = (
            "within noise (the 95% interval holds 0)"
            if d["within_noise"]
            else ("worse than" if d["mean"] > 0 else "better than") + f" {baseline} beyond noise"
        )
        if d["within_noise"] and d["same_sign_all_seeds"]:
            where += ", though every seed is " + ("above" if d["mean"] > 0 else "below")
        w = a["vs_baseline_val_loss_dense_equal_wall_clock"]
        ratio = a["wall_clock_ratio_vs_baseline"]  # baseline's wall-clock over this arm's
        speed = f"{ratio:.2f}x shorter" if ratio >= 1 else f"{1 / ratio:.2f}x longer"
        lines.append(
            f"{name}: final held-out loss (dense attention) {a['final_val_loss_dense']:.4f} vs "
            f"{baseline} {arms[baseline]['final_val_loss_dense']:.4f}; paired difference "
            f"{d['mean']:+.4f} +- {d['sem']:.4f} s.e. over {len(d['per_seed'])} seeds, 95% "
            f"[{lo:+.4f}, {hi:+.4f}]: {where}; wall-clock {speed} than {baseline}; "
            f"at equal wall-clock {w['mean']:+.4f} +- {w['sem']:.4f} "
            f"({'within noise' if w['within_noise'] else 'beyond noise'})"
        )
    return lines


# --- the picture ----------------------------------------------------------------------------------


def plot(payload: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, arm in payload["arms"].items():
        mine = [r for r in runs if r["arm"] == name]
        n = min(len(r["loss"]) for r in mine)
        curves = [_smooth(r["loss"][:n], 20) for r in mine]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        lo = [min(c[i] for c in curves) for i in range(n)]
        hi = [max(c[i] for c in curves) for i in range(n)]
        steps = list(range(1, n + 1))
        (line,) = ax_train.plot(steps, mean, label=name, lw=1.2)
        ax_train.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
        eval_steps = [e["step"] for e in mine[0]["evals"]]
        vals = [[e["val_loss_dense"] for e in r["evals"]] for r in mine]
        k = min(len(v) for v in vals)
        vm = [statistics.fmean(v[i] for v in vals) for i in range(k)]
        ax_val.errorbar(eval_steps[:k], vm, yerr=[_spread(v[i] for v in vals) for i in range(k)],
                        label=f"{name} (dense attn)", color=line.get_color(), marker="o", ms=3,
                        capsize=2)  # fmt: skip
        if arm["stage1_steps"] and arm["stage1_steps"] < arm["steps"]:
            for ax in (ax_train, ax_val):
                ax.axvline(arm["stage1_steps"], color=line.get_color(), ls=":", lw=1)
    cfg = payload["config"]
    ax_train.set(title="train loss (20-step mean; band: min-max over seeds; dotted: switch)",
                 xlabel="step", ylabel="nats/token")  # fmt: skip
    ax_val.set(title="held-out loss, dense attention (mean, bars: min-max over seeds)",
               xlabel="step", ylabel="nats/token")  # fmt: skip
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    device = payload["environment"].get("gpu", "cpu")
    fig.suptitle(f"{payload['name']}: seq_len {cfg.get('seq_len')}, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values: list[float], width: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - width] if i >= width else 0.0)
        out.append(acc / min(i + 1, width))
    return out


def _spread(values) -> float:
    values = list(values)
    return (max(values) - min(values)) / 2


# --- main -----------------------------------------------------------------------------------------


def resolved_config(args) -> dict[str, Any]:
    """The baseline arm's resolved config (what every arm shares, plus its own overrides)."""
    from lhdist.config import load_config

    arm = next(a for a in args.arm if a[0] == args.baseline)
    cfg = load_config(args.config, [f"--{kv}" for kv in [*args.set, *arm[1:]]])
    return {
        "seq_len": cfg.train.seq_len,
        "steps": cfg.train.steps,
        "stage1_steps": cfg.train.stage1_steps,
        "base_config": args.config,
        "set": args.set,
        "resolved_baseline": cfg.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = resolved_config(args)
        for arm in args.arm:  # every arm's config must load before any run starts
            from lhdist.config import load_config

            load_config(args.config, [f"--{kv}" for kv in [*args.set, *arm[1:]]])
    except (ValueError, FileNotFoundError) as e:
        print(f"bench_quality: config error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    runs = collect_runs(args) if args.summarise_only else run_all(args)
    payload = {
        "name": args.name,
        "environment": environment(),
        "config": config,
        "concurrent_runs": args.jobs,
        "baseline": args.baseline,
        "arms": summarise(args, runs),
        "total_s": time.perf_counter() - started,
    }
    payload["verdicts"] = verdicts(payload["arms"], args.baseline)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    path = out_dir / f"{stamp}_quality_{args.name}.json"
    png = plot(payload, runs, path.with_suffix(".png"))
    payload["plot"] = png.name if png else None
    path.write_text(json.dumps(payload, indent=1) + "\n")
    for line in payload["verdicts"]:
        print(f"[quality] {line}")
    print(f"[quality] wrote {path}" + (f" and {png.name}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
