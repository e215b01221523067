"""Gather and scatter of pyramid rows addressed one by one, for global selection under CP.

A rank of global-mode context parallelism owns a varying number of selected entries per head
(the budget goes where the scores are), so its entries cannot be the [B, G, S] index tensor of
`take_rows` / `put_rows_`. Here every entry is one row of a flat view instead: a row of one kv
group, `hd = (H/G) * D` wide, in the token tensor [B, N, heads, D] or the coarse pyramid
[B, Pc, heads, D], i.e. flat row `(b * length + position) * G + g` (`FlatEntries`). The row
movers are the custom ops `take_flat_` / `add_flat_` (Triton on CUDA, no atomics: real rows are
unique). `rows_to_share` and `share_to_rows` carry the rows a rank attends into the SDPA
layout and back in one pass each (a permutation: no zero-filled buffers, no index adds).

The full-length work is the same as the single-device op's: the gather's adjoint unpools coarse
gradients in one pass (`unpool_coarse`), the scatter spreads coarse outputs in one pass.

Legend: B batch, N sequence (one chunk), Pc coarse pyramid length, R entries, H heads, G kv
heads, D head dim, hd = (H/G) * D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lhdist.ops.kernels.rows import (
    add_flat_,
    heads_first_to_rows_,
    rows_to_heads_first,
    spread,
    take_flat_,
)
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
    def forward(ctx, entries: FlatEntries, groups: int, spec, *xs_and_coarse):
        ctx.entries, ctx.spec, ctx.groups = entries, spec, groups
        xs, coarses = xs_and_coarse[0::2], xs_and_coarse[1::2]
        ctx.shapes = [(x.shape, c.shape[1]) for x, c in zip(xs, coarses, strict=True)]
        widths = [x.shape[2] // groups * x.shape[3] for x in xs]
        e = entries
        out = xs[0].new_empty(e.is_fine.shape[0], sum(widths))
        lo = 0
        for x, coarse, hd in zip(xs, coarses, widths, strict=True):
            take_flat_(out[:, lo : lo + hd], x.reshape(-1, hd), coarse.reshape(-1, hd),
                       e.is_fine, e.fine_rows, e.coarse_rows)  # fmt: skip
            lo += hd
        return out

    @staticmethod
    def backward(ctx, grad_RC):
        e = ctx.entries
        none = grad_RC.new_empty(0)
        grads, lo = [], 0
        for (B, N, H, D), coarse_len in ctx.shapes:
            hd = H // ctx.groups * D
            grad_RX = grad_RC[:, lo : lo + hd]  # rows apart: the kernels take the row stride
            lo += hd
            grad_coarse = grad_RC.new_zeros(B * coarse_len * ctx.groups, hd)
            add_flat_(grad_RX, e.is_fine, e.fine_rows, e.coarse_rows, none, grad_coarse,
                      False, True)  # fmt: skip
            grad_x = unpool_coarse(grad_coarse.view(B, coarse_len, H, D), N, ctx.spec)
            add_flat_(grad_RX, e.is_fine, e.fine_rows, e.coarse_rows, grad_x.view(-1, hd), none,
                      True, False)  # fmt: skip
            grads += [grad_x, None]
        return None, None, None, *grads


def gather_flat(
    sources: list[tuple[Tensor, Tensor]], entries: FlatEntries, groups: int, spec: LighthouseSpec
) -> Tensor:
    """The entries' rows of several tensors side by side, [R, sum of their hd]: for each
    (x [B, N, heads, D], its coarse pyramid [B, Pc, heads, D] computed without autograd) the
    rows of x's pyramid. Differentiable in every x: a row's gradient spreads evenly over its
    window."""
    flat = [t for pair in sources for t in pair]
    return _GatherFlat.apply(entries, groups, spec, *flat)


class _ScatterFlat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o_RX, entries: FlatEntries, shape, spec):
        ctx.entries, ctx.spec = entries, spec
        B, N, H, D = shape
        e, hd = entries, o_RX.shape[1]
        ctx.hd = hd
        none = o_RX.new_empty(0)
        coarse_len = sum(spec.level_lengths(N)[1:])
        coarse = o_RX.new_zeros(B * coarse_len * (H * D // hd), hd)
        add_flat_(o_RX, e.is_fine, e.fine_rows, e.coarse_rows, none, coarse, False, True)
        coarse = coarse.view(B, coarse_len, H, D)
        spill = take_spill(coarse, spec, N)
        p = spec.pooling_factor
        out = spread(None, _accumulate_blocks(coarse, N, spec), N, p, 1, 1, 1.0)
        add_flat_(o_RX, e.is_fine, e.fine_rows, e.coarse_rows, out.view(-1, hd), none,
                  True, False)  # fmt: skip
        return out, spill

    @staticmethod
    def backward(ctx, grad_BNHD, grad_spill):
        e, hd = ctx.entries, ctx.hd
        grad_BNHD = grad_BNHD.contiguous()
        sums = _block_sums(grad_BNHD, ctx.spec)
        add_spill_grad_(sums, grad_spill, ctx.spec, grad_BNHD.shape[1])
        grad_RX = grad_BNHD.new_empty(e.is_fine.shape[0], hd)
        take_flat_(grad_RX, grad_BNHD.view(-1, hd), sums.view(-1, hd), e.is_fine, e.fine_rows,
                   e.coarse_rows)  # fmt: skip
        return grad_RX, None, None, None


def scatter_flat_with_spill(
    o_RX: Tensor, entries: FlatEntries, shape: tuple[int, int, int, int], spec: LighthouseSpec
) -> tuple[Tensor, Tensor]:
    """Entry outputs [R, hd] summed into positions [B, N, H, D] (`shape`) of one chunk, plus
    the chunk's spill [B, L-1, H, D] (see `scatter_entries_with_spill`)."""
    return _ScatterFlat.apply(o_RX, entries, shape, spec)


