"""benchmarks/bench_deepspeed.py on CPU: torch vs DeepSpeed stages, bf16 measured, resume exact."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_deepspeed  # noqa: E402

TINY = [
    "model.num_layers=2",
    "lighthouse.full_attn_layers=[0]",
    "lighthouse.num_levels=2",
    "lighthouse.pooling_factor=2",
    "optim.warmup_steps=2",
    "train.dtype=bf16",  # bf16 compute on CPU: the dtype each engine measured must say so
]


def bench(tmp_path, *extra):
    argv = [
        "--name", "cpu_test", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--seq-len", "512", "--steps", "4", "--warmup-steps", "1", "--resume-steps", "4",
        "--set", *TINY, "--work-dir", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"),
        *extra,
    ]  # fmt: skip
    code = bench_deepspeed.main(argv)
    (path,) = (tmp_path / "out").glob("*_deepspeed_cpu_test.json")
    return code, json.loads(path.read_text())


def test_bench_deepspeed_compares_stages_and_checks_resume(tmp_path):
    code, payload = bench(tmp_path, "--stages", "0", "3", "--resume-stages", "3")
    assert code == 0 and "torch" in payload["environment"]
    assert payload["torch"]["dtype"] == "bfloat16"
    assert sorted(payload["stages"]) == ["0", "3"]
    for row in payload["stages"].values():
        assert row["dtype"] == "bfloat16"
        assert 0.0 <= row["max_loss_diff_vs_torch"] < 1e-2  # same data, init, bf16 autocast
        assert row["tokens_per_s"] > 0 and row["torch_tokens_per_s"] > 0
        assert row["peak_gib"] > 0 and row["estimate_gib"] > 0
    assert payload["resume"]["3"]["resume_exact"] is True
    assert payload["resume"]["3"]["max_loss_diff"] == 0.0


def test_bench_deepspeed_failure_exits_1_and_keeps_what_finished(tmp_path, monkeypatch):
    def failing_resume(args, payload, save):
        raise bench_deepspeed.RunFailed("ZeRO-1 resumed at 2 exited 1 (log: x):\nboom")

    monkeypatch.setattr(bench_deepspeed, "resume_runs", failing_resume)
    code, payload = bench(tmp_path, "--stages", "0")
    assert code == 1
    assert payload["stages"]["0"]["dtype"] == "bfloat16" and payload["resume"] == {}
    assert payload["error"].startswith("ZeRO-1 resumed at 2 exited 1")


def test_run_logged_reports_exit_code_and_kills_a_hung_run(tmp_path):
    fail = [sys.executable, "-c", "print('step 1/2 | loss 1.0'); raise SystemExit(3)"]
    with pytest.raises(bench_deepspeed.RunFailed, match="exited 3"):
        bench_deepspeed.run_logged(fail, tmp_path / "fail", "failing", timeout_s=60)
    assert "step 1/2" in (tmp_path / "fail" / "log.txt").read_text()
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(bench_deepspeed.RunFailed, match="killed after 1 s"):
        bench_deepspeed.run_logged(hang, tmp_path / "hang", "hanging", timeout_s=1)
