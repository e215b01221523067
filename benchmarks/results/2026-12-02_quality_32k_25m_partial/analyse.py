"""Paired analysis of the 2026-12-02 H200 quality runs that the device budget cut short.

The six runs (configs/quality_32k_25m.yaml: dense arm = lighthouse.enabled=false; lighthouse arm
= 700 Lighthouse + 300 dense steps planned; seeds 0-2, seed = init and data order) ran at once
on one H200 and were stopped by the 560 s call limit: dense at steps 727-735, Lighthouse at
862-864. This reads their metrics.jsonl files and reports only what they hold, at equal steps.
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


def load(name):
    steps, events = read_metrics_file(HERE / f"metrics_{name}.jsonl")
    evals = {e["step"]: e for e in events if e["event"] == "eval"}
    return steps, evals


seeds = [0, 1, 2]
dense = {s: load(f"dense_{s}") for s in seeds}
lh = {s: load(f"lighthouse_{s}") for s in seeds}
out = {
    "steps_reached": {
        "dense": [max(dense[s][0]) for s in seeds],
        "lighthouse": [max(lh[s][0]) for s in seeds],
    }
}
# Step 700: the last eval both arms reached; the Lighthouse arm is still in stage 1 there.
e_d = {s: dense[s][1][700] for s in seeds}
e_l = {s: lh[s][1][700] for s in seeds}
out["step700"] = {
    "dense_arm_val_dense": [e_d[s]["val_loss_dense"] for s in seeds],
    "lighthouse_arm_val_lighthouse": [e_l[s]["val_loss_lighthouse"] for s in seeds],
    "lighthouse_arm_val_causal_reselection": [e_l[s]["val_loss_lighthouse_causal"] for s in seeds],
    "lighthouse_arm_val_dense_before_resume": [e_l[s]["val_loss_dense"] for s in seeds],
    "lighthouse_minus_dense_arm": paired(
        [e_l[s]["val_loss_lighthouse"] - e_d[s]["val_loss_dense"] for s in seeds]
    ),
    "causal_reselection_minus_dense_arm": paired(
        [e_l[s]["val_loss_lighthouse_causal"] - e_d[s]["val_loss_dense"] for s in seeds]
    ),
    "leak_lighthouse_minus_causal_same_weights": paired(
        [e_l[s]["val_loss_lighthouse"] - e_l[s]["val_loss_lighthouse_causal"] for s in seeds]
    ),
}
# Steps 701..last common step: both arms dense, same batches (paired per step and seed).
last = min(max(dense[s][0]) for s in seeds)
window = range(701, last + 1)
out["train_loss_after_switch"] = {
    "steps": [window.start, window.stop - 1],
    "lighthouse_minus_dense_per_seed": [
        st.fmean(lh[s][0][t]["loss"] - dense[s][0][t]["loss"] for t in window) for s in seeds
    ],
    "last10_lighthouse_minus_dense_per_seed": [
        st.fmean(lh[s][0][t]["loss"] - dense[s][0][t]["loss"] for t in range(last - 9, last + 1))
        for s in seeds
    ],
}
# The Lighthouse arm after 100 dense steps (no dense-arm eval at step 800 exists).
out["lighthouse_arm_step800"] = {
    k: [lh[s][1][800][k] for s in seeds]
    for k in ("val_loss_dense", "val_loss_lighthouse", "val_loss_lighthouse_causal")
}
out["dense_arm_val_dense_600_to_700_drop"] = [
    dense[s][1][700]["val_loss_dense"] - dense[s][1][600]["val_loss_dense"] for s in seeds
]


def speed(runs, stage):
    rows = [r for s in seeds for t, r in sorted(runs[s][0].items()) if r["stage"] == stage][3:]
    return st.fmean(r["tokens_per_s"] for r in rows)


out["tokens_per_s_six_runs_sharing_one_gpu"] = {
    "dense_arm": speed(dense, 2),
    "lighthouse_stage1": speed(lh, 1),
    "lighthouse_stage2": speed(lh, 2),
}
print(json.dumps(out, indent=1))
