"""Few-step gloo training runs: engines, dp and cp layouts, the stage switch, the loss falling."""

import json
from pathlib import Path

import pytest

from tests.multiprocess import run_ranks

# A small, fast run: 3 layers of dim 128 at 512 tokens, Lighthouse L=2, p=2 in layer 1.
FAST = [
    "--model.num_layers=3",
    "--train.seq_len=512",
    "--train.micro_batch_size=1",
    "--lighthouse.num_levels=2",
    "--lighthouse.pooling_factor=2",
    "--optim.warmup_steps=3",
    "--train.log_every=1",
    "--train.tensorboard=false",
    "--checkpoint.enabled=false",
    "--eval.batches=1",  # held-out eval at the last step, on one batch (tests/eval/ tests more)
    "--eval.final=false",
]


def _train_worker(rank, world_size, overrides):
    from lhdist.config import load_config
    from lhdist.train.loop import train

    summary = train(load_config(overrides=overrides, world_size=world_size))
    assert summary["steps"] == load_config(overrides=overrides, world_size=world_size).train.steps


def read_steps(run_dir: Path) -> dict[int, dict]:
    """Step records of metrics.jsonl (the last one of each step, as a resumed run rewrites)."""
    records = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "event" not in record:
            records[record["step"]] = record
    return records


def read_events(run_dir: Path, name: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == name]


def run(tmp_path, name, world, extra, timeout_s=240):
    run_dir = tmp_path / name
    run_ranks(
        _train_worker,
        world,
        tmp_path,
        [*FAST, *extra, f"--train.run_dir={run_dir}"],
        timeout_s=timeout_s,
    )
    return run_dir


def test_train_dp2_deepspeed_zero1_loss_falls_and_stage_switch_logged(tmp_path):
    run_dir = run(
        tmp_path,
        "dp2",
        2,
        ["--train.steps=24", "--train.stage1_steps=16", "--optim.lr=3e-3", "--train.zero_stage=1"],
    )
    steps = read_steps(run_dir)
    assert sorted(steps) == list(range(1, 25))
    assert [steps[s]["stage"] for s in (1, 16, 17, 24)] == [1, 1, 2, 2]
    switch = read_events(run_dir, "stage_switch")
    assert [(e["step"], e["from_stage"], e["to_stage"]) for e in switch] == [(17, 1, 2)]
    assert steps[1]["tokens"] == 2 * 512  # dp=2 sequences of 512, counted once
    first = sum(steps[s]["loss"] for s in (1, 2, 3)) / 3
    last = sum(steps[s]["loss"] for s in (22, 23, 24)) / 3
    assert last < first - 1.0, (first, last)
    assert "lh_entries_per_level" in steps[1] and "lh_entries_per_level" not in steps[17]


def test_train_engines_and_zero_stages_agree_on_dp2(tmp_path):
    """Plain torch all-reduce and DeepSpeed ZeRO-2 take the same steps (fp32 on CPU)."""
    common = ["--train.steps=3", "--train.stage1_steps=2", "--train.grad_accum_steps=2"]
    torch_run = read_steps(run(tmp_path, "torch", 2, [*common, "--train.engine=torch"]))
    zero2 = read_steps(run(tmp_path, "zero2", 2, [*common, "--train.zero_stage=2"]))
    for step in (1, 2, 3):
        assert torch_run[step]["loss"] == pytest.approx(zero2[step]["loss"], rel=1e-5)
        assert torch_run[step]["grad_norm"] == pytest.approx(zero2[step]["grad_norm"], rel=1e-4)
    assert torch_run[1]["tokens"] == 2 * 2 * 512  # dp x accumulation x seq_len


