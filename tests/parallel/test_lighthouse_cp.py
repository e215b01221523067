"""lighthouse_cp_attention on W gloo ranks equals the single-device op on the whole sequence."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lhdist.ops import LighthouseSpec, lighthouse_attention
from lhdist.parallel.collectives import CommStats
from lhdist.parallel.lighthouse_cp import lighthouse_cp_attention
from lhdist.parallel.sharding import shard_sequence
from tests.multiprocess import run_ranks

B, D = 2, 8
HEADS = {"mha": (2, 2), "gqa": (4, 2)}
# Several tiles per shard and several levels at W <= 4; one tile per chunk at W=8 zigzag.
SPECS = {
    "tile": (8192, LighthouseSpec(3, 2, 2048, "tile")),
    "global": (8192, LighthouseSpec(4, 2, 512, "global")),
}


def _inputs(N, heads, seed=0):
    H, G = HEADS[heads]
    gen = torch.Generator().manual_seed(seed)

    def rand(h):
        scale = 0.5 + torch.rand(B, N, h, 1, generator=gen)
        return torch.randn(B, N, h, D, generator=gen) * scale

    return rand(H), rand(G), rand(G), torch.randn(B, N, H, D, generator=gen)


def _check(rank, world, layout, selection, heads):
    N, spec = SPECS[selection]
    q, k, v, grad_out = _inputs(N, heads)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = lighthouse_attention(*full, spec)
    ref.backward(grad_out)
    refs = [ref.detach()] + [t.grad for t in full]

    def shard(t):
        return shard_sequence(t, rank, world, layout, dim=1)

    local = [shard(t).clone().requires_grad_() for t in (q, k, v)]
    with CommStats() as stats:
        out = lighthouse_cp_attention(*local, spec, group=dist.group.WORLD, layout=layout)
    out.backward(shard(grad_out))
    tag = f"W{world}-{layout}-{selection}-{heads} rank {rank}"
    for name, got, want in zip(("out", "dq", "dk", "dv"), [out] + [t.grad for t in local], refs):
        want = shard(want)
        err = (got - want).abs().max().item()
        bound = 1e-5 * want.abs().max().item()
        assert err <= bound, f"{tag} {name}: max error {err:.3g} > {bound:.3g}"
    return stats


def _worker_all_cases(rank, world, cases):
    for case in cases:
        stats = _check(rank, world, *case)
        N, spec = SPECS[case[1]]
        if world > 1 and case[1] == "global":
            _assert_score_traffic_is_compact(stats, world, case[0], case[2], N, spec)


def _assert_score_traffic_is_compact(stats, world, layout, heads, N, spec):
    H, G = HEADS[heads]
    L, p, k = spec.num_levels, spec.pooling_factor, spec.topk
    chunks_here = 2 if layout == "zigzag" else 1
    halo = chunks_here * B * (L - 1) * H * D * 4 * (world - 1)
    score = (
        stats.bytes_sent("reduce_scatter", "forward")
        + stats.bytes_sent("all_gather", "forward")
        - halo
    )
    # Per level a reduce-scatter + all-gather of (score_q, score_k) per candidate, fp32.
    bound = 2 * 2 * 4 * B * G * (N // spec.coarsest_window + (L - 1) * p * k) + 64 * world
    assert 0 < score <= bound, f"score traffic {score} B exceeds O(N/c_L + L*p*k) bound {bound}"
    dense_ring_kv = (world - 1) * 2 * B * (N // world) * G * D * 4
    assert score < dense_ring_kv / 4
    S = spec.selected_length(N)
    assert stats.bytes_sent("all_to_all", "forward") <= B * G * S * (H // G + 2) * D * 4


CASES = [(lay, sel, heads) for lay in ("zigzag", "contiguous") for sel in SPECS for heads in HEADS]


@pytest.mark.parametrize("world", [1, 2, 4], ids=lambda w: f"W{w}")
def test_lighthouse_cp_matches_single_device(world, tmp_path):
    run_ranks(_worker_all_cases, world, tmp_path, CASES, timeout_s=300)


def test_lighthouse_cp_matches_single_device_w8(tmp_path):
    cases = [("zigzag", "tile", "gqa"), ("zigzag", "global", "gqa")]
    run_ranks(_worker_all_cases, 8, tmp_path, cases, timeout_s=300)


def _worker_mismatch(rank, world):
    spec = LighthouseSpec(3, 2, 2048 if rank == 0 else 1024, "tile")
    q, k, v, _ = _inputs(8192 // world, "mha")
    try:
        lighthouse_cp_attention(q, k, v, spec, group=dist.group.WORLD, layout="zigzag")
    except ValueError as err:
        assert "topk=2048" in str(err) and "topk=1024" in str(err), err
    else:
        raise AssertionError("mismatched specs across ranks were accepted")


def _worker_indivisible(rank, world):
    # 4 tiles cannot sit on the 8 zigzag chunks of 4 ranks.
    spec = LighthouseSpec(3, 2, 512, "tile")
    q, k, v, _ = _inputs(8192 // world, "mha")
    try:
        lighthouse_cp_attention(q, k, v, spec, group=dist.group.WORLD, layout="zigzag")
    except ValueError as err:
        assert "4 tiles must be divisible by the 8 chunks" in str(err), err
    else:
        raise AssertionError("tiles across chunk boundaries were accepted")


@pytest.mark.parametrize(
    "worker", [_worker_mismatch, _worker_indivisible], ids=["mismatch", "tiles"]
)
def test_lighthouse_cp_bad_config_raises_on_every_rank(worker, tmp_path):
    run_ranks(worker, 4, tmp_path, timeout_s=120)
