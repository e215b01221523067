"""Bad engine input stops `lhdist train` with one line and exit code 2, before any process group
starts: a ZeRO stage outside 0-3, an unknown engine, DeepSpeed missing for the deepspeed engine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `lhdist train` with `deepspeed` unimportable (a None entry in sys.modules blocks the import).
HIDE_DEEPSPEED = (
    "import sys; sys.modules['deepspeed'] = None; from lhdist.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def train(run_dir, *overrides, hide_deepspeed=False):
    head = ["-c", HIDE_DEEPSPEED] if hide_deepspeed else ["-m", "lhdist"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, *head, "train", "--train.steps=1", "--train.stage1_steps=0",
           "--train.seq_len=256", "--lighthouse.enabled=false", f"--train.run_dir={run_dir}",
           *overrides]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--train.zero_stage=4"], "train.zero_stage=4 must be 0, 1, 2 or 3"),
        (["--train.zero_stage=-1"], "train.zero_stage=-1 must be 0, 1, 2 or 3"),
        (["--train.engine=fsdp"], "train.engine='fsdp' must be one of ('deepspeed', 'torch')"),
    ],
    ids=["zero4", "zero-minus1", "unknown-engine"],
)
def test_train_bad_engine_config_exits_2_with_one_line(tmp_path, overrides, message):
    out = train(tmp_path / "run", *overrides)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [f"lhdist train: config error: {message}"]
    assert not (tmp_path / "run").exists()  # stopped at config load, before the run started


def test_train_deepspeed_missing_exits_2_before_the_process_group(tmp_path):
    out = train(tmp_path / "run", "--train.engine=deepspeed", hide_deepspeed=True)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("lhdist train: error: train.engine=deepspeed but DeepSpeed is not")
    assert not (tmp_path / "run").exists()  # no run directory: run() never began
    # The torch engine needs no DeepSpeed: the same environment trains.
    ok = train(tmp_path / "torch", "--train.engine=torch", hide_deepspeed=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
