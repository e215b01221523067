"""ring_attention vs SDPA on the full sequence: forward and q/k/v gradients, both layouts, MHA
and GQA, causal and not; bad inputs raise on every rank; the ring's traffic is counted."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lhdist.parallel.collectives import CommStats
from lhdist.parallel.ring_attention import _plan_blocks, ring_attention
from lhdist.parallel.sharding import shard_sequence
from tests.multiprocess import run_ranks

B, S, D = 2, 64, 16  # S: local length per rank
HEADS = {"mha": (4, 4), "gqa": (4, 2)}  # name: (H, G)
ALL_CASES = [
    (layout, heads, causal)
    for layout in ("zigzag", "contiguous")
    for heads in HEADS
    for causal in (True, False)
]


def _full_inputs(world: int, heads: str, seed: int = 0):
    H, G = HEADS[heads]
    g = torch.Generator().manual_seed(seed)
    n = S * world
    q = torch.randn(B, n, H, D, generator=g)
    k = torch.randn(B, n, G, D, generator=g)
    v = torch.randn(B, n, G, D, generator=g)
    grad_out = torch.randn(B, n, H, D, generator=g)
    return q, k, v, grad_out


def _reference(q, k, v, grad_out, causal):
    """SDPA on the whole sequence, in [B, N, heads, D], with q/k/v gradients."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=causal,
        enable_gqa=True,
    ).transpose(1, 2)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def _assert_close_rel(got, ref, what):
    err = (got - ref).abs().max().item()
    bound = 1e-5 * ref.abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > 1e-5 * max|ref| = {bound:.3g}"


def _check_case(rank, world, group, layout, heads, causal):
    q, k, v, grad_out = _full_inputs(world, heads)
    refs = _reference(q, k, v, grad_out, causal)

    def shard(t):
        return shard_sequence(t, rank, world, layout, dim=1)

    q_l, k_l, v_l = (shard(t).clone().requires_grad_() for t in (q, k, v))
    out_l = ring_attention(q_l, k_l, v_l, group=group, layout=layout, causal=causal)
    out_l.backward(shard(grad_out))
    tag = f"W{world}-{layout}-{heads}-{'causal' if causal else 'full'}"
    for name, got, ref in zip(
        ("out", "dq", "dk", "dv"), (out_l, q_l.grad, k_l.grad, v_l.grad), refs, strict=True
    ):
        assert got.shape == shard(ref).shape, (tag, name)
        _assert_close_rel(got.detach(), shard(ref), f"{tag} rank {rank} {name}")


def _ring_worker(rank: int, world: int, cases, extra_checks=()) -> None:
    # One spawned job checks many cases: starting ranks costs more than the checks.
    for case in cases:
        _check_case(rank, world, dist.group.WORLD, *case)
    for check in extra_checks:
        globals()[check](rank, world)


def test_ring_attention_W1_matches_full_sdpa(tmp_path):
    run_ranks(_ring_worker, 1, tmp_path, ALL_CASES, timeout_s=60)


def test_ring_attention_W2_matches_full_sdpa_and_rejects_bad_inputs_on_every_rank(tmp_path):
    run_ranks(_ring_worker, 2, tmp_path, ALL_CASES, ["_check_bad_inputs"], timeout_s=90)


def test_ring_attention_W4_matches_full_sdpa_and_counts_ring_bytes(tmp_path):
    run_ranks(_ring_worker, 4, tmp_path, ALL_CASES, ["_check_comm_stats"], timeout_s=120)


def test_ring_attention_W8_matches_full_sdpa(tmp_path):
    cases = [("zigzag", "gqa", True), ("contiguous", "mha", True)]
    run_ranks(_ring_worker, 8, tmp_path, cases, timeout_s=180)


def _check_comm_stats(rank: int, world: int) -> None:
    H, G = HEADS["gqa"]
    q = torch.randn(B, S, H, D, requires_grad=True)
    k = torch.randn(B, S, G, D, requires_grad=True)
    v = torch.randn(B, S, G, D, requires_grad=True)
    with CommStats() as stats:
        out = ring_attention(q, k, v, group=None, layout="zigzag")
    out.sum().backward()  # after the block: still booked in `stats`
    kv_bytes = 2 * B * S * G * D * 4  # k and v travel together, G heads (not H)
    assert stats.bytes_sent("ring", "forward") == (world - 1) * kv_bytes
    assert stats.num_calls("ring", "forward") == world - 1
    # backward: k/v again, plus the dk/dv accumulators: W-1 hops each (fp32 here)
    assert stats.bytes_sent("ring", "backward") == 2 * (world - 1) * kv_bytes
    assert stats.num_calls("check") == 1
    with CommStats() as again:
        ring_attention(q, k, v, group=None, layout="zigzag")
    assert again.num_calls("check") == 0  # this configuration already agreed


def _check_bad_inputs(rank: int, world: int) -> None:
    H, G = HEADS["gqa"]

    def qkv(s, heads=(H, G)):
        return (
            torch.randn(B, s, heads[0], D),
            torch.randn(B, s, heads[1], D),
            torch.randn(B, s, heads[1], D),
        )

    with pytest.raises(ValueError, match="local length S=33 must be even"):
        ring_attention(*qkv(33), group=None, layout="zigzag")
    with pytest.raises(ValueError, match="H=4 must be a multiple of kv heads G=3"):
        ring_attention(*qkv(32, (4, 3)), group=None)
    with pytest.raises(ValueError, match="layout='stripe' must be one of"):
        ring_attention(*qkv(32), group=None, layout="stripe")
    with pytest.raises(ValueError, match="impl='triton' must be one of"):
        ring_attention(*qkv(32), group=None, impl="triton")
    # a rank with a different local length: every rank raises, naming both values
    with pytest.raises(ValueError) as err:
        ring_attention(*qkv(32 if rank else 48), group=None)
    assert "q.shape[1]=48" in str(err.value) and "q.shape[1]=32" in str(err.value)
    with pytest.raises(RuntimeError, match="not importable"):
        ring_attention(*qkv(32), group=None, impl="ring_flash_attn")
    # after all that, a good call still works on every rank
    out = ring_attention(*qkv(32), group=None)
    assert out.shape == (B, 32, H, D)


def test_plan_blocks_balances_zigzag_work():
    world = 4
    chunks = [(r, 2 * world - 1 - r) for r in range(world)]
    for rank in range(world):
        work = []
        for step in range(world):
            src = (rank - step) % world
            blocks = _plan_blocks(chunks[rank], chunks[src], True)
            work.append(sum((b.q_hi - b.q_lo) * (b.kv_hi - b.kv_lo) for b in blocks))
            if step == 0:
                assert blocks == (_plan_blocks(chunks[rank], chunks[rank], True)[0],)
                assert blocks[0].causal
            else:
                assert len(blocks) == 1 and not blocks[0].causal
        # one causal pair of chunks at step 0 (counted 4 = 2x2), then 2 chunk pairs per step
        assert work == [4, 2, 2, 2], (rank, work)
