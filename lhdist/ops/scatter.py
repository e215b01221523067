"""Shifted scatter-sum of entry outputs back to token positions (spec section 5), and its adjoint.

An entry for window i of level l (size c) adds its output to positions [i*c + c - 1, i*c + 2c - 1)
clipped to [0, N). These spans are "blocks": level-l blocks tile [c - 1, N), and since c_l - 1 is
-1 modulo every finer window size, each level-l block is exactly p level-(l-1) blocks. So the
scatter accumulates coarse to fine at block granularity (small tensors) and touches the
full-length output once; its adjoint sums blocks fine to coarse after one read of the gradient.
No atomics in either direction: both are deterministic.

Two entry points: `scatter_entries` (fused, single device) and `place_entries` + `spread_windows`
+ `spill` (context parallel: a shard's last blocks spill into the next shard).

Legend: B batch, N sequence, P pyramid length, Pc = P - N, S selected length, H query heads,
G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.kernels.rows import entry_rows, put_rows_, spread, take_rows, window_reduce
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
    p = spec.pooling_factor
    sums, finer = [], grad_BNHD
    for n in spec.level_lengths(grad_BNHD.shape[1])[1:]:
        finer, _ = window_reduce(finer, n, p, p - 1, 1.0, False)
        sums.append(finer)
    return torch.cat(sums, dim=1)


class _ScatterEntries(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o_BHSD, idx_BGS, spec, seq_len):
        ctx.save_for_backward(idx_BGS)
        ctx.spec = spec
        B, H, _, D = o_BHSD.shape
        p = spec.pooling_factor
        coarse = o_BHSD.new_zeros(B, sum(spec.level_lengths(seq_len)[1:]), H, D)
        none = o_BHSD.new_empty(0)
        put_rows_(o_BHSD, idx_BGS, none, coarse, seq_len, False, False, True)
        out = spread(None, _accumulate_blocks(coarse, seq_len, spec), seq_len, p, 1, 1, 1.0)
        put_rows_(o_BHSD, idx_BGS, out, none, seq_len, True, True, False)
        return out

    @staticmethod
    def backward(ctx, grad_BNHD):
        (idx_BGS,) = ctx.saved_tensors
        grad_BNHD = grad_BNHD.contiguous()
        return take_rows(grad_BNHD, _block_sums(grad_BNHD, ctx.spec), idx_BGS), None, None, None


def scatter_entries(
    o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int
) -> torch.Tensor:
    """Sum entry outputs [B, H, S, D] into token positions [B, N, H, D]; gradient: each entry
    receives the sum of the position gradients over its span."""
    return _ScatterEntries.apply(o_BHSD, idx_BGS, spec, seq_len)


# --- the same in two steps, for context parallelism ------------------------------------------


def place_rows(values_RD: torch.Tensor, rows_R: torch.Tensor, num_rows: int) -> torch.Tensor:
    """A [num_rows, D] buffer of zeros with `values_RD` written at the distinct `rows_R`.

    Differentiable in `values_RD` (the gradient is the gather of those rows)."""
    return values_RD.new_zeros(num_rows, values_RD.shape[-1]).index_copy(0, rows_R, values_RD)


def place_entries(o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, pyramid_len: int) -> torch.Tensor:
    """Output of every pyramid row's entry, zero where unselected: [B, P, H, D]."""
    B, H, S, D = o_BHSD.shape
    rows = entry_rows(idx_BGS, pyramid_len, H).view(-1)
    win = place_rows(o_BHSD.reshape(B * H * S, D), rows, B * pyramid_len * H)
    return win.view(B, pyramid_len, H, D)


class _SpreadWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, win_BPHD, spec, seq_len):
        ctx.spec = spec
        acc = _accumulate_blocks(win_BPHD[:, seq_len:], seq_len, spec)
        return spread(win_BPHD[:, :seq_len], acc, seq_len, spec.pooling_factor, 1, 1, 1.0)

    @staticmethod
    def backward(ctx, grad_BNHD):
        return torch.cat([grad_BNHD, _block_sums(grad_BNHD, ctx.spec)], dim=1), None, None


def spread_windows(win_BPHD: torch.Tensor, spec: LighthouseSpec, seq_len: int) -> torch.Tensor:
    """Window outputs [B, P, H, D] -> position outputs [B, N, H, D] (spans clipped to N);
    gradient: every window receives the sum of the position gradients over its span."""
    return _SpreadWindows.apply(win_BPHD, spec, seq_len)


def spill(win_BPHD: torch.Tensor, spec: LighthouseSpec, seq_len: int) -> torch.Tensor:
    """Outputs [B, L-1, H, D] of the last window of levels 2..L, whose spans run c_l - 1
    positions past the end of this sequence (into the next shard)."""
    lengths, offsets = spec.level_lengths(seq_len), spec.level_offsets(seq_len)
    last = [offsets[lvl] + lengths[lvl] - 1 for lvl in range(1, spec.num_levels)]
    return win_BPHD[:, last]


def add_spill(out_BNHD: torch.Tensor, spill_BLHD: torch.Tensor, spec: LighthouseSpec):
    """`out` plus the previous shard's spill on its first c_l - 1 positions (level l = 2..L)."""
    out_BNHD = out_BNHD.clone()
    for level in range(2, spec.num_levels + 1):
        out_BNHD[:, : spec.window(level) - 1] += spill_BLHD[:, level - 2].unsqueeze(1)
    return out_BNHD