def test_deepspeed_without_clipping_skips_the_norm_and_takes_the_torch_steps(tmp_path):
    """optim.grad_clip=0 under ZeRO-1 turns DeepSpeed's norm (and its per-step host read) off:
    grad_norm is logged as null, and the updates are still the torch engine's."""
    common = ["--train.steps=4", "--train.stage1_steps=2", "--optim.grad_clip=0"]
    torch_run = read_steps(run(tmp_path, "torch", 1, [*common, "--train.engine=torch"]))
    zero1 = read_steps(run(tmp_path, "zero1", 1, [*common, "--train.zero_stage=1"]))
    for step in (1, 2, 3, 4):
        assert torch_run[step]["loss"] == pytest.approx(zero1[step]["loss"], rel=1e-5)
        assert zero1[step]["grad_norm"] is None
        assert torch_run[step]["grad_norm"] > 0


def test_dense_every_trains_those_stage1_steps_as_the_dense_stage_does(tmp_path):
    """lighthouse.dense_every=2 with the switch after step 2 takes the same steps as switching
    after step 1 (Lighthouse, dense, dense), but step 2 stays stage 1 and no switch is logged
    before step 3; without it, step 2 is a Lighthouse step and its loss differs."""
    common = ["--train.steps=3", "--train.engine=torch"]
    every = run(tmp_path, "every2", 1, [*common, "--train.stage1_steps=2",
                                        "--lighthouse.dense_every=2"])  # fmt: skip
    early = read_steps(run(tmp_path, "switch1", 1, [*common, "--train.stage1_steps=1"]))
    plain = read_steps(run(tmp_path, "switch2", 1, [*common, "--train.stage1_steps=2"]))
    steps = read_steps(every)
    for step in (1, 2, 3):
        assert steps[step]["loss"] == pytest.approx(early[step]["loss"], rel=1e-6)
    assert steps[2]["loss"] != pytest.approx(plain[2]["loss"], rel=1e-6)
    assert [steps[s]["stage"] for s in (1, 2, 3)] == [1, 1, 2]
    assert steps[2].get("dense_step") is True and "lh_selected_len" not in steps[2]
    assert "dense_step" not in steps[1] and "lh_selected_len" in steps[1]
    assert [e["step"] for e in read_events(every, "stage_switch")] == [3]


@pytest.mark.parametrize(
    "layout, selection, seq_len, topk",
    [("zigzag", "tile", 1024, 512), ("contiguous", "global", 512, 128)],
    ids=["zigzag-tile-N1024-k512", "contiguous-global-N512-k128"],
)
def test_train_cp2_equals_one_rank(tmp_path, layout, selection, seq_len, topk):
    """cp=2 (DeepSpeed ZeRO-1) sees the same sequence as one rank (torch engine): the same losses
    up to float rounding."""
    common = [
        "--train.steps=3",
        "--train.stage1_steps=2",
        f"--lighthouse.topk={topk}",
        f"--lighthouse.selection={selection}",
        f"--train.seq_len={seq_len}",
        f"--parallel.layout={layout}",
    ]
    single = read_steps(run(tmp_path, "cp1", 1, [*common, "--train.engine=torch"]))
    cp2_args = [
        *common,
        "--parallel.cp_degree=2",
        "--train.engine=deepspeed",
        "--train.zero_stage=1",
    ]
    cp2 = read_steps(run(tmp_path, "cp2", 2, cp2_args))
    for step in (1, 2, 3):
        assert cp2[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4), step
        assert cp2[step]["tokens"] == single[step]["tokens"] == seq_len
    assert cp2[1]["lh_entries_per_rank"] == [cp2[1]["lh_selected_len"] // 2] * 2


def test_train_dp2_cp2_deepspeed_zero1(tmp_path):
    common = ["--train.steps=3", "--train.stage1_steps=2", "--lighthouse.selection=global"]
    dp2 = read_steps(run(tmp_path, "dp2", 2, common))
    dp2cp2 = read_steps(run(tmp_path, "dp2cp2", 4, [*common, "--parallel.cp_degree=2"]))
    for step in (1, 2, 3):
        assert dp2cp2[step]["loss"] == pytest.approx(dp2[step]["loss"], rel=1e-4), step
        assert dp2cp2[step]["tokens"] == 2 * 512
