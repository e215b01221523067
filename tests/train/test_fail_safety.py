"""Nothing is lost: free space before a save, disk-full named and cleaned, run ids in
checkpoints (resume=auto and pruning keep to this run), incomplete checkpoints skipped,
metrics.jsonl repaired, temp folders of killed prepares removed."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from lhdist.config import load_config
from lhdist.train import checkpoint as ckpt
from lhdist.train import disk
from lhdist.train.data_checks import remove_stale_temps
from lhdist.train.metrics_repair import ABANDONED, repair_metrics
from lhdist.train.resume import plan_resume, write_run_file
from tests.train.test_checkpoint import FakeEngine


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def config(tmp_path, *extra):
    return load_config(overrides=["--train.steps=100", "--train.stage1_steps=5",
                                  f"--train.run_dir={tmp_path}", "--checkpoint.keep_last=2",
                                  *extra])  # fmt: skip


def save(cfg, step, run_id):
    return ckpt.save_checkpoint(cfg, FakeEngine(float(step)), step, 1, {"step": step}, run_id)


def test_save_checks_free_space_first_and_says_how_much(tmp_path, one_rank_group, monkeypatch):
    cfg = config(tmp_path)
    first = save(cfg, 2, "a")
    size = disk.tree_bytes(first)
    monkeypatch.setattr(disk, "free_bytes", lambda folder: size // 2)
    with pytest.raises(disk.DiskError, match=r"checkpoint step_00000004 needs about .* GiB in "
                       r".* but only .* GiB are free"):  # fmt: skip
        save(cfg, 4, "a")
    assert sorted(p.name for p in cfg.checkpoint_dir().iterdir()) == ["step_00000002"]


@pytest.mark.parametrize("failure", ["torch-enforce", "enospc"])
def test_disk_full_during_save_is_named_and_leaves_no_partial(
    tmp_path, one_rank_group, monkeypatch, failure
):
    import errno

    cfg = config(tmp_path)

    class FullDisk(FakeEngine):
        def save(self, directory):
            (directory / "engine.pt").write_bytes(b"x" * 1000)  # a partial write
            if failure == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", str(directory / "e.pt"))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 10 * 2**30)  # the pre-check passes
    monkeypatch.setattr(ckpt, "check_free_space", lambda *a: None)
    if failure == "torch-enforce":  # by the time the write fails, the disk is full
        monkeypatch.setattr(disk, "free_bytes", lambda folder: 0)
    with pytest.raises(ValueError, match="no space left on device|the disk is full"):
        ckpt.save_checkpoint(cfg, FullDisk(1.0), 2, 1, {}, "a")
    assert list(cfg.checkpoint_dir().iterdir()) == []  # the .tmp-step folder is gone


def test_pruning_keeps_this_runs_newest_beside_another_runs_later_ones(tmp_path, one_rank_group):
    cfg = config(tmp_path)
    for step in (40, 60):
        save(cfg, step, "later")
    # A run resumed from an older point writes step 30: pruning by step number alone would
    # delete it at once (40 and 60 are "newer").
    save(cfg, 30, "mine")
    save(cfg, 32, "mine")
    save(cfg, 34, "mine")
    names = sorted(p.name for p in cfg.checkpoint_dir().iterdir())
    assert names == ["step_00000032", "step_00000034", "step_00000040", "step_00000060"]


def test_resume_auto_continues_only_this_run_and_skips_incomplete(tmp_path, one_rank_group):
    cfg = config(tmp_path, "--checkpoint.keep_last=5")
    for step in (20, 40):
        save(cfg, step, "abandoned")
    save(cfg, 24, "mine")
    save(cfg, 28, "mine")
    write_run_file(tmp_path, "mine", resumed_from=cfg.checkpoint_dir() / "step_00000020")
    plan = plan_resume(cfg)
    assert (plan.run_id, plan.path.name) == ("mine", "step_00000028")
    assert "ignoring 2 checkpoint(s) of other runs" in plan.notes[0]
    # The newest is truncated after its rename: named, and the previous complete one is used.
    (cfg.checkpoint_dir() / "step_00000028" / "engine.pt").write_bytes(b"cut")
    plan = plan_resume(cfg)
    assert plan.path.name == "step_00000024"
    assert "step_00000028 is truncated or incomplete: engine.pt has 3 bytes" in plan.notes[1]
    # No checkpoint of its own left: back to where this run branched from.
    (cfg.checkpoint_dir() / "step_00000024" / "meta.json").unlink()
    assert plan_resume(cfg).path.name == "step_00000020"


def test_resume_auto_without_run_file_takes_the_newest_complete(tmp_path, one_rank_group):
    cfg = config(tmp_path)
    save(cfg, 2, "x")
    save(cfg, 4, "x")
    plan = plan_resume(cfg)
    assert (plan.run_id, plan.path.name, plan.notes) == ("x", "step_00000004", [])


def test_metrics_repair_cuts_torn_line_and_moves_records_after_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"event": "start", "step": 0}] + [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')
    assert repair_metrics(path, start_step=2) == (1, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    moved = (tmp_path / ABANDONED).read_text().splitlines()
    assert [json.loads(line)["step"] for line in moved] == [3, 4]
    assert repair_metrics(path, start_step=2) == (0, 0)  # a clean file is left alone


def test_prepare_temp_of_a_dead_writer_is_removed(tmp_path):
    import socket

    out = tmp_path / "ds"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    host = socket.gethostname()
    stale = tmp_path / f".ds.tmp-{host}-{dead}-abcd1234"
    alive = tmp_path / f".ds.tmp-{host}-{os.getpid()}-abcd1234"
    remote = tmp_path / f".ds.tmp-elsewhere-{dead}-abcd1234"
    for folder in (stale, alive, remote):
        folder.mkdir()
    assert remove_stale_temps(out) == [stale]
    assert alive.exists() and remote.exists() and not stale.exists()


def test_nonfinite_step_stops_the_run_unless_tolerated(tmp_path):
    from lhdist.train.numerics import BadStepGuard, NonFiniteError

    guard = BadStepGuard(max_bad_steps=1)
    assert guard.check(1, 2.0, 1.0) is False
    assert guard.check(2, float("nan"), 1.0) is True  # tolerated, skipped
    with pytest.raises(NonFiniteError, match=r"step 3: loss 2.0 and gradient norm inf"):
        guard.check(3, 2.0, float("inf"))
    assert guard.last_finite_loss == 2.0


def test_torch_engine_skips_the_update_of_a_nonfinite_step(one_rank_group):
    from lhdist.train.engine import TorchEngine

    cfg = load_config(
        overrides=["--train.engine=torch", "--optim.warmup_steps=0", "--train.max_bad_steps=1"]
    )
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    dims = type("Dims", (), {"grad_group": dist.group.WORLD})()
    engine = TorchEngine(model, opt, sched, cfg, dims)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (model(torch.ones(1, 3)) * float("nan")).sum().backward()
    norm = engine.step()
    assert norm != norm  # nan
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not opt.state and model.weight.grad is None  # no Adam moments; gradients cleared


def test_a_step_that_raises_stops_the_read_ahead_thread(tmp_path, monkeypatch):
    # A read-ahead thread left inside torch aborts the process at interpreter exit ("terminate
    # called without an active exception", seen as a rank's SIGABRT after a nan loss).
    import threading

    import lhdist.train.loop as loop
    from lhdist.train.numerics import NonFiniteError
    from tests.train.test_fail_ranks import nan_losses
    from tests.train.test_training import FAST

    monkeypatch.setattr(loop, "build_engine", nan_losses(loop.build_engine, lambda n: True))
    overrides = [*FAST, "--train.engine=torch", "--eval.batches=0", "--train.steps=4",
                 "--train.stage1_steps=2", "--data.prefetch_batches=2",
                 f"--train.run_dir={tmp_path}/r"]  # fmt: skip
    cfg = load_config(overrides=overrides)
    with pytest.raises(NonFiniteError, match="step 1: loss nan"):
        loop.train(cfg)
    alive = [t.name for t in threading.enumerate() if t.name == "lhdist-prefetch"]
    assert alive == []
