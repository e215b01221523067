"""Held-out eval: the same batches every time, each token once under dp x cp, in the JSONL."""

import json

import pytest
import torch

from lhdist.eval.heldout import mean_loss, rank_share, read_heldout
from lhdist.train.data import prepare_dataset, validate_dataset
from lhdist.train.loss import IGNORE_INDEX
from tests.multiprocess import run_ranks
from tests.train.test_training import FAST, read_events

# lr so small that a step leaves the weights as they were: runs of different dp x cp layouts
# (which see different training batches) then hold the same model when they evaluate.
FROZEN = ["--optim.lr=1e-12", "--train.steps=2", "--train.stage1_steps=1", "--eval.every=1"]


def _train_worker(rank, world_size, overrides):
    from lhdist.config import load_config
    from lhdist.train.loop import train

    train(load_config(overrides=overrides, world_size=world_size))


def run(tmp_path, name, world, extra):
    run_dir = tmp_path / name
    overrides = [*FAST, *FROZEN, *extra, f"--train.run_dir={run_dir}"]
    run_ranks(_train_worker, world, tmp_path, overrides, timeout_s=240)
    return {e["step"]: e for e in read_events(run_dir, "eval")}


def test_val_loss_is_the_same_on_one_rank_cp2_and_dp2(tmp_path):
    """3 held-out batches: dp=2 splits them 2 + 1 (and a padding forward), cp=2 shards each;
    every layout reports the loss and token count of one process. Global selection, contiguous
    layout: the Lighthouse rules hold for cp=2 at 512 tokens."""
    common = ["--eval.batches=3", "--lighthouse.selection=global", "--parallel.layout=contiguous"]
    single = run(tmp_path, "one", 1, [*common, "--train.engine=torch"])
    cp2 = run(tmp_path, "cp2", 2, [*common, "--parallel.cp_degree=2", "--train.engine=torch"])
    dp2 = run(tmp_path, "dp2", 2, [*common, "--train.engine=deepspeed", "--train.zero_stage=3"])
    assert sorted(single) == [1, 2] and single[1]["stage"] == 1 and single[2]["stage"] == 2
    for step in (1, 2):
        for key in ("val_loss_dense", "val_loss_lighthouse"):
            assert cp2[step][key] == pytest.approx(single[step][key], rel=1e-5), (step, key)
            assert dp2[step][key] == pytest.approx(single[step][key], rel=1e-5), (step, key)
        assert single[step]["val_tokens"] == cp2[step]["val_tokens"] == dp2[step]["val_tokens"]
        assert single[step]["val_tokens"] == 3 * 512
    # The frozen weights give the same losses at both evals: the same batches were read.
    assert single[2]["val_loss_dense"] == pytest.approx(single[1]["val_loss_dense"], rel=1e-6)
    # Lighthouse is a different function of the same weights: its loss differs from dense.
    assert single[1]["val_loss_lighthouse"] != pytest.approx(single[1]["val_loss_dense"], rel=1e-4)


def test_eval_records_jsonl_and_causal_reselection(tmp_path):
    run_dir = tmp_path / "tb"
    overrides = [
        *FAST,
        "--train.steps=4",
        "--train.stage1_steps=2",
        "--eval.every=2",
        "--eval.batches=2",
        "--train.engine=torch",
        f"--train.run_dir={run_dir}",
    ]
    run_ranks(_train_worker, 1, tmp_path, overrides, timeout_s=120)
    evals = read_events(run_dir, "eval")
    assert [(e["step"], e["stage"]) for e in evals] == [(2, 1), (4, 2)]
    for e in evals:
        assert {
            "val_loss_dense",
            "val_loss_lighthouse",
            "val_loss_lighthouse_causal",
            "val_tokens",
            "eval_time_s",
        } <= set(e)
        assert all(0 < e[k] < 10 for k in ("val_loss_dense", "val_loss_lighthouse"))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_dense_run_reports_only_the_dense_val_loss(tmp_path):
    evals = run(tmp_path, "dense", 1, ["--lighthouse.enabled=false", "--train.engine=torch"])
    assert set(evals[2]) >= {"val_loss_dense", "val_tokens"}
    assert "val_loss_lighthouse" not in evals[2]


def test_rank_share_pads_short_ranks_with_ignored_labels():
    batches = [(torch.full((1, 4), i), torch.full((1, 4), i)) for i in range(3)]
    r0, r1 = rank_share(batches, 0, 2), rank_share(batches, 1, 2)
    assert [int(b[0][0, 0]) for b in r0] == [0, 2]
    assert int(r1[0][0][0, 0]) == 1 and len(r1) == 2
    assert (r1[1][1] == IGNORE_INDEX).all()  # the padding forward counts no token


def test_mean_loss_weights_every_token_once(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        labels_a = torch.tensor([[1, 2, IGNORE_INDEX]])
        labels_b = torch.tensor([[3, IGNORE_INDEX, IGNORE_INDEX]])
        sums = {id(labels_a): torch.tensor(3.0), id(labels_b): torch.tensor(5.0)}
        loss, tokens = mean_loss(
            lambda ids, labels: sums[id(labels)],
            [(None, labels_a), (None, labels_b)],
            None,
            torch.device("cpu"),
        )
    finally:
        dist.destroy_process_group()
    assert (loss, tokens) == (pytest.approx(8.0 / 3), 3)


def test_read_heldout_is_the_stored_order_and_refuses_a_short_set(tmp_path):
    text = tmp_path / "a.txt"
    text.write_bytes(bytes(range(32, 127)) * 40)
    info = prepare_dataset([text], tmp_path / "ds", seq_len=63, progress=False)
    first = read_heldout(info, 63, 2, 3)
    again = read_heldout(validate_dataset(tmp_path / "ds", seq_len=63), 63, 2, 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert torch.equal(first[0][0][0, :5], torch.tensor([32, 33, 34, 35, 36]))
    with pytest.raises(ValueError, match="fewer than eval.batches"):
        read_heldout(info, 63, 2, info.num_samples)
