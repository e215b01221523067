"""Paired analysis of the 2026-12-03 H200 quality runs (configs/quality_32k_25m.yaml).

Arms: dense (lighthouse.enabled=false, 1000 dense steps) and lighthouse (700 Lighthouse + 300
dense), seeds 0-2 (seed = init and data order), run one at a time on one H200 by
benchmarks/bench_quality.py (its summary: ../2026-12-03_quality_32k_25m.json). Also one seed of
lighthouse.competition=causal (indicative only: one seed is no paired estimate) and four
120-step reruns with train.deterministic on and off. Reports only what the metrics files hold.
    python analyse.py > summary.json
"""

import json
import statistics as st
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench_quality's statistics and runs.py's reader, so these numbers are computed as its are.
sys.path.insert(0, str(HERE.parents[1]))
from bench_quality import paired  # noqa: E402
from runs import read_metrics_file  # noqa: E402

SEEDS = [0, 1, 2]


def load(name):
    steps, events = read_metrics_file(HERE / f"metrics_{name}.jsonl")
    evals = {e["step"]: e for e in events if e["event"] == "eval"}
    return steps, evals


def wall_at(steps, step):
    return sum(r["step_time_s"] for t, r in steps.items() if t <= step)


def val_at_wall(steps, evals, seconds):
    """Dense-attention val loss the run had after `seconds` of steps (linear between evals)."""
    points = sorted((wall_at(steps, t), e["val_loss_dense"]) for t, e in evals.items())
    for (w0, v0), (w1, v1) in zip(points, points[1:]):
        if w0 <= seconds <= w1:
            return v0 + (v1 - v0) * (seconds - w0) / (w1 - w0)
    raise ValueError(f"{seconds} s is outside the run")


dense = {s: load(f"dense_{s}") for s in SEEDS}
lh = {s: load(f"lighthouse_{s}") for s in SEEDS}
out = {}
out["final_step1000_val_dense"] = {
    "dense": [dense[s][1][1000]["val_loss_dense"] for s in SEEDS],
    "lighthouse_resumed": [lh[s][1][1000]["val_loss_dense"] for s in SEEDS],
    "lighthouse_minus_dense": paired(
        [lh[s][1][1000]["val_loss_dense"] - dense[s][1][1000]["val_loss_dense"] for s in SEEDS]
    ),
}
e_d = {s: dense[s][1][700] for s in SEEDS}
e_l = {s: lh[s][1][700] for s in SEEDS}
out["step700"] = {
    "dense_arm_val_dense": [e_d[s]["val_loss_dense"] for s in SEEDS],
    "lighthouse_arm_val_lighthouse": [e_l[s]["val_loss_lighthouse"] for s in SEEDS],
    "lighthouse_arm_val_causal_reselection": [e_l[s]["val_loss_lighthouse_causal"] for s in SEEDS],
    "lighthouse_arm_val_dense_before_resume": [e_l[s]["val_loss_dense"] for s in SEEDS],
    "lighthouse_minus_dense_arm": paired(
        [e_l[s]["val_loss_lighthouse"] - e_d[s]["val_loss_dense"] for s in SEEDS]
    ),
    "causal_reselection_minus_dense_arm": paired(
        [e_l[s]["val_loss_lighthouse_causal"] - e_d[s]["val_loss_dense"] for s in SEEDS]
    ),
    "leak_lighthouse_minus_causal_same_weights": paired(
        [e_l[s]["val_loss_lighthouse"] - e_l[s]["val_loss_lighthouse_causal"] for s in SEEDS]
    ),
}
# After the switch both arms train dense on the same batches: does the gap close?
out["train_loss_gap_after_switch"] = {
    f"{a}-{b}": paired(
        [
            st.fmean(lh[s][0][t]["loss"] - dense[s][0][t]["loss"] for t in range(a, b + 1))
            for s in SEEDS
        ]
    )
    for a, b in ((701, 750), (751, 800), (801, 900), (901, 1000))
}
out["val_gap_after_switch"] = {
    str(t): paired(
        [lh[s][1][t]["val_loss_dense"] - dense[s][1][t]["val_loss_dense"] for s in SEEDS]
    )
    for t in (800, 900, 1000)
}
# Equal wall-clock: the dense arm's val loss after as many seconds of steps as the Lighthouse
# run took in all (the question a user with a time budget asks).
out["equal_wall_clock"] = {
    "lighthouse_wall_s": [wall_at(lh[s][0], 1000) for s in SEEDS],
    "dense_wall_s": [wall_at(dense[s][0], 1000) for s in SEEDS],
    "dense_val_at_lighthouse_wall": [
        val_at_wall(*dense[s], wall_at(lh[s][0], 1000)) for s in SEEDS
    ],
}
out["equal_wall_clock"]["lighthouse_minus_dense"] = paired(
    [
        lh[s][1][1000]["val_loss_dense"]
        - out["equal_wall_clock"]["dense_val_at_lighthouse_wall"][i]
        for i, s in enumerate(SEEDS)
    ]
)


def speed(runs, stage):
    rows = [r for s in SEEDS for t, r in sorted(runs[s][0].items()) if r["stage"] == stage]
    rows = [r for r in rows if r["step"] > 5]
    return sum(r["tokens"] for r in rows) / sum(r["step_time_s"] for r in rows)


out["tokens_per_s_one_run_at_a_time"] = {
    "dense_arm": speed(dense, 2),
    "lighthouse_stage1": speed(lh, 1),
    "lighthouse_stage2": speed(lh, 2),
}
out["tokens_per_s_one_run_at_a_time"]["stage1_speedup"] = (
    out["tokens_per_s_one_run_at_a_time"]["lighthouse_stage1"]
    / out["tokens_per_s_one_run_at_a_time"]["dense_arm"]
)
c_steps, c_evals = load("lighthouse_causal_0")
out["causal_competition_seed0_only"] = {
    "val_dense_step1000": c_evals[1000]["val_loss_dense"],
    "lighthouse_topk_seed0_val_dense_step1000": lh[0][1][1000]["val_loss_dense"],
    "dense_seed0_val_dense_step1000": dense[0][1][1000]["val_loss_dense"],
    "step700_val_lighthouse_causal": c_evals[700]["val_loss_lighthouse"],
    "step700_val_dense_before_resume": c_evals[700]["val_loss_dense"],
    "wall_s": wall_at(c_steps, 1000),
}


def mean_step_s(steps, stage, after):
    return st.fmean(r["step_time_s"] for t, r in steps.items() if t > after and r["stage"] == stage)


det = {}
for mode in ("true", "false"):
    a, _ = load(f"deterministic_{mode}_a")
    b, _ = load(f"deterministic_{mode}_b")
    diffs = [abs(a[t]["loss"] - b[t]["loss"]) for t in sorted(a)]
    det[f"deterministic_{mode}"] = {
        "steps": len(diffs),
        "bitwise_equal_steps": sum(d == 0.0 for d in diffs),
        "first_differing_step": next((t for t, d in zip(sorted(a), diffs) if d), None),
        "max_abs_loss_diff": max(diffs),
        "mean_step_s_stage1": mean_step_s(a, 1, after=5),
        "mean_step_s_stage2": mean_step_s(a, 2, after=65),
    }
out["reruns_120_steps"] = det
print(json.dumps(out, indent=1))
