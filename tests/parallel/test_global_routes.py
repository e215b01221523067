"""route_entries, every rank's view of one global selection side by side (no processes): the
send and receive orders agree across ranks and every entry is sent once and attended once."""

from __future__ import annotations

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_select
from lhdist.parallel.global_routes import route_entries
from lhdist.parallel.sharding import local_chunk_ids, num_chunks


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_routes_send_each_entry_once_to_the_rank_that_attends_it(layout, world):
    B, G, N = 2, 3, 4096
    spec = LighthouseSpec(4, 2, 128, "global")
    gen = torch.Generator().manual_seed(world)
    q, k = torch.randn(B, N, G, 8, generator=gen), torch.randn(B, N, G, 8, generator=gen)
    idx = lighthouse_select(q, k, spec)
    S = idx.shape[-1]
    n = num_chunks(world, layout) // world
    S_loc = n * S // num_chunks(world, layout)
    routes = [route_entries(idx, spec, N, n, r, world, layout) for r in range(world)]

    counts = torch.stack([r.counts for r in routes])  # [rank, 2W]
    sent, received = counts[:, :world], counts[:, world:]
    assert torch.equal(sent, received.T)  # what r sends to p, p receives from r
    assert int(sent.sum()) == B * G * S  # every entry is owned by exactly one rank
    assert received.sum(1).tolist() == [B * G * S_loc] * world  # equal attended shares

    for r, route in enumerate(routes):
        rows = len(route.received_row)  # every share row from one received row: a permutation
        assert torch.equal(route.received_row.sort().values, torch.arange(rows))
        # The rows this rank sends are distinct rows of its own buffers.
        mine = int(sent[r].sum())
        fine = route.is_fine[:mine]
        for rows_, kind in ((route.fine_rows[:mine][fine], "fine"),
                            (route.coarse_rows[:mine][~fine], "coarse")):  # fmt: skip
            assert len(rows_.unique()) == len(rows_), f"rank {r}: repeated {kind} rows"
        token_rows = B * len(local_chunk_ids(r, world, layout)) * (N // num_chunks(world, layout))
        assert int(route.fine_rows.max()) < token_rows * G  # in this rank's token buffer
