"""Checkpoints: atomic appearance, keep-last-K, latest lookup, partial dirs, layout checks."""

import json

import pytest
import torch
import torch.distributed as dist

from lhdist.config import load_config
from lhdist.train import checkpoint as ckpt


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class FakeEngine:
    def __init__(self, value: float) -> None:
        self.weight = torch.full((3,), value)

    def save(self, directory):
        torch.save({"weight": self.weight}, directory / "engine.pt")

    def load(self, directory):
        self.weight = torch.load(directory / "engine.pt")["weight"]


def config(tmp_path, keep_last=2):
    return load_config(
        overrides=[
            "--train.steps=10",
            "--train.stage1_steps=5",
            f"--train.run_dir={tmp_path}",
            f"--checkpoint.keep_last={keep_last}",
        ]
    )


def test_checkpoint_keeps_last_k_and_finds_latest(tmp_path, one_rank_group):
    cfg = config(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        ckpt.save_checkpoint(cfg, FakeEngine(step), step, 1, {"data": {"offset": step}})
    names = sorted(p.name for p in cfg.checkpoint_dir().iterdir())
    assert names == ["step_00000004", "step_00000006"]
    latest = ckpt.find_latest(cfg.checkpoint_dir())
    assert latest.name == "step_00000006"
    meta = ckpt.read_meta(latest)
    assert (meta["step"], meta["stage"], meta["world_size"]) == (6, 1, 1)
    assert (latest / "config.yaml").read_text() == cfg.to_yaml()


def test_checkpoint_restores_engine_data_and_rng(tmp_path, one_rank_group):
    cfg = config(tmp_path)
    torch.manual_seed(123)
    path = ckpt.save_checkpoint(cfg, FakeEngine(7.0), 3, 1, {"data": {"offset": 42}})
    expected = torch.rand(4)
    engine = FakeEngine(0.0)
    state = ckpt.load_checkpoint(path, engine)
    assert state["data"] == {"offset": 42} and torch.equal(engine.weight, torch.full((3,), 7.0))
    assert torch.equal(torch.rand(4), expected)  # RNG continues where the checkpoint was taken


def test_checkpoint_partial_dirs_are_ignored_and_removed(tmp_path, one_rank_group):
    cfg = config(tmp_path)
    ckpt.save_checkpoint(cfg, FakeEngine(1.0), 2, 1, {})
    root = cfg.checkpoint_dir()
    (root / ".tmp-step_00000004").mkdir()  # a save killed before its rename
    (root / "step_00000009").mkdir()  # no meta.json: never completed
    assert ckpt.find_latest(root).name == "step_00000002"
    ckpt.remove_partial(root)
    assert not (root / ".tmp-step_00000004").exists()


def test_checkpoint_rejects_other_layout(tmp_path, one_rank_group):
    cfg = config(tmp_path)
    path = ckpt.save_checkpoint(cfg, FakeEngine(1.0), 2, 1, {})
    meta = json.loads((path / "meta.json").read_text())
    meta["dp_degree"], meta["world_size"] = 2, 2
    with pytest.raises(ValueError, match="dp_degree: checkpoint 2 vs run 1"):
        ckpt.check_compatible(meta, cfg, path)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        ckpt.read_meta(tmp_path)
