"""Ring attention: exact (causal) attention over a sequence sharded across a CP group.

Legend: B batch, N global sequence, S local length (N / W), H query heads, G kv heads,
D head dim, W CP group size, C chunk length (S / chunks per rank).

Forward, W steps: at step s rank r holds the k/v of rank r - s. It posts the send of that block
to rank r + 1 (and the receive of the next one) first, computes its queries against the block
with `attention_with_lse`, merges into fp32 accumulators through the log-sum-exp, then waits for
the transfer. Backward is a second ring: k/v travel the same way; each rank keeps its own
block's dk/dv share at home, and the accumulator of the other ranks' shares starts at the
first rank after the owner and travels with the k/v, each rank adding its share, so after W-1
hops it arrives home. Its first hop holds one block's share, exact in the input dtype (half the
bytes of fp32); later hops carry fp32 sums.

Which (query chunk, key chunk) pairs are computed is decided per chunk: a key chunk earlier
than the query chunk is a full block, the same chunk a causal (diagonal) block, a later one
skipped. With the zigzag layout this gives every rank the same work at every step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lhdist.ops.attention_block import attention_block_backward, attention_with_lse, lse_dtype
from lhdist.parallel import ring_flash_adapter
from lhdist.parallel.collectives import RingComm, check_same_across_ranks
from lhdist.parallel.sharding import LAYOUTS, check_layout, local_chunk_ids

IMPLS = ("auto", "lhdist", "ring_flash_attn")
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_KV_TAG, _DKV_TAG = 0, 1  # the backward has a k/v and a dk/dv transfer in flight at once


@dataclass(frozen=True)
class _Block:
    """Local query rows [q_lo, q_hi) x received key rows [kv_lo, kv_hi), in chunk units."""

    q_lo: int
    q_hi: int
    kv_lo: int
    kv_hi: int
    causal: bool


@functools.lru_cache(maxsize=256)
def _plan_blocks(
    q_chunks: tuple[int, ...], kv_chunks: tuple[int, ...], causal: bool
) -> tuple[_Block, ...]:
    """The kernel calls for local query chunks `q_chunks` against key chunks `kv_chunks`
    (global chunk ids, ascending in local order)."""
    if not causal:
        return (_Block(0, len(q_chunks), 0, len(kv_chunks), False),)
    if q_chunks == kv_chunks:
        # Own block: local order is position order, so one causal call covers every pair.
        return (_Block(0, len(q_chunks), 0, len(kv_chunks), True),)
    assert not set(q_chunks) & set(kv_chunks), "another rank's chunks overlap ours"
    blocks: list[_Block] = []
    for i, q_chunk in enumerate(q_chunks):
        visible = [j for j, kv_chunk in enumerate(kv_chunks) if kv_chunk < q_chunk]
        if not visible:
            continue
        lo, hi = visible[0], visible[-1] + 1
        assert visible == list(range(lo, hi)), "ascending chunks: visible ones are a prefix"
        last = blocks[-1] if blocks else None
        if last is not None and last.q_hi == i and (last.kv_lo, last.kv_hi) == (lo, hi):
            blocks[-1] = _Block(last.q_lo, i + 1, lo, hi, False)  # same keys: one bigger call
        else:
            blocks.append(_Block(i, i + 1, lo, hi, False))
    return tuple(blocks)


@functools.lru_cache(maxsize=256)
def _one_block_per_rank(world: int, layout: str, causal: bool) -> bool:
    """Whether every rank computes at most one block against the k/v it holds at step 1."""
    return all(
        len(_plan_blocks(local_chunk_ids(r, world, layout),
                         local_chunk_ids((r - 1) % world, world, layout), causal)) <= 1
        for r in range(world)
    )  # fmt: skip


def _merge_block(
    out_acc: Tensor, lse_acc: Tensor, rows: slice, out_blk: Tensor, lse_blk: Tensor
) -> None:
    """out_acc, lse_acc [B, H, S, (D)] (fp32) <- softmax-merge of the block's rows, in place."""
    lse_old = lse_acc[:, :, rows]
    lse_new = torch.logaddexp(lse_old, lse_blk)
    # exp(-inf - finite) = 0 handles rows that had no keys before this block.
    keep = torch.exp(lse_old - lse_new).unsqueeze(-1)
    take = torch.exp(lse_blk - lse_new).unsqueeze(-1)
    out_acc[:, :, rows] = out_acc[:, :, rows] * keep + out_blk.to(out_acc.dtype) * take
    lse_acc[:, :, rows] = lse_new


