"""Issue 14's levers at 32K (configs/quality_32k_25m.yaml), H200 session of 2026-12-04.

Arms run here by benchmarks/bench_quality.py (three runs at a time on one GPU, one seed's arms
together), seeds 0-2, each paired with this session's own dense arm:
  dense         1000 dense steps from scratch
  rewarm50      700 Lighthouse + 300 dense, optim.resume_warmup_steps=50 (re-warmup at the switch)
  scatter_mean  700 Lighthouse + 300 dense, lighthouse.scatter=mean (mean, not sum, of a
                position's 1..L scatter contributions)
The plain 700 + 300 arm ran in an earlier session (../2026-12-03_quality_32k_25m/): a lever is
compared with it only through each session's own paired gap to dense (a difference of
differences), never through raw losses, which move by up to ~0.5 between sessions. Up to step
700 rewarm50 has the plain arm's config, seed and data: its stage-1 numbers are the plain arm's,
re-measured. Also here: two reruns of seed 0 with strict train.deterministic (100 steps, switch
after 60), run beside the quality runs on the same GPU.
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

EARLIER = HERE.parent / "2026-12-03_quality_32k_25m"
SEEDS = [0, 1, 2]
SWITCH = 700


def load(folder, name):
    steps, events = read_metrics_file(folder / f"metrics_{name}.jsonl")
    return steps, {e["step"]: e for e in events if e["event"] == "eval"}


def val(run, step, key="val_loss_dense"):
    return run[1][step][key]


def gap(a, b, step):
    return paired([val(a[s], step) - val(b[s], step) for s in SEEDS])


dense = {s: load(HERE, f"dense_{s}") for s in SEEDS}
arms = {n: {s: load(HERE, f"{n}_{s}") for s in SEEDS} for n in ("rewarm50", "scatter_mean")}
earlier_dense = {s: load(EARLIER, f"dense_{s}") for s in SEEDS}
earlier_lh = {s: load(EARLIER, f"lighthouse_{s}") for s in SEEDS}
earlier_gap = [val(earlier_lh[s], 1000) - val(earlier_dense[s], 1000) for s in SEEDS]

out = {
    "final_val_dense": {"dense": [val(dense[s], 1000) for s in SEEDS]},
    "cross_session_noise_dense_arm": {
        str(t): [val(dense[s], t) - val(earlier_dense[s], t) for s in SEEDS] for t in (700, 1000)
    },
    "plain_700_300_earlier_session": {"minus_dense_final": paired(earlier_gap)},
}
for name, runs in arms.items():
    a = {"final_val_dense": [val(runs[s], 1000) for s in SEEDS]}
    a["minus_dense_final"] = gap(runs, dense, 1000)
    a["val_gap_vs_dense_by_step"] = {str(t): gap(runs, dense, t) for t in range(100, 1001, 100)}
    a["gap_minus_plain_700_300_gap_cross_session"] = paired(
        [val(runs[s], 1000) - val(dense[s], 1000) - earlier_gap[i] for i, s in enumerate(SEEDS)]
    )
    a["train_loss_gap_vs_dense_after_switch"] = {
        f"{lo}-{hi}": paired([
            st.fmean(runs[s][0][t]["loss"] - dense[s][0][t]["loss"] for t in range(lo, hi + 1))
            for s in SEEDS
        ])
        for lo, hi in ((701, 750), (751, 800), (801, 900), (901, 1000))
    }  # fmt: skip
    a["step700"] = {
        "val_lighthouse_minus_dense_arm": paired([
            val(runs[s], SWITCH, "val_loss_lighthouse") - val(dense[s], SWITCH) for s in SEEDS
        ]),
        "val_causal_reselection_minus_dense_arm": paired([
            val(runs[s], SWITCH, "val_loss_lighthouse_causal") - val(dense[s], SWITCH)
            for s in SEEDS
        ]),
        "leak_lighthouse_minus_causal_same_weights": paired([
            val(runs[s], SWITCH, "val_loss_lighthouse")
            - val(runs[s], SWITCH, "val_loss_lighthouse_causal")
            for s in SEEDS
        ]),
        "val_dense_before_resume": [val(runs[s], SWITCH) for s in SEEDS],
    }  # fmt: skip
    out[name] = a


def losses(name):
    return [r["loss"] for _, r in sorted(load(HERE, name)[0].items())]


det_a, det_b = losses("deterministic_strict_a"), losses("deterministic_strict_b")
out["deterministic_strict_seed0"] = {
    "steps": len(det_a),
    "steps_identical": sum(x == y for x, y in zip(det_a, det_b, strict=True)),
    "max_loss_diff": max(abs(x - y) for x, y in zip(det_a, det_b, strict=True)),
}
print(json.dumps(out, indent=1))
