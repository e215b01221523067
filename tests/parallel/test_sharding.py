"""shard_sequence / shard_positions / unshard_sequence: layouts, round trips, errors."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lhdist.parallel.sharding import (
    local_chunk_ids,
    shard_positions,
    shard_sequence,
    unshard_sequence,
)
from tests.multiprocess import run_ranks

LAYOUT_CASES = [
    pytest.param(w, layout, id=f"W{w}-{layout}")
    for w in (1, 2, 4, 8)
    for layout in ("contiguous", "zigzag")
]


@pytest.mark.parametrize("world,layout", LAYOUT_CASES)
def test_shard_sequence_round_trip(world, layout):
    n = 16 * world
    x = torch.arange(2 * n * 3).reshape(2, n, 3)
    chunk = n // (world if layout == "contiguous" else 2 * world)
    pieces = {}
    for rank in range(world):
        local = shard_sequence(x, rank, world, layout, dim=1)
        assert local.shape == (2, n // world, 3)
        positions = shard_positions(n, rank, world, layout)
        assert torch.equal(local, x[:, positions])  # positions name the local tokens
        assert torch.all(positions[1:] > positions[:-1])  # local order is position order
        for i, c in enumerate(local_chunk_ids(rank, world, layout)):
            pieces[c] = local[:, i * chunk : (i + 1) * chunk]
    assert torch.equal(torch.cat([pieces[c] for c in sorted(pieces)], dim=1), x)


def test_shard_sequence_zigzag_chunks():
    assert [local_chunk_ids(r, 4, "zigzag") for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert shard_positions(16, 1, 4, "zigzag").tolist() == [2, 3, 12, 13]
    assert shard_positions(16, 1, 4, "contiguous").tolist() == [4, 5, 6, 7]
    x = torch.arange(8)
    assert shard_sequence(x, 0, 2, "zigzag", dim=0).tolist() == [0, 1, 6, 7]


@pytest.mark.parametrize(
    "seq_len,world,layout,message",
    [
        (10, 4, "contiguous", "seq_len=10 must be divisible by world_size=4 for the contiguous"),
        (12, 4, "zigzag", "seq_len=12 must be divisible by 2\\*world_size=8 for the zigzag"),
    ],
    ids=["N10-W4-contiguous", "N12-W4-zigzag"],
)
def test_shard_sequence_rejects_indivisible_lengths(seq_len, world, layout, message):
    with pytest.raises(ValueError, match=message):
        shard_sequence(torch.zeros(1, seq_len), 0, world, layout)
    with pytest.raises(ValueError, match=message):
        shard_positions(seq_len, 0, world, layout)


def test_shard_sequence_rejects_unknown_layout_and_rank():
    with pytest.raises(ValueError, match="layout='ring' must be one of"):
        shard_sequence(torch.zeros(1, 8), 0, 2, "ring")
    with pytest.raises(ValueError, match="rank=2 must be in"):
        shard_sequence(torch.zeros(1, 8), 2, 2, "zigzag")


def _unshard_worker(rank: int, world: int) -> None:
    singles = {r: dist.new_group([r]) for r in range(world)}
    pairs = {p: dist.new_group(list(p)) for p in ((0, 1), (2, 3))}
    pair = (0, 1) if rank < 2 else (2, 3)
    for group, members in (
        (dist.group.WORLD, tuple(range(world))),
        (pairs[pair], pair),
        (singles[rank], (rank,)),
    ):
        w, r = len(members), members.index(rank)
        for layout in ("contiguous", "zigzag"):
            for dim in (1, 0):
                x = torch.randn(8 * w, 8 * w, 3, generator=torch.Generator().manual_seed(1))
                weights = [
                    torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + p))
                    for p in range(w)
                ]
                local = shard_sequence(x, r, w, layout, dim).clone().requires_grad_()
                full = unshard_sequence(local, group, layout, dim)
                assert torch.equal(full, x), (layout, dim, w)
                (full * weights[r]).sum().backward()
                # every rank's loss reads our tokens: their weights, summed, sharded
                expected = shard_sequence(sum(weights), r, w, layout, dim)
                torch.testing.assert_close(local.grad, expected)


def test_unshard_sequence_round_trip_and_grad_W4_W2_W1(tmp_path):
    run_ranks(_unshard_worker, 4, tmp_path, timeout_s=90)
