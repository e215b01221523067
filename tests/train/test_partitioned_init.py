"""ZeRO-3 builds the model under deepspeed.zero.Init: right after construction each of 2 gloo
ranks holds only its partition of every parameter, and the gathered weights equal a plain
build's (same seed, same init)."""

from tests.multiprocess import run_ranks

OVERRIDES = ["--model.num_layers=2", "--train.seq_len=64", "--lighthouse.enabled=false"]


def _partitioned_worker(rank, world_size):
    import os

    import torch

    from lhdist.config import load_config
    from lhdist.model import build_model
    from lhdist.parallel import ParallelDims
    from lhdist.train.engine import build_engine, build_optimizer
    from lhdist.train.partitioned_init import build_train_model

    os.environ.setdefault("LOCAL_RANK", str(rank))  # as the loop sets it, for DeepSpeed
    cfg = load_config(
        overrides=[*OVERRIDES, "--train.engine=deepspeed", "--train.zero_stage=3"],
        world_size=world_size,
    )
    dims = ParallelDims(world_size, 1, world_size).build_groups()
    device = torch.device("cpu")
    plain = build_model(cfg.model, seed=cfg.train.seed, device=device)
    model = build_train_model(cfg, dims, device)

    names = [name for name, _ in plain.named_parameters()]
    assert [name for name, _ in model.named_parameters()] == names
    total = sum(p.numel() for p in plain.parameters())
    held = 0
    for (name, p), whole in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert p.numel() == 0, f"{name}: {p.numel()} elements materialised on rank {rank}"
        assert p.ds_numel == whole.numel(), name
        share = -(-whole.numel() // world_size)  # DeepSpeed pads the last rank's share
        assert p.ds_tensor.numel() == share, (name, p.ds_tensor.numel(), share)
        held += p.ds_tensor.numel()
    assert held <= total // world_size + len(names), (held, total)

    import deepspeed

    for (name, p), whole in zip(model.named_parameters(), plain.parameters(), strict=True):
        with deepspeed.zero.GatheredParameters([p]):
            assert torch.equal(p.data, whole.data), f"{name} differs from the plain init"

    # Weight decay still goes to the matrices only (a partition is an empty 1-D tensor).
    sizes = [len(g["params"]) for g in build_optimizer(model, cfg).param_groups]
    matrices = sum(p.dim() >= 2 for p in plain.parameters())
    assert sizes == [matrices, len(names) - matrices], sizes

    # The partitioned model trains: one ZeRO-3 step gives the plain model's loss.
    engine = build_engine(model, cfg, dims)
    ids = torch.randint(0, cfg.model.vocab_size, (1, 64))  # same on both ranks: seeded build
    loss = engine(ids, torch.arange(64), labels=ids)
    with torch.no_grad():
        expected = plain(ids, torch.arange(64), labels=ids)
    assert torch.allclose(loss, expected, rtol=1e-5), (float(loss), float(expected))
    engine.backward(loss / (ids.numel() * world_size))
    assert engine.step() > 0


def test_zero3_model_is_partitioned_at_construction_with_the_plain_init(tmp_path):
    run_ranks(_partitioned_worker, 2, tmp_path, timeout_s=180)
