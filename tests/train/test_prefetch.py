"""BatchPrefetcher: exactly the loader's batches and positions, read ahead by a thread."""

from __future__ import annotations

import pytest
import torch

from lhdist.parallel import shard_sequence
from lhdist.train.data import build_dataloader
from lhdist.train.prefetch import BatchPrefetcher

SEQ = 512


def loader(seed: int = 0, dp_rank: int = 0):
    return build_dataloader(None, seq_len=SEQ, micro_batch_size=2, dp_rank=dp_rank, dp_degree=2,
                            seed=seed, progress=False)  # fmt: skip


def second_cp_shard(batch):
    return tuple(shard_sequence(x, 1, 2, "zigzag", dim=1) for x in batch)


@pytest.mark.parametrize("depth", [0, 1, 3], ids=lambda d: f"depth{d}")
def test_prefetcher_gives_the_loaders_batches_and_positions(depth):
    plain, ahead = loader(), loader()
    prefetcher = BatchPrefetcher(ahead, second_cp_shard, torch.device("cpu"), depth)
    assert prefetcher.state_dict() == plain.state_dict()
    # More batches than one epoch holds: the epoch wrap happens inside the reading thread.
    for _ in range(plain.batches_per_epoch + 3):
        expected = second_cp_shard(next(plain))
        got = next(prefetcher)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        # The position is the loader's after the batches handed out, not the ones read ahead.
        assert prefetcher.state_dict() == plain.state_dict()
    prefetcher.close()
    assert prefetcher.thread is None or not prefetcher.thread.is_alive()


def test_prefetcher_state_resumes_where_training_stopped():
    prefetcher = BatchPrefetcher(loader(seed=3), second_cp_shard, torch.device("cpu"), 2)
    for _ in range(5):
        next(prefetcher)
    state = prefetcher.state_dict()
    following = next(prefetcher)
    prefetcher.close()
    resumed = loader(seed=3)
    resumed.load_state_dict(state)
    again = BatchPrefetcher(resumed, second_cp_shard, torch.device("cpu"), 2)
    assert all(torch.equal(a, b) for a, b in zip(next(again), following, strict=True))
    again.close()


def test_prefetcher_raises_the_readers_error_in_the_caller():
    calls = []

    def failing(batch):
        calls.append(None)
        if len(calls) == 2:
            raise ValueError("sample 7 has shape (3,)")
        return batch

    prefetcher = BatchPrefetcher(loader(), failing, torch.device("cpu"), 2)
    next(prefetcher)
    with pytest.raises(ValueError, match="sample 7"):
        next(prefetcher)
    assert not prefetcher.thread.is_alive()
