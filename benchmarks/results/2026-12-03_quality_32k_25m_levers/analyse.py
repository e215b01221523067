"""Issue 14's levers at 32K (configs/quality_32k_25m.yaml), measured in a later H200 session.

Arms run here by benchmarks/bench_quality.py, one run at a time, seeds 0-2:
  tail500   500 Lighthouse + 500 dense (a longer dense tail)
  rewarm50  700 Lighthouse + 300 dense with optim.resume_warmup_steps=50 (re-warmup at the switch)
compared with the dense (1000 dense) and lighthouse (700 + 300) arms of the earlier session
(../2026-12-03_quality_32k_25m/). The pairs cross sessions: GPU training is not bit-reproducible
and the dense kernel changed between them (cuDNN-first SDPA), so each seed's difference carries
cross-session noise. Its size is measured, not assumed: at step 500 tail500 and lighthouse are the
same config, seed and data (both still Lighthouse): their val-loss difference there is that noise.
Wall-clock is compared only within this session's runs. An arm whose metrics are absent is left out.
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


def load(folder, name):
    path = folder / f"metrics_{name}.jsonl"
    if not path.is_file():
        return None
    steps, events = read_metrics_file(path)
    evals = {e["step"]: e for e in events if e["event"] == "eval"}
    return steps, evals


def val(run, step):
    return run[1][step]["val_loss_dense"]


def speed(runs, stage, skip=5):
    rows = [r for s in SEEDS for r in runs[s][0].values() if r["stage"] == stage]
    rows = [r for r in rows if r["step"] > skip]
    return sum(r["tokens"] for r in rows) / sum(r["step_time_s"] for r in rows)


dense = {s: load(EARLIER, f"dense_{s}") for s in SEEDS}
lh = {s: load(EARLIER, f"lighthouse_{s}") for s in SEEDS}
arms = {name: {s: load(HERE, f"{name}_{s}") for s in SEEDS} for name in ("tail500", "rewarm50")}
SWITCH = {"tail500": 500, "rewarm50": 700}
out = {
    "earlier_final_val_dense": {
        "dense": [val(dense[s], 1000) for s in SEEDS],
        "lighthouse_700_300": [val(lh[s], 1000) for s in SEEDS],
    }
}
for name, runs in arms.items():
    if any(r is None for r in runs.values()):
        out[name] = "not run (metrics absent)"
        continue
    switch = SWITCH[name]
    a = {"final_val_dense": [val(runs[s], 1000) for s in SEEDS]}
    a["minus_dense_final"] = paired([val(runs[s], 1000) - val(dense[s], 1000) for s in SEEDS])
    a["minus_lighthouse_700_300_final"] = paired(
        [val(runs[s], 1000) - val(lh[s], 1000) for s in SEEDS]
    )
    a["val_gap_vs_dense_by_step"] = {
        str(t): paired([val(runs[s], t) - val(dense[s], t) for s in SEEDS])
        for t in range(100, 1001, 100)
    }
    a["train_loss_gap_vs_dense_after_switch"] = {
        f"{lo}-{hi}": paired(
            [
                st.fmean(runs[s][0][t]["loss"] - dense[s][0][t]["loss"] for t in range(lo, hi + 1))
                for s in SEEDS
            ]
        )
        for lo, hi in (
            (switch + 1, switch + 50),
            (switch + 51, switch + 100),
            (switch + 101, switch + 200),
            (switch + 201, 1000),
        )
        if lo <= hi <= 1000
    }
    # Same config, seed and data as the earlier lighthouse arm up to the switch: session noise.
    same_until = min(switch, 700)
    a["cross_session_noise_same_config"] = {
        "step": same_until,
        "val_dense_diff_vs_earlier_lighthouse": [
            val(runs[s], same_until) - val(lh[s], same_until) for s in SEEDS
        ],
        "val_lighthouse_diff_vs_earlier_lighthouse": [
            runs[s][1][same_until]["val_loss_lighthouse"]
            - lh[s][1][same_until]["val_loss_lighthouse"]
            for s in SEEDS
        ],
    }
    a["tokens_per_s_this_session"] = {
        "stage1": speed(runs, 1),
        "stage2": speed(runs, 2, skip=switch + 5),
    }
    a["wall_s_this_session"] = [sum(r["step_time_s"] for r in runs[s][0].values()) for s in SEEDS]
    out[name] = a
print(json.dumps(out, indent=1))