class _RowsToShare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows_RC, order, batch, groups, heads_per_group, head_dim):
        ctx.save_for_backward(order)
        ctx.groups, ctx.widths = groups, [hx * head_dim for hx in heads_per_group]
        ctx.num_cols = rows_RC.shape[1]
        parts, lo = [], 0
        for hx, width in zip(heads_per_group, ctx.widths, strict=True):
            part = rows_RC[:, lo : lo + width]
            parts.append(rows_to_heads_first(part, order, batch, groups, hx, head_dim))
            lo += width
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        (order,) = ctx.saved_tensors
        grad = grads[0].new_empty(order.shape[0], ctx.num_cols)  # every row is written
        lo = 0
        for width, g in zip(ctx.widths, grads, strict=True):
            heads_first_to_rows_(grad[:, lo : lo + width], g, order, ctx.groups)
            lo += width
        return grad, None, None, None, None, None


def rows_to_share(
    rows_RC: Tensor,
    order: Tensor,
    batch: int,
    groups: int,
    heads_per_group: tuple[int, ...],
    head_dim: int,
) -> tuple[Tensor, ...]:
    """The rows a rank attends, from received order into SDPA's layout: for each column block
    (hx * head_dim wide per entry of `heads_per_group`) a contiguous [B, G*hx, S, D] tensor
    whose row (b, s, g) is rows_RC[order[(b*S + s)*G + g]]. `order` is a permutation, so the
    gradient is written row by row (no zero fill, no index add)."""
    return _RowsToShare.apply(rows_RC, order, batch, groups, tuple(heads_per_group), head_dim)


class _ShareToRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BHSD, order, groups):
        ctx.save_for_backward(order)
        ctx.shape, ctx.groups = x_BHSD.shape, groups
        B, H, S, D = x_BHSD.shape
        rows = x_BHSD.new_empty(order.shape[0], H // groups * D)
        heads_first_to_rows_(rows, x_BHSD, order, groups)
        return rows

    @staticmethod
    def backward(ctx, grad_RX):
        (order,) = ctx.saved_tensors
        B, H, S, D = ctx.shape
        grad = rows_to_heads_first(grad_RX, order, B, ctx.groups, H // ctx.groups, D)
        return grad, None, None


def share_to_rows(x_BHSD: Tensor, order: Tensor, groups: int) -> Tensor:
    """Inverse of `rows_to_share` for one tensor: [B, H, S, D] back to rows [B*S*G, (H/G)*D]
    in received order (row order[(b*S + s)*G + g] holds (b, s, g))."""
    return _ShareToRows.apply(x_BHSD, order, groups)
