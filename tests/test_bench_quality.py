"""benchmarks/bench_quality.py on CPU: arms x 3 seeds, paired statistics, the results file."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_quality  # noqa: E402

TINY = [
    "model.num_layers=3",
    "train.seq_len=512",
    "lighthouse.num_levels=2",
    "lighthouse.pooling_factor=2",
    "optim.warmup_steps=2",
    "train.steps=6",
    "train.stage1_steps=4",
    "train.engine=torch",
    "eval.every=3",
    "eval.batches=2",
    "eval.passkey_trials=1",
    "eval.passkey_depths=[0.0, 1.0]",
    "checkpoint.enabled=false",
    "train.log_every=3",
]


def test_two_arms_three_seeds_write_paired_results(tmp_path):
    out = tmp_path / "results"
    argv = [
        "--name",
        "cpu_test",
        "--set",
        *TINY,
        "--arm",
        "dense",
        "lighthouse.enabled=false",
        "--arm",
        "lighthouse",
        "--seeds",
        "0",
        "1",
        "2",
        "--jobs",
        "2",
        "--work-dir",
        str(tmp_path / "runs"),
        "--out-dir",
        str(out),
    ]
    assert bench_quality.main(argv) == 0
    (path,) = out.glob("*_quality_cpu_test.json")
    payload = json.loads(path.read_text())
    assert payload["config"]["seq_len"] == 512 and "torch" in payload["environment"]
    dense, lh = payload["arms"]["dense"], payload["arms"]["lighthouse"]
    for arm in (dense, lh):
        assert arm["seeds"] == [0, 1, 2] and len(arm["per_seed"]) == 3
        assert arm["steps"] == 6
        vals = [s["final_val_loss_dense"] for s in arm["per_seed"]]
        assert arm["final_val_loss_dense"] == pytest.approx(statistics.fmean(vals))
        assert arm["final_val_loss_dense_sem"] == pytest.approx(
            statistics.stdev(vals) / math.sqrt(3)
        )
        assert all(len(s["evals"]) == 2 for s in arm["per_seed"])  # steps 3 and 6
    assert dense["stage1_steps"] == 0 and lh["stage1_steps"] == 4
    assert lh["tokens_per_s_stage1"] > 0 and lh["tokens_per_s_stage2"] > 0
    diffs = [
        a["final_val_loss_dense"] - b["final_val_loss_dense"]
        for a, b in zip(lh["per_seed"], dense["per_seed"])
    ]
    paired = lh["vs_baseline_val_loss_dense"]
    assert paired["per_seed"] == pytest.approx(diffs)
    assert paired["ci95"][0] < paired["mean"] < paired["ci95"][1]
    assert len(payload["verdicts"]) == 1 and "lighthouse" in payload["verdicts"][0]
    assert "at equal wall-clock" in payload["verdicts"][0]
    assert len(lh["vs_baseline_val_loss_dense_equal_wall_clock"]["per_seed"]) == 3
    assert lh["vs_baseline_val_loss_dense_by_step"].keys() == {"3", "6"}
    assert lh["vs_baseline_val_loss_dense_by_step"]["6"]["per_seed"] == pytest.approx(diffs)
    (window,) = lh["vs_baseline_train_loss_after_switch"].items()  # steps 5-6, after the switch
    runs_dir = tmp_path / "runs"
    train_diffs = []
    for seed in (0, 1, 2):
        a, b = (bench_quality.read_run(runs_dir / arm / f"seed_{seed}")["loss"]
                for arm in ("lighthouse", "dense"))  # fmt: skip
        train_diffs.append(statistics.fmean([a[4] - b[4], a[5] - b[5]]))
    assert window[0] == "5-6" and window[1]["per_seed"] == pytest.approx(train_diffs)
    leaks = [s["leak"]["lighthouse_minus_causal"] for s in lh["per_seed"]]
    assert lh["leak_lighthouse_minus_causal"]["per_seed"] == pytest.approx(leaks)
    assert "leak_lighthouse_minus_causal" not in dense
    leak = lh["per_seed"][0]["leak"]
    assert leak["step"] == 3 and "lighthouse_minus_causal" in leak
    assert lh["per_seed"][0]["passkey_mean"].keys() == {"dense", "lighthouse"}
    if payload["plot"]:
        assert (out / payload["plot"]).stat().st_size > 10_000
    # The finished runs can be summarised again without training.
    again = ["--summarise-only", *argv[:-2], "--out-dir", str(tmp_path / "again")]
    assert bench_quality.main(again) == 0
    (path2,) = (tmp_path / "again").glob("*.json")
    assert (
        json.loads(path2.read_text())["arms"]["lighthouse"]["final_val_loss_dense"]
        == (lh["final_val_loss_dense"])
    )
    # A cut invocation: one run lost its metrics. --keep-finished trains only that one.
    runs = tmp_path / "runs"
    (runs / "lighthouse" / "seed_1" / "metrics.jsonl").unlink()
    kept = {p: p.stat().st_mtime_ns for p in runs.glob("*/seed_*/metrics.jsonl")}
    assert len(kept) == 5
    resumed = [*argv[:-2], "--keep-finished", "--out-dir", str(tmp_path / "resumed")]
    assert bench_quality.main(resumed) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (runs / "lighthouse" / "seed_1" / "metrics.jsonl").is_file()
    (path3,) = (tmp_path / "resumed").glob("*.json")
    assert (
        json.loads(path3.read_text())["arms"]["dense"]["final_val_loss_dense"]
        == (dense["final_val_loss_dense"])
    )


def test_a_finished_run_is_kept_only_with_the_same_arguments(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cmd = ["python3", "-m", "lhdist.train", "--lighthouse.scatter=mean",
           f"--train.run_dir={run_dir}"]  # fmt: skip
    (run_dir / "log.txt").write_text(
        "/usr/bin/python -m lhdist.train --lighthouse.scatter=mean --train.run_dir=/elsewhere\n"
    )
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text('{"step": 1, "stage": 1, "loss": 1.0}\n')
    assert not bench_quality.finished_with(run_dir, cmd)  # never reached its end
    metrics.write_text(metrics.read_text() + '{"event": "done", "step": 1}\n')
    assert bench_quality.finished_with(run_dir, cmd)
    assert not bench_quality.finished_with(run_dir, [*cmd[:3], "--lighthouse.scatter=sum"])


def test_bad_arguments_exit_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_quality.main(["--name", "x", "--seeds", "0", "1"])
    assert e.value.code == 2 and "at least 3" in capsys.readouterr().err
    assert bench_quality.main(["--name", "x", "--set", "train.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_equal_wall_clock_interpolates_the_slower_run_at_the_faster_ones_end():
    # Evals at steps 2 and 4. The fast run takes 1 s per step (4 s); the slow one 2 s per step,
    # so at 4 s it has done 2 steps: its step-2 eval.
    fast = {
        "step_time_s": [1.0] * 4,
        "wall_s": 4.0,
        "evals": [{"step": 2, "val_loss_dense": 3.0}, {"step": 4, "val_loss_dense": 2.0}],
    }
    slow = {
        "step_time_s": [2.0] * 4,
        "wall_s": 8.0,
        "evals": [{"step": 2, "val_loss_dense": 2.8}, {"step": 4, "val_loss_dense": 1.6}],
    }
    assert bench_quality.val_at_wall(slow, 4.0) == pytest.approx(2.8)
    assert bench_quality.val_at_wall(slow, 6.0) == pytest.approx(2.2)  # halfway to step 4
    assert bench_quality.val_at_wall(slow, 99.0) == pytest.approx(1.6)  # past the last eval
    assert bench_quality.equal_wall_clock(fast, slow) == pytest.approx(2.0 - 2.8)
    assert bench_quality.equal_wall_clock(slow, fast) == pytest.approx(2.8 - 2.0)


@pytest.mark.parametrize(
    "ratio, words", [(1.25, "1.25x shorter than dense"), (0.8, "1.25x longer")]
)
def test_verdict_says_shorter_or_longer_in_wall_clock(ratio, words):
    diff = bench_quality.paired([0.1, 0.2, 0.15])
    arms = {
        "dense": {"final_val_loss_dense": 1.0},
        "lh": {
            "final_val_loss_dense": 1.15,
            "vs_baseline_val_loss_dense": diff,
            "vs_baseline_val_loss_dense_equal_wall_clock": diff,
            "wall_clock_ratio_vs_baseline": ratio,
        },
    }
    (line,) = bench_quality.verdicts(arms, "dense")
    assert words in line and "worse than dense beyond noise" in line
