"""Gather and scatter of pyramid rows addressed one by one, for global selection under CP.

A rank of global-mode context parallelism owns a varying number of selected entries per head
(the budget goes where the scores are), so its entries cannot be the [B, G, S] index tensor of
`take_rows` / `put_rows_`. Here every entry is one row of a flat view instead: a row of one kv
group, `hd = (H/G) * D` wide, in the token tensor [B, N, heads, D] or the coarse pyramid
[B, Pc, heads, D], i.e. flat row `(b * length + position) * G + g` (`FlatEntries`). Real rows
are unique and stand-ins add exact zeros, so the index adds below give the same result in any
order.

The full-length work is the same as the single-device op's: the gather's adjoint unpools coarse
gradients in one pass (`unpool_coarse`), the scatter spreads coarse outputs in one pass.

Legend: B batch, N sequence (one chunk), Pc coarse pyramid length, R entries, H heads, G kv
heads, D head dim, hd = (H/G) * D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lhdist.ops.kernels.rows import spread
from lhdist.ops.pyramid import unpool_coarse
from lhdist.ops.scatter import _accumulate_blocks, _block_sums, add_spill_grad_, take_spill
from lhdist.ops.spec import LighthouseSpec


@dataclass(frozen=True)
class FlatEntries:
    """R entries as flat rows: where `is_fine`, row `fine_rows` of the token tensor, else row
    `coarse_rows` of the coarse pyramid (the unused one of the two is a valid stand-in row).
    Masks rather than index lists: selecting by mask on the GPU would sync with the host."""

    is_fine: Tensor
    fine_rows: Tensor
    coarse_rows: Tensor


class _GatherFlat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BNHD, coarse_BPHD, entries: FlatEntries, groups: int, spec):
        ctx.entries, ctx.spec, ctx.groups = entries, spec, groups
        ctx.x_shape, ctx.coarse_len = x_BNHD.shape, coarse_BPHD.shape[1]
        hd = x_BNHD.shape[2] // groups * x_BNHD.shape[3]
        fine = x_BNHD.reshape(-1, hd).index_select(0, entries.fine_rows)
        coarse = coarse_BPHD.reshape(-1, hd).index_select(0, entries.coarse_rows)
        return torch.where(entries.is_fine[:, None], fine, coarse)

    @staticmethod
    def backward(ctx, grad_RX):
        e = ctx.entries
        B, N, H, D = ctx.x_shape
        hd = grad_RX.shape[1]
        fine = e.is_fine[:, None]
        # Stand-in rows receive exact zeros, so the sums are those of the real rows alone.
        grad_coarse = grad_RX.new_zeros(B * ctx.coarse_len * ctx.groups, hd)
        grad_coarse.index_add_(0, e.coarse_rows, grad_RX.masked_fill(fine, 0))
        grad_x = unpool_coarse(grad_coarse.view(B, ctx.coarse_len, H, D), N, ctx.spec)
        grad_fine = grad_RX.masked_fill(~fine, 0).to(grad_x.dtype)
        grad_x.view(-1, hd).index_add_(0, e.fine_rows, grad_fine)
        return grad_x, None, None, None, None


def gather_flat(
    x_BNHD: Tensor, coarse_BPHD: Tensor, entries: FlatEntries, groups: int, spec: LighthouseSpec
) -> Tensor:
    """Rows [R, hd] of x's pyramid (tokens of x, or its coarse levels `coarse_BPHD`, computed
    without autograd); differentiable in x: a row's gradient spreads evenly over its window."""
    return _GatherFlat.apply(x_BNHD, coarse_BPHD, entries, groups, spec)


class _ScatterFlat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o_RX, entries: FlatEntries, shape, spec):
        ctx.entries, ctx.spec = entries, spec
        B, N, H, D = shape
        hd = ctx.hd = o_RX.shape[1]
        fine = entries.is_fine[:, None]
        coarse_len = sum(spec.level_lengths(N)[1:])
        coarse = o_RX.new_zeros(B * coarse_len * (H * D // hd), hd)
        coarse.index_add_(0, entries.coarse_rows, o_RX.masked_fill(fine, 0))
        coarse = coarse.view(B, coarse_len, H, D)
        spill = take_spill(coarse, spec, N)
        p = spec.pooling_factor
        out = spread(None, _accumulate_blocks(coarse, N, spec), N, p, 1, 1, 1.0)
        out.view(-1, hd).index_add_(0, entries.fine_rows, o_RX.masked_fill(~fine, 0))
        return out, spill

    @staticmethod
    def backward(ctx, grad_BNHD, grad_spill):
        e = ctx.entries
        grad_BNHD = grad_BNHD.contiguous()
        sums = _block_sums(grad_BNHD, ctx.spec)
        add_spill_grad_(sums, grad_spill, ctx.spec, grad_BNHD.shape[1])
        fine = grad_BNHD.view(-1, ctx.hd).index_select(0, e.fine_rows)
        coarse = sums.view(-1, ctx.hd).index_select(0, e.coarse_rows)
        return torch.where(e.is_fine[:, None], fine, coarse), None, None, None


def scatter_flat_with_spill(
    o_RX: Tensor, entries: FlatEntries, shape: tuple[int, int, int, int], spec: LighthouseSpec
) -> tuple[Tensor, Tensor]:
    """Entry outputs [R, hd] summed into positions [B, N, H, D] (`shape`) of one chunk, plus
    the chunk's spill [B, L-1, H, D] (see `scatter_entries_with_spill`)."""
    return _ScatterFlat.apply(o_RX, entries, shape, spec)
