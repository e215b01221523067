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
    "tile": (4096, LighthouseSpec(3, 2, 1024, "tile")),  # 8 tiles: 2 per chunk at W=2 zigzag
    "global": (4096, LighthouseSpec(4, 2, 256, "global")),
    "tile16": (8192, LighthouseSpec(3, 2, 2048, "tile")),  # 16 tiles: W=8 zigzag
}


def _inputs(N, heads, seed=0):
    H, G = HEADS[heads]
    gen = torch.Generator().manual_seed(seed)

    def rand(h):
        scale = 0.5 + torch.rand(B, N, h, 1, generator=gen)
        return torch.randn(B, N, h, D, generator=gen) * scale

    return rand(H), rand(G), rand(G), torch.randn(B, N, H, D, generator=gen)


def _reference(case):
    """Inputs and the single-device op's output and gradients (computed once, in the parent)."""
    _, selection, heads = case[:3]
    N, spec = SPECS[selection]
    q, k, v, grad_out = _inputs(N, heads)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    out = lighthouse_attention(*full, spec)
    out.backward(grad_out)
    return (q, k, v, grad_out), [out.detach()] + [t.grad for t in full]


def _check(rank, world, case, inputs, refs):
    layout, selection, heads = case[:3]
    attention = case[3] if len(case) > 3 else "ring"
    N, spec = SPECS[selection]

    def shard(t):
        return shard_sequence(t, rank, world, layout, dim=1)

    local = [shard(t).clone().requires_grad_() for t in inputs[:3]]
    with CommStats() as stats:
        out = lighthouse_cp_attention(
            *local, spec, group=dist.group.WORLD, layout=layout, attention=attention
        )
    out.backward(shard(inputs[3]))
    tag = f"W{world}-{layout}-{selection}-{heads}-{attention} rank {rank}"
    for name, got, want in zip(("out", "dq", "dk", "dv"), [out] + [t.grad for t in local], refs):
        want = shard(want)
        err = (got - want).abs().max().item()
        bound = 1e-5 * want.abs().max().item()
        assert err <= bound, f"{tag} {name}: max error {err:.3g} > {bound:.3g}"
    return stats


def _worker_all_cases(rank, world, cases, references):
    for case, (inputs, refs) in zip(cases, references):
        stats = _check(rank, world, case, inputs, refs)
        N, spec = SPECS[case[1]]
        if world > 1 and spec.selection == "global":
            attention = case[3] if len(case) > 3 else "ring"
            _assert_score_traffic_is_compact(stats, world, case[0], case[2], N, spec, attention)


def _assert_score_traffic_is_compact(stats, world, layout, heads, N, spec, attention):
    H, G = HEADS[heads]
    L, p, k = spec.num_levels, spec.pooling_factor, spec.topk
    S = spec.selected_length(N)
    chunks_here = 2 if layout == "zigzag" else 1
    halo = chunks_here * B * (L - 1) * H * D * 4 * (world - 1)
    # The all-gather attention moves the gathered sequence's k/v (O(S*G*D)); the rest is scores.
    kv = 2 * B * (S // world) * G * D * 4 * (world - 1) if attention == "allgather" else 0
    assert stats.bytes_sent("all_gather", "forward") == halo + kv  # spills (+ k/v), no scores
    score = stats.bytes_sent("all_reduce", "forward")
    # Per level one all-reduce of (score_q, score_k) per candidate, fp32: a ring all-reduce
    # sends 2 (W-1)/W of it per rank.
    bound = 2 * 2 * 4 * B * G * (N // spec.coarsest_window + (L - 1) * p * k) + 64 * world
    assert 0 < score <= bound, f"score traffic {score} B exceeds O(N/c_L + L*p*k) bound {bound}"
    dense_ring_kv = (world - 1) * 2 * B * (N // world) * G * D * 4
    assert score < dense_ring_kv / 4
    assert stats.bytes_sent("all_to_all", "forward") <= B * G * S * (H // G + 2) * D * 4


CASES = [
    (lay, sel, heads)
    for lay in ("zigzag", "contiguous")
    for sel in ("tile", "global")
    for heads in HEADS
]


def test_lighthouse_cp_allgather_variant_matches_single_device(tmp_path):
    cases = [("zigzag", "tile", "gqa", "allgather"), ("contiguous", "global", "mha", "allgather")]
    run_ranks(_worker_all_cases, 2, tmp_path, cases, [_reference(c) for c in cases],
              timeout_s=300)  # fmt: skip


@pytest.mark.parametrize("world", [1, 2, 4], ids=lambda w: f"W{w}")
def test_lighthouse_cp_matches_single_device(world, tmp_path):
    run_ranks(
        _worker_all_cases, world, tmp_path, CASES, [_reference(c) for c in CASES], timeout_s=300
    )


def test_lighthouse_cp_matches_single_device_w8(tmp_path):
    cases = [("zigzag", "tile16", "gqa"), ("zigzag", "global", "gqa")]
    run_ranks(_worker_all_cases, 8, tmp_path, cases, [_reference(c) for c in cases], timeout_s=300)


def _worker_bad_configs(rank, world):
    q, k, v, _ = _inputs(8192 // world, "mha")
    # Ranks disagree on topk: every rank names both values instead of hanging.
    spec = LighthouseSpec(3, 2, 2048 if rank == 0 else 1024, "tile")
    try:
        lighthouse_cp_attention(q, k, v, spec, group=dist.group.WORLD, layout="zigzag")
    except ValueError as err:
        assert "topk=2048" in str(err) and "topk=1024" in str(err), err
    else:
        raise AssertionError("mismatched specs across ranks were accepted")
    # 4 tiles cannot sit on the 8 zigzag chunks of 4 ranks.
    try:
        lighthouse_cp_attention(q, k, v, LighthouseSpec(3, 2, 512), group=dist.group.WORLD)
    except ValueError as err:
        assert "4 tiles must be divisible by the 8 chunks" in str(err), err
    else:
        raise AssertionError("tiles across chunk boundaries were accepted")
    # A local length the layout cannot split.
    try:
        lighthouse_cp_attention(
            q[:, :-1], k[:, :-1], v[:, :-1], LighthouseSpec(3, 2, 1024), group=dist.group.WORLD
        )
    except ValueError as err:
        assert "must split into 2 chunks" in str(err), err
    else:
        raise AssertionError("an odd local length was accepted for zigzag")


def test_lighthouse_cp_bad_config_raises_on_every_rank(tmp_path):
    run_ranks(_worker_bad_configs, 4, tmp_path, timeout_s=120)
