"""Shifted scatter-sum of entry outputs back to token positions (spec section 5), and its adjoint.

An entry for window i of level l (size c) adds its output to positions [i*c + c - 1, i*c + 2c - 1)
clipped to [0, N). Windows of one level tile the sequence, so each level is a gather of one
output per window followed by a broadcast add over the shifted blocks; the adjoint sums each
shifted block and gathers per entry. No atomics in either direction: both are deterministic.

Legend: B batch, N sequence, P pyramid length, S selected length, H query heads, G kv heads,
D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.gather import entry_rows, gather_entries
from lhdist.ops.spec import LighthouseSpec


def _window_outputs(o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, pyramid_len: int):
    """Output of every pyramid row's entry, zero where unselected: [B, P, H, D]."""
    B, H, S, D = o_BHSD.shape
    rows_BHS = entry_rows(idx_BGS, pyramid_len, H)
    # Selected rows are unique, so index_copy writes each once (deterministic).
    win = o_BHSD.new_zeros(B * pyramid_len * H, D)
    win.index_copy_(0, rows_BHS.view(-1), o_BHSD.reshape(B * H * S, D))
    return win.view(B, pyramid_len, H, D)


def scatter_to_positions(
    o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int
) -> torch.Tensor:
    """Forward of the scatter: [B, H, S, D] entry outputs -> [B, N, H, D] position outputs."""
    N = seq_len
    lengths, offsets = spec.level_lengths(N), spec.level_offsets(N)
    win_BPHD = _window_outputs(o_BHSD, idx_BGS, offsets[-1] + lengths[-1])
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
    """Adjoint layout: for every pyramid row (window i of level l) the sum of x over its span
    [i*c + c - 1, i*c + 2c - 1) clipped to N, laid out like the pyramid: [B, P, H, D]."""
    B, N, H, D = x_BNHD.shape
    lengths, offsets = spec.level_lengths(N), spec.level_offsets(N)
    sums = x_BNHD.new_empty(B, offsets[-1] + lengths[-1], H, D)
    sums[:, :N] = x_BNHD
    for level in range(2, spec.num_levels + 1):
        c, off, n = spec.window(level), offsets[level - 1], lengths[level - 1]
        sums[:, off : off + n - 1] = x_BNHD[:, c - 1 : N - 1].reshape(B, n - 1, c, H, D).sum(2)
        sums[:, off + n - 1] = x_BNHD[:, N - 1]
    return sums


class _ScatterToPositions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o_BHSD, idx_BGS, spec, seq_len):
        ctx.save_for_backward(idx_BGS)
        ctx.spec = spec
        return scatter_to_positions(o_BHSD, idx_BGS, spec, seq_len)

    @staticmethod
    def backward(ctx, grad_BNHD):
        (idx_BGS,) = ctx.saved_tensors
        return gather_entries(span_sums(grad_BNHD, ctx.spec), idx_BGS), None, None, None


def scatter_entries(
    o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int
) -> torch.Tensor:
    """Sum entry outputs [B, H, S, D] into token positions [B, N, H, D]; gradient: each entry
    receives the sum of the position gradients over its span."""
    return _ScatterToPositions.apply(o_BHSD, idx_BGS, spec, seq_len)
