"""Shifted scatter-sum of entry outputs back to token positions (spec section 5), and its adjoint.

An entry for window i of level l (size c) adds its output to positions [i*c + c - 1, i*c + 2c - 1)
clipped to [0, N). These spans are "blocks": level-l blocks tile [c - 1, N), and since c_l - 1 is
-1 modulo every finer window size, each level-l block is exactly p level-(l-1) blocks. So the
scatter accumulates coarse to fine at block granularity (small tensors) and touches the
full-length output once; its adjoint sums blocks fine to coarse after one read of the gradient.
No atomics in either direction: both are deterministic.

Under context parallelism each sequence chunk scatters its own entries
(`scatter_entries_with_spill`) and the spans of its last windows, which run past the chunk, are
added to the next chunk's first positions (`add_halo_`).

Legend: B batch, N sequence, P pyramid length, Pc = P - N, S selected length, H query heads,
G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.kernels.rows import put_rows_, spread, take_rows, window_reduce
from lhdist.ops.spec import LighthouseSpec


def _accumulate_blocks(coarse: torch.Tensor, seq_len: int, spec: LighthouseSpec) -> torch.Tensor:
    """Per level-2 block, the sum of the window outputs of levels 2..L covering it (coarse to
    fine: A_l[i] = W_l[i] + A_{l+1}[(i + 1) // p - 1])."""
    p = spec.pooling_factor
    lengths = spec.level_lengths(seq_len)[1:]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    acc = coarse[:, starts[-1] :]
    for i in range(len(lengths) - 2, -1, -1):
        acc = spread(coarse[:, starts[i] : starts[i] + lengths[i]], acc, lengths[i], p, 1, 1, 1.0)
    return acc


def _block_sums(grad_BNHD: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Adjoint of the spread for the coarse levels: every level-l block's gradient sum, levels
    2..L concatenated [B, Pc, H, D] (level 1's adjoint is the gradient itself)."""
    p, n = spec.pooling_factor, grad_BNHD.shape[1] // spec.pooling_factor
    # Level l's blocks are p level-(l-1) blocks: reduce the previous level, into one buffer.
    return window_reduce(grad_BNHD, n, p, p - 1, 1.0, False, spec.num_levels - 1)[0]


def _last_window_rows(spec: LighthouseSpec, seq_len: int) -> list[int]:
    """Rows of the coarse buffer holding the last window of levels 2..L: the windows whose
    spans run c_l - 1 positions past the end of the sequence (into the next CP shard)."""
    lengths = spec.level_lengths(seq_len)[1:]
    return [sum(lengths[: i + 1]) - 1 for i in range(len(lengths))]


def take_spill(coarse_BPHD: torch.Tensor, spec: LighthouseSpec, seq_len: int) -> torch.Tensor:
    """The last windows' rows [B, L-1, H, D] of a coarse buffer. Python-int rows: an index
    list would be copied to the GPU, a stream synchronisation."""
    return torch.stack([coarse_BPHD[:, row] for row in _last_window_rows(spec, seq_len)], dim=1)


def add_spill_grad_(sums_BPHD: torch.Tensor, grad_spill: torch.Tensor, spec, seq_len: int):
    """Adjoint of `take_spill`, accumulated in place into the coarse gradient."""
    for i, row in enumerate(_last_window_rows(spec, seq_len)):
        sums_BPHD[:, row] += grad_spill[:, i]


class _ScatterEntries(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o_BHSD, idx_BGS, spec, seq_len, with_spill, chunks):
        ctx.save_for_backward(idx_BGS)
        ctx.spec, ctx.with_spill, ctx.chunks = spec, with_spill, chunks
        B, G, _ = idx_BGS.shape
        H, D = o_BHSD.shape[1], o_BHSD.shape[3]
        p = spec.pooling_factor
        coarse = o_BHSD.new_zeros(B, sum(spec.level_lengths(seq_len)[1:]), H, D)
        none = o_BHSD.new_empty(0)
        put_rows_(o_BHSD, idx_BGS, none, coarse, seq_len, False, False, True, chunks)
        spill = take_spill(coarse, spec, seq_len) if with_spill else none
        out = spread(None, _accumulate_blocks(coarse, seq_len, spec), seq_len, p, 1, 1, 1.0)
        put_rows_(o_BHSD, idx_BGS, out, none, seq_len, True, True, False, chunks)
        return out, spill

    @staticmethod
    def backward(ctx, grad_BNHD, grad_spill):
        (idx_BGS,) = ctx.saved_tensors
        grad_BNHD = grad_BNHD.contiguous()
        sums = _block_sums(grad_BNHD, ctx.spec)
        if ctx.with_spill:
            add_spill_grad_(sums, grad_spill, ctx.spec, grad_BNHD.shape[1])
        grad_o = take_rows(grad_BNHD, sums, idx_BGS, ctx.chunks)
        return grad_o, None, None, None, None, None


def scatter_entries(
    o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int
) -> torch.Tensor:
    """Sum entry outputs [B, H, S, D] into token positions [B, N, H, D]; gradient: each entry
    receives the sum of the position gradients over its span."""
    return _ScatterEntries.apply(o_BHSD, idx_BGS, spec, seq_len, False, 1)[0]


def scatter_entries_with_spill(
    o_BHSD: torch.Tensor,
    idx_BGS: torch.Tensor,
    spec: LighthouseSpec,
    seq_len: int,
    chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`scatter_entries` of CP chunks, plus each chunk's spill [B, L-1, H, D]: the outputs of the
    last window of levels 2..L, which the next chunk adds to its first positions (`add_halo_`).
    `chunks` > 1: o is [B/chunks, H, chunks*S, D], consecutive chunks' entries side by side (as
    `gather_pooled` returns them)."""
    return _ScatterEntries.apply(o_BHSD, idx_BGS, spec, seq_len, True, chunks)


class _AddHalo(torch.autograd.Function):
    # In place with mark_dirty: autograd then passes the full-length gradient straight through
    # instead of cloning it (what an in-place add on a slice of `out` would cost).
    @staticmethod
    def forward(ctx, out_BNHD, prev_spill_BLHD, spec):
        ctx.spec = spec
        B, _, H, D = out_BNHD.shape
        halo = out_BNHD.new_zeros(B, spec.coarsest_window - 1, H, D)
        for level in range(2, spec.num_levels + 1):
            halo[:, : spec.window(level) - 1] += prev_spill_BLHD[:, level - 2].unsqueeze(1)
        out_BNHD[:, : spec.coarsest_window - 1] += halo
        ctx.mark_dirty(out_BNHD)
        return out_BNHD

    @staticmethod
    def backward(ctx, grad_BNHD):
        spec = ctx.spec
        grad_spill = torch.stack(
            [
                grad_BNHD[:, : spec.window(level) - 1].sum(1)
                for level in range(2, spec.num_levels + 1)
            ],
            dim=1,
        )
        return grad_BNHD, grad_spill, None


def add_halo_(out_BNHD: torch.Tensor, prev_spill_BLHD: torch.Tensor, spec: LighthouseSpec):
    """In place: the previous chunk's spill [B, L-1, H, D] added to this chunk's first
    c_l - 1 positions (level l = 2..L). Touches only the first c_L - 1 rows; returns `out`."""
    return _AddHalo.apply(out_BNHD, prev_spill_BLHD, spec)
