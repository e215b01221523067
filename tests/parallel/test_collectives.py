"""Collectives vs their single-process equivalents (values and gradients), ring exchange,
config agreement, gloo fallbacks and byte accounting."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lhdist.parallel import collectives
from lhdist.parallel.collectives import (
    CommStats,
    RingComm,
    all_gather,
    all_reduce_sum_,
    all_to_all,
    check_same_across_ranks,
    reduce_scatter,
)
from tests.multiprocess import run_ranks


def _rank_tensor(rank: int, shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed * 1000 + rank))


def _a2a_splits(world: int) -> list[list[int]]:
    """rows[p][q]: rows rank p sends to rank q (uneven, some zero)."""
    return [[(p + 2 * q) % 3 + (p == q) for q in range(world)] for p in range(world)]


def _check_against_single_process(rank, world, distributed_fn, reference_fn, shape, seed):
    """Each rank runs distributed_fn on its x and a per-rank loss; the reference runs every
    rank's x in one process with the summed loss. Values and gradients must agree."""
    xs = [_rank_tensor(r, shape, seed).requires_grad_() for r in range(world)]
    ys_ref = reference_fn(xs)
    ws = [
        torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 7 + r))
        for r, y in enumerate(ys_ref)
    ]
    sum((y * w).sum() for y, w in zip(ys_ref, ws, strict=True)).backward()

    x = xs[rank].detach().clone().requires_grad_()
    y = distributed_fn(x)
    torch.testing.assert_close(y, ys_ref[rank].detach(), atol=1e-6, rtol=1e-6)
    (y * ws[rank]).sum().backward()
    torch.testing.assert_close(x.grad, xs[rank].grad, atol=1e-6, rtol=1e-6)


def _check_collectives(rank: int, world: int, group) -> CommStats:
    with CommStats() as stats:
        for dim in (0, 1, -1):
            _check_against_single_process(
                rank,
                world,
                lambda x, d=dim: all_gather(x, d, group),
                lambda xs, d=dim: [torch.cat(xs, d)] * world,
                (2, 3, 4),
                seed=1 + dim,
            )
            _check_against_single_process(
                rank,
                world,
                lambda x, d=dim: reduce_scatter(x, d, group),
                lambda xs, d=dim: list(torch.stack(xs).sum(0).chunk(world, d)),
                (2 * world, world, 2 * world),
                seed=5 + dim,
            )
        rows = _a2a_splits(world)
        _check_against_single_process(
            rank,
            world,
            lambda x: all_to_all(x[: sum(rows[rank])], rows[rank], [r[rank] for r in rows], group),
            lambda xs: [
                torch.cat([xs[p][: sum(rows[p])].split(rows[p])[q] for p in range(world)])
                for q in range(world)
            ],
            (3 * world + 1, 5),
            seed=9,
        )
    return stats


def _check_ring_and_agreement(rank: int, world: int, group) -> None:
    # ring: two transfers in flight at once with distinct tags
    with CommStats() as ring_stats:
        comm = RingComm(group)
        a = comm.start(torch.full((3,), float(rank)), tag=0)
        b = comm.start(torch.full((2, 2), 10.0 + rank), tag=1)
        prev = (rank - 1) % world
        assert torch.equal(b.wait(), torch.full((2, 2), 10.0 + prev))
        assert torch.equal(a.wait(), torch.full((3,), float(prev)))
    assert ring_stats.as_dict() == {"ring/forward": 3 * 4 + 4 * 4}
    assert comm.rank == rank and comm.world_size == world

    # in-place sum over the ranks, counted as a ring all-reduce sends (2 * (W-1)/W of it)
    with CommStats() as stats:
        summed = all_reduce_sum_(torch.full((5,), float(rank + 1)), group)
    assert torch.equal(summed, torch.full((5,), world * (world + 1) / 2))
    assert stats.bytes_sent("all_reduce") == 2 * (world - 1) * -(-5 // world) * 4

    # config agreement: equal passes; a rank-dependent value raises on every rank
    check_same_across_ranks([1, 2, 3], group, "cfg")
    with pytest.raises(ValueError) as err:
        check_same_across_ranks(
            [7, 64 if rank == world - 1 else 32], group, "test config", names=["a", "seq"]
        )
    msg = str(err.value)
    assert "test config differs across the ranks" in msg
    assert "seq=32" in msg and "seq=64" in msg, msg


def _collectives_worker(rank: int, world: int) -> None:
    group = dist.group.WORLD
    stats = _check_collectives(rank, world, group)

    # bytes: all_gather sends x to W-1 ranks; reduce_scatter W-1 of its W blocks
    f32 = 4
    gather_bytes = 3 * (2 * 3 * 4 * f32 * (world - 1))
    scatter_bytes = 3 * (4 * world**3 * f32 * (world - 1) // world)
    assert stats.bytes_sent("all_gather", "forward") == gather_bytes
    assert stats.bytes_sent("reduce_scatter", "backward") == gather_bytes
    assert stats.bytes_sent("reduce_scatter", "forward") == scatter_bytes
    assert stats.bytes_sent("all_gather", "backward") == scatter_bytes
    rows = _a2a_splits(world)
    sent_rows = sum(rows[rank]) - rows[rank][rank]
    received_rows = sum(r[rank] for r in rows) - rows[rank][rank]
    assert stats.bytes_sent("all_to_all", "forward") == sent_rows * 5 * f32
    assert stats.bytes_sent("all_to_all", "backward") == received_rows * 5 * f32
    assert stats.num_calls("all_gather") == 6 and stats.num_calls("ring") == 0
    _check_ring_and_agreement(rank, world, group)

    # subgroups of 2 (ranks {0, 2} and {1, 3}): group ranks, not global ranks, address peers;
    # on 2 ranks the ring's next and previous rank coincide
    groups = {r: dist.new_group(list(r)) for r in ((0, 2), (1, 3))}
    members = (0, 2) if rank % 2 == 0 else (1, 3)
    sub, sub_rank = groups[members], members.index(rank)
    _check_collectives(sub_rank, 2, sub)
    _check_ring_and_agreement(sub_rank, 2, sub)
    assert all_gather(torch.tensor([float(rank)]), 0, sub).tolist() == [float(m) for m in members]

    # the gloo fallbacks give the same results
    saved = set(collectives._gloo_missing)
    collectives._gloo_missing.update({"all_gather", "reduce_scatter", "all_to_all"})
    try:
        _check_collectives(rank, world, group)
        _check_collectives(sub_rank, 2, sub)
    finally:
        collectives._gloo_missing.clear()
        collectives._gloo_missing.update(saved)


def test_collectives_match_single_process_W4_and_W2_subgroups(tmp_path):
    run_ranks(_collectives_worker, 4, tmp_path, timeout_s=90)


def test_comm_stats_records_only_inside_block():
    stats = CommStats()
    collectives.record_comm("ring", 100)
    with stats:
        collectives.record_comm("ring", 8)
        collectives.record_comm("all_to_all", 4, "backward")
    collectives.record_comm("ring", 100)
    assert stats.bytes_sent() == 12 and stats.bytes_sent("ring") == 8
    assert stats.bytes_sent(phase="backward") == 4 and stats.num_calls() == 2
    assert stats.as_dict() == {"all_to_all/backward": 4, "ring/forward": 8}
    with pytest.raises(ValueError, match="kind="):
        stats.record("broadcast", 1)
    stats.reset()
    assert stats.bytes_sent() == 0
