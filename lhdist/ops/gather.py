"""Moving rows between (token level + coarse pyramid) and the gathered sequence, per kv group.

Rows are D-vectors: a [B, n, H, D] tensor is viewed as B*n*H rows, and every move is one
index_select / index_copy over them. Entries of level 1 read the token tensor itself and the
others the coarse pyramid, so the full-length input is never copied.

Legend: B batch, N sequence, P pyramid length, Pc coarse length (P - N), S selected length,
H query heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.pyramid import coarse_pyramid, unpool_coarse_
from lhdist.ops.spec import LighthouseSpec


def entry_rows(idx_BGS: torch.Tensor, length: int, num_heads: int) -> torch.Tensor:
    """Flat row of every (batch, head, entry) in a [B, length, H, D] tensor: int64 [B, H, S]."""
    B, G, S = idx_BGS.shape
    device = idx_BGS.device
    batch_base = (torch.arange(B, device=device) * length).view(B, 1, 1)
    rows_BGS = (idx_BGS + batch_base) * num_heads
    heads = torch.arange(num_heads, device=device).view(1, num_heads, 1)
    return rows_BGS.repeat_interleave(num_heads // G, dim=1) + heads


def _split_rows(idx_BGS: torch.Tensor, N: int, coarse_len: int, H: int):
    """(fine rows, coarse rows, is-fine mask [B, H, S, 1]); each row valid where it applies."""
    fine = entry_rows(idx_BGS.clamp(max=N - 1), N, H)
    coarse = entry_rows((idx_BGS - N).clamp(min=0, max=max(coarse_len - 1, 0)), coarse_len, H)
    is_fine = (idx_BGS < N).repeat_interleave(H // idx_BGS.shape[1], dim=1).unsqueeze(-1)
    return fine, coarse, is_fine


def take_entries(fine_BNHD: torch.Tensor, coarse_BPHD: torch.Tensor, idx_BGS: torch.Tensor):
    """Rows of the pyramid (tokens + coarse levels) in selection order: [B, H, S, D]."""
    B, N, H, D = fine_BNHD.shape
    S = idx_BGS.shape[-1]
    fine_rows, coarse_rows, is_fine = _split_rows(idx_BGS, N, coarse_BPHD.shape[1], H)
    a = fine_BNHD.reshape(-1, D).index_select(0, fine_rows.view(-1)).view(B, H, S, D)
    b = coarse_BPHD.reshape(-1, D).index_select(0, coarse_rows.view(-1)).view(B, H, S, D)
    return torch.where(is_fine, a, b)


def put_entries(rows_BHSD: torch.Tensor, idx_BGS: torch.Tensor, N: int, coarse_len: int):
    """Adjoint of `take_entries`: zero (fine [B,N,H,D], coarse [B,Pc,H,D]) with the rows written
    at their entries. Rows are unique per head, so plain copies suffice (deterministic)."""
    B, H, S, D = rows_BHSD.shape
    fine_rows, coarse_rows, is_fine = _split_rows(idx_BGS, N, coarse_len, H)
    is_fine = is_fine.view(-1)
    # One spare row per buffer takes the entries that belong to the other buffer.
    fine_spare, coarse_spare = B * N * H, B * coarse_len * H
    fine_rows = torch.where(is_fine, fine_rows.view(-1), fine_spare)
    coarse_rows = torch.where(is_fine, coarse_spare, coarse_rows.view(-1))
    values = rows_BHSD.reshape(-1, D)
    fine = rows_BHSD.new_zeros(fine_spare + 1, D).index_copy_(0, fine_rows, values)
    coarse = rows_BHSD.new_zeros(coarse_spare + 1, D).index_copy_(0, coarse_rows, values)
    return fine[:-1].view(B, N, H, D), coarse[:-1].view(B, coarse_len, H, D)


class _PyramidGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BNHD, idx_BGS, spec):
        ctx.save_for_backward(idx_BGS)
        ctx.spec, ctx.seq_len = spec, x_BNHD.shape[1]
        with torch.no_grad():
            return take_entries(x_BNHD, coarse_pyramid(x_BNHD, spec), idx_BGS)

    @staticmethod
    def backward(ctx, grad_BHSD):
        (idx_BGS,) = ctx.saved_tensors
        spec, seq_len = ctx.spec, ctx.seq_len
        coarse_len = sum(spec.level_lengths(seq_len)[1:])
        fine, coarse = put_entries(grad_BHSD, idx_BGS, seq_len, coarse_len)
        return unpool_coarse_(fine, coarse, spec), None, None


def gather_pooled(x_BNHD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec):
    """Pooled rows of x for the selected entries, head-major for attention: [B, H, S, D].

    Gradient: each entry's row gradient spreads evenly over the tokens of its window."""
    return _PyramidGather.apply(x_BNHD, idx_BGS, spec)


def gather_entries(pyramid_BPHD: torch.Tensor, idx_BGS: torch.Tensor) -> torch.Tensor:
    """Rows of a level-concatenated pyramid in selection order: [B, H, S, D] (differentiable)."""
    B, P, H, D = pyramid_BPHD.shape
    rows_BHS = entry_rows(idx_BGS, P, H)
    flat = pyramid_BPHD.reshape(B * P * H, D).index_select(0, rows_BHS.view(-1))
    return flat.view(B, H, idx_BGS.shape[-1], D)
