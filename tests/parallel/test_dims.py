"""ParallelDims: validation, mesh maths, the groups it builds; init_distributed."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lhdist.parallel.collectives import all_gather
from lhdist.parallel.dims import (
    ParallelDims,
    destroy_distributed,
    init_distributed,
)
from tests.multiprocess import run_ranks


def test_parallel_dims_rejects_mismatched_world_size():
    with pytest.raises(ValueError, match="2 \\* 3 = 6 must equal world_size=8"):
        ParallelDims(dp_degree=2, cp_degree=3, world_size=8)
    with pytest.raises(ValueError, match="cp_degree=0 must be a positive integer"):
        ParallelDims(dp_degree=2, cp_degree=0, world_size=0)


def test_parallel_dims_cp_ranks_are_consecutive():
    dims = ParallelDims(dp_degree=4, cp_degree=8, world_size=32, rank=19)
    assert dims.cp_group_ranks(2) == list(range(16, 24))
    assert (dims.dp_rank, dims.cp_rank) == (2, 3)
    assert [dims.dp_rank_of(r) for r in (0, 7, 8, 31)] == [0, 0, 1, 3]
    with pytest.raises(RuntimeError, match="build_groups"):
        _ = dims.cp_group


def _dims_worker(rank: int, world: int) -> None:
    for dp, cp in ((2, 2), (1, 4), (4, 1)):
        dims = ParallelDims(dp_degree=dp, cp_degree=cp, world_size=world).build_groups()
        assert (dims.dp_rank, dims.cp_rank) == (rank // cp, rank % cp)
        assert dist.get_world_size(dims.cp_group) == cp
        assert dist.get_rank(dims.cp_group) == dims.cp_rank
        members = all_gather(torch.tensor([rank]), 0, dims.cp_group).tolist()
        assert members == dims.cp_group_ranks(dims.dp_rank), (dp, cp, members)
        assert dist.get_world_size(dims.grad_group) == world

    with pytest.raises(ValueError, match="process group has 4 ranks"):
        ParallelDims(dp_degree=1, cp_degree=2, world_size=2).build_groups()

    # without torchrun's environment, init_distributed makes a 1-rank group (no ports)
    destroy_distributed()
    info = init_distributed(timeout_s=30)
    assert (info.rank, info.world_size, info.backend) == (0, 1, "gloo")
    assert init_distributed().world_size == 1  # already initialised: just reports
    destroy_distributed()
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_parallel_dims_builds_groups_W4(tmp_path):
    run_ranks(_dims_worker, 4, tmp_path, timeout_s=90)