class _RingAttention(torch.autograd.Function):
    """Our ring over `group`; see the module docstring. Inputs and output are [B, heads, S, D]."""

    @staticmethod
    def forward(
        ctx,
        q_BHSD: Tensor,
        k_BGSD: Tensor,
        v_BGSD: Tensor,
        group,
        layout: str,
        causal: bool,
        scale: float,
    ) -> Tensor:
        comm = RingComm(group, phase="forward")
        rank, world = comm.rank, comm.world_size
        my_chunks = local_chunk_ids(rank, world, layout)
        chunk_len = q_BHSD.shape[2] // len(my_chunks)
        kv_2BGSD = torch.stack([k_BGSD, v_BGSD])
        acc = lse_dtype(q_BHSD.dtype)
        out_acc = lse_acc = None

        for step in range(world):
            transfer = comm.start(kv_2BGSD, _KV_TAG) if step + 1 < world else None
            src_chunks = local_chunk_ids((rank - step) % world, world, layout)
            for blk in _plan_blocks(my_chunks, src_chunks, causal):
                rows = slice(blk.q_lo * chunk_len, blk.q_hi * chunk_len)
                cols = slice(blk.kv_lo * chunk_len, blk.kv_hi * chunk_len)
                out_blk, lse_blk = attention_with_lse(
                    q_BHSD[:, :, rows],
                    kv_2BGSD[0, :, :, cols],
                    kv_2BGSD[1, :, :, cols],
                    blk.causal,
                    scale,
                )
                if out_acc is None:  # step 0, the own block: it covers every query row
                    assert rows == slice(0, q_BHSD.shape[2]), "the first block covers all rows"
                    out_acc, lse_acc = out_blk.to(acc), lse_blk.to(acc)
                else:
                    _merge_block(out_acc, lse_acc, rows, out_blk, lse_blk)
            if transfer is not None:
                kv_2BGSD = transfer.wait()

        out_BHSD = out_acc.to(q_BHSD.dtype)
        ctx.save_for_backward(q_BHSD, k_BGSD, v_BGSD, out_BHSD, lse_acc)
        ctx.group, ctx.layout, ctx.causal, ctx.scale = group, layout, causal, scale
        ctx.stats = comm.stats
        return out_BHSD

    @staticmethod
    def backward(ctx, do_BHSD: Tensor):
        q_BHSD, k_BGSD, v_BGSD, out_BHSD, lse_BHS = ctx.saved_tensors
        comm = RingComm(ctx.group, phase="backward", stats=ctx.stats)
        rank, world = comm.rank, comm.world_size
        my_chunks = local_chunk_ids(rank, world, ctx.layout)
        chunk_len = q_BHSD.shape[2] // len(my_chunks)
        kv_2BGSD = torch.stack([k_BGSD, v_BGSD])
        acc = lse_BHS.dtype
        # A travelling dk/dv accumulator holding one block's share is exact in the input dtype
        # (half the bytes of fp32); every rank must agree on the dtype of each hop.
        single_share = _one_block_per_rank(world, ctx.layout, ctx.causal)
        first_hop_dtype = q_BHSD.dtype if single_share else acc
        dq_BHSD = own_dkv = travelling = None

        for step in range(world):
            kv_transfer = comm.start(kv_2BGSD, _KV_TAG) if step + 1 < world else None
            src_chunks = local_chunk_ids((rank - step) % world, world, ctx.layout)
            share_dtype = acc if step != 1 else first_hop_dtype
            dkv_2BGSD = kv_2BGSD.new_zeros(kv_2BGSD.shape, dtype=share_dtype)
            for blk in _plan_blocks(my_chunks, src_chunks, ctx.causal):
                rows = slice(blk.q_lo * chunk_len, blk.q_hi * chunk_len)
                cols = slice(blk.kv_lo * chunk_len, blk.kv_hi * chunk_len)
                dq, dk, dv = attention_block_backward(
                    do_BHSD[:, :, rows],
                    q_BHSD[:, :, rows],
                    kv_2BGSD[0, :, :, cols],
                    kv_2BGSD[1, :, :, cols],
                    out_BHSD[:, :, rows],
                    lse_BHS[:, :, rows],
                    blk.causal,
                    ctx.scale,
                )
                if dq_BHSD is None:  # step 0, the own block: it covers every query row
                    dq_BHSD = dq.to(acc)
                else:
                    dq_BHSD[:, :, rows] += dq
                dkv_2BGSD[0, :, :, cols] += dk
                dkv_2BGSD[1, :, :, cols] += dv
            if step == 0:
                own_dkv = dkv_2BGSD  # stays here; the other ranks' shares come home at the end
            else:
                # The accumulator of the block of rank - step starts at the first rank after
                # its owner (step 1) and travels on; after step W-1 the next rank is the owner.
                if step > 1:
                    dkv_2BGSD = travelling.wait().to(acc) + dkv_2BGSD
                travelling = comm.start(dkv_2BGSD, _DKV_TAG)
            if kv_transfer is not None:
                kv_2BGSD = kv_transfer.wait()

        if travelling is not None:  # the last hop brings the others' shares of our block home
            own_dkv += travelling.wait()
        dkv_2BGSD = own_dkv
        dq = dq_BHSD.to(q_BHSD.dtype)
        dk, dv = dkv_2BGSD[0].to(k_BGSD.dtype), dkv_2BGSD[1].to(v_BGSD.dtype)
        return dq, dk, dv, None, None, None, None


_SHAPE_NAMES = {t: [f"{t}.ndim", *(f"{t}.shape[{i}]" for i in range(4))] for t in "qkv"}


