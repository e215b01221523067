"""Gathering pooled q/k/v rows of the selected entries, and the adjoint.

Entries of level 1 read the token tensor itself and the others the coarse pyramid, so the
full-length input is never copied; the row movers are the custom ops of `ops/kernels/rows.py`.

Legend: B batch, N sequence, P pyramid length, Pc coarse length (P - N), S selected length,
H query heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.kernels.rows import put_rows_, take_rows
from lhdist.ops.pyramid import coarse_pyramid, unpool_coarse
from lhdist.ops.spec import LighthouseSpec


class _PyramidGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BNHD, coarse_BPHD, idx_BGS, spec, chunks):
        ctx.save_for_backward(idx_BGS)
        ctx.spec, ctx.seq_len, ctx.coarse_len = spec, x_BNHD.shape[1], coarse_BPHD.shape[1]
        ctx.chunks = chunks
        return take_rows(x_BNHD, coarse_BPHD, idx_BGS, chunks)

    @staticmethod
    def backward(ctx, grad_BHSD):
        (idx_BGS,) = ctx.saved_tensors
        B, n = idx_BGS.shape[0], ctx.chunks  # entries' batch rows (chunks of sequences)
        H, D = grad_BHSD.shape[1], grad_BHSD.shape[3]
        grad_coarse = grad_BHSD.new_zeros(B, ctx.coarse_len, H, D)
        none = grad_BHSD.new_empty(0)
        put_rows_(grad_BHSD, idx_BGS, none, grad_coarse, ctx.seq_len, False, False, True, n)
        grad_x = unpool_coarse(grad_coarse, ctx.seq_len, ctx.spec)
        put_rows_(grad_BHSD, idx_BGS, grad_x, none, ctx.seq_len, True, True, False, n)
        return grad_x, None, None, None, None


def gather_pooled(
    x_BNHD: torch.Tensor,
    idx_BGS: torch.Tensor,
    spec: LighthouseSpec,
    coarse_BPHD: torch.Tensor | None = None,
    chunks: int = 1,
) -> torch.Tensor:
    """Pooled rows of x for the selected entries, head-major for attention: [B, H, S, D].

    `coarse_BPHD`: x's coarse pyramid if already computed. `chunks` > 1: x's batch rows are
    consecutive chunks of longer sequences; the result is then [B/chunks, H, chunks*S, D] (see
    `take_rows`). Gradient (to x only): each entry's row gradient spreads evenly over the
    tokens of its window."""
    if coarse_BPHD is None:
        coarse_BPHD, _ = coarse_pyramid(x_BNHD.detach(), spec)
    return _PyramidGather.apply(x_BNHD, coarse_BPHD, idx_BGS, spec, chunks)
