"""allgather_attention equals causal SDPA on the full sequence: output and q/k/v gradients."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lhdist.parallel.allgather_attention import allgather_attention
from lhdist.parallel.sharding import shard_sequence
from tests.multiprocess import run_ranks

B, S, D = 2, 64, 8  # S: local length per rank


def _worker(rank, world):
    for layout in ("zigzag", "contiguous"):
        for H, G in ((4, 4), (4, 2)):
            gen = torch.Generator().manual_seed(H * 10 + G)
            N = S * world
            q, go = torch.randn(B, N, H, D, generator=gen), torch.randn(B, N, H, D, generator=gen)
            k, v = torch.randn(2, B, N, G, D, generator=gen)
            full = [t.clone().requires_grad_() for t in (q, k, v)]
            ref = torch.nn.functional.scaled_dot_product_attention(
                *(t.transpose(1, 2) for t in full), is_causal=True, enable_gqa=True
            ).transpose(1, 2)
            ref.backward(go)

            def shard(t, layout=layout):
                return shard_sequence(t, rank, world, layout, 1)

            local = [shard(t).clone().requires_grad_() for t in (q, k, v)]
            out = allgather_attention(*local, group=dist.group.WORLD, layout=layout)
            out.backward(shard(go))
            got = [out] + [t.grad for t in local]
            for name, a, b in zip(("out", "dq", "dk", "dv"), got, [ref] + [t.grad for t in full]):
                b = shard(b)
                err = (a - b).abs().max().item()
                assert err <= 1e-5 * b.abs().max().item(), (
                    f"W{world} {layout} H{H}G{G} {name}: {err}"
                )


@pytest.mark.parametrize("world", [2, 4], ids=lambda w: f"W{w}")
def test_allgather_attention_matches_full_sdpa(world, tmp_path):
    run_ranks(_worker, world, tmp_path, timeout_s=120)
