"""Multi-rank failures on gloo: a check one rank fails stops every rank with the same message,
a divergence stops all alike, a disk-full save on one rank fails on all (no partial left), and
a frozen or dead rank ends the others within the timeout, one line each, naming it."""

import shutil
import signal
import time

import pytest

from tests.multiprocess import run_ranks
from tests.train.test_resume import launch
from tests.train.test_training import FAST
from tests.train.test_watchdog import finish

TORCH = [*FAST, "--train.engine=torch", "--eval.batches=0", "--train.stage1_steps=1"]


def _expect_error(rank, world_size, overrides, pattern, setup):
    """Every rank's train() raises ValueError matching `pattern` (after `setup(rank)`)."""
    from lhdist.config import load_config
    from lhdist.train.loop import train

    if setup is not None:
        setup(rank)
    cfg = load_config(overrides=overrides, world_size=world_size)
    start = time.monotonic()
    with pytest.raises(ValueError, match=pattern):
        train(cfg)
    assert time.monotonic() - start < 60


def test_shard_hash_failure_found_by_rank0_stops_every_rank_alike(tmp_path):
    from lhdist.train.data import prepare_dataset

    text = tmp_path / "a.txt"
    text.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(2000)))
    data = tmp_path / "ds"
    prepare_dataset([text], data, seq_len=512, progress=False)
    shard = sorted(data.glob("*.mds"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only rank 0's hash check can see it
    shard.write_bytes(bytes(raw))
    args = [*TORCH, "--train.steps=2", f"--data.path={data}", f"--train.run_dir={tmp_path}/r"]
    run_ranks(_expect_error, 2, tmp_path, args,
              rf"{shard.name} has xxh64 .* corrupt.*\(found by rank 0\)", None,
              timeout_s=120)  # fmt: skip


def nan_losses(build_engine, when):
    """`build_engine` whose engines return a nan loss on the forward calls n where `when(n)`."""

    def build(model, cfg, dims):
        engine = build_engine(model, cfg, dims)
        calls = {"n": 0}
        forward = engine.__call__

        class NanLoss:
            def __getattr__(self, name):
                return getattr(engine, name)

            def __call__(self, *args, **kwargs):
                calls["n"] += 1
                loss = forward(*args, **kwargs)
                return loss * float("nan") if when(calls["n"]) else loss

        return NanLoss()

    return build


def _nan_on_rank1_at_step2(rank):
    """Rank 1's loss turns nan at step 2; the all-reduce spreads it, as a real divergence."""
    import lhdist.train.loop as loop

    loop.build_engine = nan_losses(loop.build_engine, lambda n: rank == 1 and n == 2)


def test_nonfinite_loss_on_one_rank_stops_every_rank_with_the_same_line(tmp_path):
    args = [*TORCH, "--train.steps=6", f"--train.run_dir={tmp_path}/r"]
    pattern = r"step 2: loss nan and gradient norm nan .*train.max_bad_steps=0"
    run_ranks(_expect_error, 2, tmp_path, args, pattern, _nan_on_rank1_at_step2, timeout_s=120)


def _disk_full_on_rank1(rank):
    import torch

    import lhdist.train.disk as disk

    if rank != 1:
        return
    save = torch.save

    def failing_save(obj, f, *a, **kw):
        if "rank_00001" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")
        return save(obj, f, *a, **kw)

    torch.save = failing_save
    disk.free_bytes = lambda folder: 0  # what rank 1 sees once its disk filled up


def _checkpoint_dir_is_clean(rank, world_size, run_dir):
    import os

    leftovers = os.listdir(f"{run_dir}/checkpoints")
    assert leftovers == [], leftovers


def test_disk_full_on_one_rank_fails_the_save_on_every_rank_and_cleans_up(tmp_path):
    run_dir = tmp_path / "r"
    args = [*TORCH, "--train.steps=2", "--checkpoint.enabled=true", "--checkpoint.every=2",
            f"--train.run_dir={run_dir}"]  # fmt: skip
    pattern = r"writing under .*\.tmp-step_00000002 failed: the disk is full .*found by rank 1"
    run_ranks(_expect_error, 2, tmp_path, args, pattern, _disk_full_on_rank1, timeout_s=120)
    assert list((run_dir / "checkpoints").iterdir()) == []


def wait_for_three_steps(procs, run_dir) -> None:
    """Until the launched ranks have logged three steps (all still running), at most 120 s."""
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)


def test_frozen_rank_ends_the_job_within_the_timeout_naming_it(tmp_path):
    timeout_s = 6
    run_dir = tmp_path / "run"
    args = [*TORCH, "--train.steps=100000", f"--parallel.timeout_s={timeout_s}",
            f"--train.run_dir={run_dir}"]  # fmt: skip
    procs = launch(2, args)
    try:
        wait_for_three_steps(procs, run_dir)
        procs[1].send_signal(signal.SIGSTOP)  # frozen: the pid stays, nothing answers
        frozen_at = time.monotonic()
        (err,) = finish([procs[0]], within_s=timeout_s + 20)
        took = time.monotonic() - frozen_at
    finally:
        procs[1].send_signal(signal.SIGKILL)
        procs[1].communicate()
    (line,) = err.decode().strip().splitlines()
    assert "rank 1 stopped answering during " in line and " of step " in line, line
    assert took < timeout_s + 10, took


def test_rank0_killed_ends_rank1_with_one_line_naming_rank0(tmp_path):
    # Rank 0 hosts the job's store (env:// rendezvous): its death takes the store with it.
    timeout_s = 20
    run_dir = tmp_path / "run"
    args = [*TORCH, "--train.steps=100000", f"--parallel.timeout_s={timeout_s}",
            f"--train.run_dir={run_dir}"]  # fmt: skip
    procs = launch(2, args)
    wait_for_three_steps(procs, run_dir)
    procs[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (err,) = finish([procs[1]], within_s=timeout_s + 20)
    procs[0].communicate()
    took = time.monotonic() - killed_at
    assert len(err.decode().strip().splitlines()) == 1, err.decode()[-5000:]
    (line,) = err.decode().strip().splitlines()
    assert "rank 0 stopped answering during " in line, line
    assert "rank 1 failed" not in line, line
    assert took < 15, took
    shutil.rmtree(run_dir, ignore_errors=True)
