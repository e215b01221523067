"""benchmarks/bench_train.py on CPU: both stages measured, MFUs, memory, a time split that
adds up; a failed run is recorded and the others still run."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_train  # noqa: E402

TINY = [
    "model.num_layers=2",
    "lighthouse.full_attn_layers=[0]",
    "lighthouse.num_levels=2",
    "lighthouse.pooling_factor=2",
    "lighthouse.topk=128",
    "train.engine=torch",
]


def bench(tmp_path, *extra):
    argv = [
        "--name", "cpu_test", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--seq-lens", "1024", "--warmup-steps", "1", "--steps", "2", "--set", *TINY,
        "--work-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), *extra,
    ]  # fmt: skip
    code = bench_train.main(argv)
    (path,) = (tmp_path / "out").glob("*_train_step_cpu_test.json")
    return code, json.loads(path.read_text())


def test_bench_train_measures_both_stages_with_a_time_split(tmp_path):
    code, payload = bench(tmp_path, "--activation-checkpointing", "ffn")
    assert code == 0 and payload["errors"] == [] and "torch" in payload["environment"]
    rows = {row["stage"]: row for row in payload["runs"]}
    assert sorted(rows) == [1, 2]
    for stage, row in rows.items():
        assert row["seq_len"] == 1024 and row["compile"] is False
        assert row["activation_checkpointing"] == "ffn"
        assert row["activation_checkpointing_plan"] == "ffn in 2 of 2 blocks"
        assert row["measured_steps"] == ([2, 3] if stage == 1 else [6, 7])  # warm-up excluded
        assert row["tokens_per_s"] > 0 and row["peak_gib"] > 0 and row["estimate_gib"] > 0
        assert 0 < row["mfu_executed"] <= row["mfu_dense"] < 1
        split = row["time_split"]
        assert split["source"] == "cpu ops (self time)"
        assert set(split["fraction"]) == set(bench_train_split_categories())
        assert abs(sum(split["fraction"].values()) - 1) < 0.05, split  # the window, accounted
        assert split["ms_per_step"]["attention"] > 0 and split["ms_per_step"]["matmuls"] > 0
        assert split["ms_per_step"]["optimizer"] > 0
    # Lighthouse selects 768 of 1024 entries in layer 1: stage 1 executes fewer FLOPs.
    assert rows[1]["mfu_executed"] < rows[1]["mfu_dense"]
    assert rows[2]["mfu_executed"] == rows[2]["mfu_dense"]


def bench_train_split_categories():
    from train_time_split import CATEGORIES

    return CATEGORIES


def test_bench_train_failure_is_recorded_and_exits_1(tmp_path, monkeypatch):
    calls = []

    def failing_run(args, *config):
        calls.append(config)
        raise bench_train.RunFailed(f"run {len(calls)} exited 1 (log: x):\nout of memory")

    monkeypatch.setattr(bench_train, "one_run", failing_run)
    code, payload = bench(tmp_path, "--compile", "off", "on")
    assert code == 1 and payload["runs"] == [] and len(calls) == 2  # the second still ran
    assert [e.split(" ")[1] for e in payload["errors"]] == ["1", "2"]


def test_stage_windows_leave_out_warmup_and_profiled_steps():
    args = bench_train.parse_args(["--name", "x", "--seq-lens", "512", "--warmup-steps", "2",
                                   "--steps", "3", "--profile-steps", "2"])  # fmt: skip
    assert bench_train.stage_windows(args) == {1: (3, 5, 7), 2: (10, 12, 14)}
    overrides = bench_train.run_overrides(args, "270m", 512, "on", "auto", "cudnn")
    assert "train.profile_steps=[6, 7, 13, 14]" in overrides
    assert "train.steps=14" in overrides and "train.stage1_steps=7" in overrides
    assert "train.compile=true" in overrides and "model.flavor=270m" in overrides
