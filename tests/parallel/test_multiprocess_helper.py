"""tests/multiprocess.py: a failing rank fails the test fast, with its traceback; hangs time out."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist

from tests.multiprocess import run_ranks


def _one_rank_raises(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank one is unhappy")
    dist.barrier()  # rank 0 would wait here forever: the helper must kill it


def _sleeps(rank: int, world: int) -> None:
    time.sleep(120)


def test_run_ranks_reports_child_traceback_and_kills_the_rest(tmp_path):
    start = time.monotonic()
    with pytest.raises(AssertionError) as err:
        run_ranks(_one_rank_raises, 2, tmp_path, timeout_s=60)
    message = str(err.value)
    assert "rank 1 raised" in message and "ValueError: rank one is unhappy" in message
    assert "_one_rank_raises" in message
    assert time.monotonic() - start < 40  # not the 60 s timeout


def test_run_ranks_times_out_and_kills_hung_ranks(tmp_path):
    with pytest.raises(AssertionError, match="timed out after 5s; ranks still running"):
        run_ranks(_sleeps, 1, tmp_path, timeout_s=5)
