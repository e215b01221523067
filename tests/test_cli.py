"""The `lhdist` command: sub-commands, a short CPU run, and errors that stop before training."""

import json
import os
import subprocess
import sys

import pytest

QUICK = [
    "--train.steps=2",
    "--train.stage1_steps=1",
    "--train.seq_len=512",
    "--lighthouse.num_levels=2",
    "--lighthouse.pooling_factor=2",
    "--model.num_layers=3",
    "--train.tensorboard=false",
]


def lhdist(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "lhdist", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_cli_lists_commands_and_rejects_unknown():
    out = lhdist()
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "data", "bench", "check"))
    bad = lhdist("nope")
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


def test_cli_train_help_lists_every_key_with_docs():
    out = lhdist("train", "--help")
    assert out.returncode == 0
    assert "--train.stage1_steps=250" in out.stdout and "--lighthouse.topk=128" in out.stdout


def test_cli_train_short_run_writes_config_metrics_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    out = lhdist("train", *QUICK, f"--train.run_dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 2/2 | stage 2" in out.stdout and "[stage_switch] step 2" in out.stdout
    assert (run_dir / "config.yaml").read_text() == (
        run_dir / "checkpoints" / "step_00000002" / "config.yaml"
    ).read_text()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line).get("event") for line in lines]
    assert events == [
        "start",
        None,
        "compute_dtype",
        "stage_switch",
        None,
        "eval",
        "checkpoint",
        "done",
        "eval_final",
    ]
    probe = json.loads(lines[events.index("compute_dtype")])
    assert probe["dtype"] == "float32"  # train.dtype auto on CPU


def test_cli_train_unknown_key_stops_with_valid_keys(tmp_path):
    out = lhdist("train", "--train.stepz=3", f"--train.run_dir={tmp_path}")
    assert out.returncode == 2
    assert "unknown config key 'train.stepz'" in out.stderr and "train.steps" in out.stderr
    assert not any(tmp_path.iterdir())


def test_cli_train_layout_not_dividing_sequence_stops_before_any_rank_starts(tmp_path):
    # WORLD_SIZE as torchrun would set it: the check runs at config load, before any collective.
    out = lhdist(
        "train",
        "--parallel.cp_degree=2",
        "--train.seq_len=2050",
        f"--train.run_dir={tmp_path}",
        env={"WORLD_SIZE": "2", "RANK": "0"},
        timeout=60,
    )
    assert out.returncode == 2
    assert "train.seq_len=2050 must be divisible by 2*cp_degree=4" in out.stderr


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    text = root / "corpus.txt"
    text.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(4000)))
    out = lhdist("data", "prepare", str(text), "--out", str(root / "ds"), "--seq-len", "512")
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "ds"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_cli_train_bad_shard_stops_before_training(tmp_path, small_dataset, damage):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(small_dataset, data)
    shard = sorted(data.glob("*.mds"))[0]
    if damage == "missing":
        shard.unlink()
    else:
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        shard.write_bytes(bytes(raw))
    run_dir = tmp_path / "run"
    out = lhdist("train", *QUICK, f"--data.path={data}", f"--train.run_dir={run_dir}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert shard.name in out.stderr
    assert not (run_dir / "metrics.jsonl").exists()  # training never started


def test_cli_data_validate_reports_dataset(small_dataset):
    out = lhdist("data", "validate", str(small_dataset), "--seq-len", "512")
    assert out.returncode == 0 and "samples of 513 tokens" in out.stdout
