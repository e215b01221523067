"""Shifted scatter-sum of entry outputs back to token positions (spec section 5), and its adjoint.

An entry for window i of level l (size c) adds its output to positions [i*c + c - 1, i*c + 2c - 1)
clipped to [0, N). Two steps, both without atomics and so deterministic:
  place:  entry outputs -> a pyramid-shaped buffer of window outputs (each row written once);
  spread: window outputs -> positions; windows of one level tile the sequence, so each level is a
          broadcast add over shifted blocks. Its adjoint sums each shifted block (`span_sums`).
The part of the last window's span that runs past N is the `spill` a context-parallel caller
hands to the next shard.

Legend: B batch, N sequence, P pyramid length, S selected length, H query heads, G kv heads,
D head dim, R rows.
"""

from __future__ import annotations

import torch

from lhdist.ops.gather import entry_rows
from lhdist.ops.spec import LighthouseSpec


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


def _spread_forward(win_BPHD: torch.Tensor, spec: LighthouseSpec, N: int) -> torch.Tensor:
    lengths, offsets = spec.level_lengths(N), spec.level_offsets(N)
    out_BNHD = win_BPHD[:, :N].clone()  # level 1: one token per window, no shift
    B, _, H, D = out_BNHD.shape
    for level in range(2, spec.num_levels + 1):
        c, off, n = spec.window(level), offsets[level - 1], lengths[level - 1]
        win = win_BPHD[:, off : off + n]
        # Window i < n-1 covers the block [i*c + c - 1, (i+1)*c + c - 1); the last window only
        # reaches position N-1 before the clip.
        out_BNHD[:, c - 1 : N - 1].view(B, n - 1, c, H, D).add_(win[:, : n - 1].unsqueeze(2))
        out_BNHD[:, N - 1].add_(win[:, n - 1])
    return out_BNHD


def span_sums(x_BNHD: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Adjoint of `spread_windows`: for every pyramid row (window i of level l) the sum of x over
    its span [i*c + c - 1, i*c + 2c - 1) clipped to N, laid out like the pyramid: [B, P, H, D]."""
    B, N, H, D = x_BNHD.shape
    lengths, offsets = spec.level_lengths(N), spec.level_offsets(N)
    sums = x_BNHD.new_empty(B, offsets[-1] + lengths[-1], H, D)
    sums[:, :N] = x_BNHD
    for level in range(2, spec.num_levels + 1):
        c, off, n = spec.window(level), offsets[level - 1], lengths[level - 1]
        sums[:, off : off + n - 1] = x_BNHD[:, c - 1 : N - 1].reshape(B, n - 1, c, H, D).sum(2)
        sums[:, off + n - 1] = x_BNHD[:, N - 1]
    return sums


class _SpreadWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, win_BPHD, spec, seq_len):
        ctx.spec = spec
        return _spread_forward(win_BPHD, spec, seq_len)

    @staticmethod
    def backward(ctx, grad_BNHD):
        return span_sums(grad_BNHD, ctx.spec), None, None


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


def scatter_entries(
    o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int
) -> torch.Tensor:
    """Sum entry outputs [B, H, S, D] into token positions [B, N, H, D]; gradient: each entry
    receives the sum of the position gradients over its span."""
    pyramid_len = sum(spec.level_lengths(seq_len))
    return spread_windows(place_entries(o_BHSD, idx_BGS, pyramid_len), spec, seq_len)