def _shape_code(x: Tensor) -> list[int]:
    """ndim and the first four sizes, padded: a fixed-length code for the cross-rank check."""
    return [x.dim(), *x.shape[:4], *([-1] * (4 - min(x.dim(), 4)))]


def _check_inputs(q_BSHD: Tensor, k_BSGD: Tensor, v_BSGD: Tensor, layout: str) -> None:
    check_layout(layout)
    if q_BSHD.dim() != 4 or k_BSGD.shape != v_BSGD.shape or k_BSGD.dim() != 4:
        raise ValueError(
            f"ring_attention wants q [B, S, H, D] and k, v [B, S, G, D]; got "
            f"{tuple(q_BSHD.shape)}, {tuple(k_BSGD.shape)}, {tuple(v_BSGD.shape)}"
        )
    B, S, H, D = q_BSHD.shape
    if (k_BSGD.shape[0], k_BSGD.shape[1], k_BSGD.shape[3]) != (B, S, D):
        raise ValueError(f"k/v {tuple(k_BSGD.shape)} must match q {tuple(q_BSHD.shape)} in B, S, D")
    if H % k_BSGD.shape[2]:
        raise ValueError(f"query heads H={H} must be a multiple of kv heads G={k_BSGD.shape[2]}")
    if layout == "zigzag" and S % 2:
        raise ValueError(
            f"the zigzag layout holds 2 equal chunks per rank: local length S={S} must be even "
            f"(global N = S*W must be divisible by 2*W)"
        )
    if S == 0:
        raise ValueError("ring_attention got an empty local sequence (S=0)")


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    group: dist.ProcessGroup | None,
    layout: str = "zigzag",
    causal: bool = True,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Exact attention of this rank's queries over the whole sharded sequence.

    q [B, S, H, D], k/v [B, S, G, D]: this rank's shard (`shard_sequence` with `layout`) of the
    global [B, N = S*W, ...] tensors. Returns out [B, S, H, D]: this rank's shard of
    SDPA(q, k, v, is_causal=causal, scale) on the full sequence (GQA: query head h reads kv head
    h // (H/G)). Differentiable in q, k, v; the backward is a second ring.
    impl: "lhdist" (our ring), "ring_flash_attn" (ring-flash-attn, CUDA bf16/fp16, if
    installed), "auto" (ring-flash-attn where it applies, else ours).
    Every rank of `group` must call it with the same shapes and arguments; a mismatch raises
    ValueError on every rank (checked once per distinct configuration).
    """
    return _ring(q, k, v, group, layout, causal, scale, impl, heads_first=False)


def ring_attention_heads_first(
    q_BHSD: Tensor,
    k_BGSD: Tensor,
    v_BGSD: Tensor,
    group: dist.ProcessGroup | None,
    layout: str = "zigzag",
    causal: bool = True,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """`ring_attention` on [B, heads, S, D] tensors (out [B, H, S, D]): the layout the SDPA
    kernels read, so a caller that has it (Lighthouse's gathered rows) needs no transposes."""
    return _ring(q_BHSD, k_BGSD, v_BGSD, group, layout, causal, scale, impl, heads_first=True)


def _ring(q, k, v, group, layout, causal, scale, impl, heads_first: bool) -> Tensor:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
    # Checks and the flash adapter speak [B, S, heads, D]; transposes here are views.
    q_BSHD, k_BSGD, v_BSGD = (x.transpose(1, 2) for x in (q, k, v)) if heads_first else (q, k, v)
    use_flash = impl == "ring_flash_attn" or (
        impl == "auto" and ring_flash_adapter.applies(q_BSHD, k_BSGD, layout, causal)
    )
    check_same_across_ranks(
        [
            *_shape_code(q_BSHD),
            *_shape_code(k_BSGD),
            *_shape_code(v_BSGD),
            LAYOUTS.index(layout) if layout in LAYOUTS else -1,
            causal,
            _DTYPE_CODES.get(q.dtype, 99),
            use_flash,
        ],
        group,
        "ring_attention arguments",
        names=[
            *_SHAPE_NAMES["q"],
            *_SHAPE_NAMES["k"],
            *_SHAPE_NAMES["v"],
            "layout",
            "causal",
            "dtype",
            "ring_flash_attn",
        ],
        once_per_config=True,
    )
    _check_inputs(q_BSHD, k_BSGD, v_BSGD, layout)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if use_flash:
        out_BSHD = ring_flash_adapter.ring_flash_attention(
            q_BSHD, k_BSGD, v_BSGD, group, layout, causal, scale
        )
        return out_BSHD.transpose(1, 2) if heads_first else out_BSHD
    q_BHSD, k_BGSD, v_BGSD = (q, k, v) if heads_first else (x.transpose(1, 2) for x in (q, k, v))
    out_BHSD = _RingAttention.apply(q_BHSD, k_BGSD, v_BGSD, group, layout, causal, scale)
    return out_BHSD if heads_first else out_BHSD.transpose(1, 2)
