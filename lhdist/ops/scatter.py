"""Shifted scatter-sum of entry outputs back to token positions (spec section 5), and its adjoint.

An entry for window i of level l (size c) adds its output to positions [i*c + c - 1, i*c + 2c - 1)
clipped to [0, N). Both directions are gathers: forward, each position looks up the one window per
level that covers it; backward, each entry sums its span (windowed sums laid out like the pyramid),
so neither needs atomics and both are deterministic.

Legend: B batch, N sequence, P pyramid length, S selected length, H query heads, G kv heads,
D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.gather import gather_entries
from lhdist.ops.spec import LighthouseSpec


def _inverse_index(idx_BGS: torch.Tensor, pyramid_len: int) -> torch.Tensor:
    """Position in the gathered sequence of every pyramid row, or S where it was not selected."""
    B, G, S = idx_BGS.shape
    inv_BGP = torch.full((B, G, pyramid_len), S, dtype=torch.int64, device=idx_BGS.device)
    positions = torch.arange(S, device=idx_BGS.device).expand(B, G, S)
    return inv_BGP.scatter_(2, idx_BGS, positions)


def scatter_to_positions(
    o_BHSD: torch.Tensor, idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int
) -> torch.Tensor:
    """Forward of the scatter: [B, H, S, D] entry outputs -> [B, N, H, D] position outputs."""
    B, H, S, D = o_BHSD.shape
    G = idx_BGS.shape[1]
    lengths, offsets = spec.level_lengths(seq_len), spec.level_offsets(seq_len)
    inv_BGP = _inverse_index(idx_BGS, offsets[-1] + lengths[-1])
    o_pad = torch.cat([o_BHSD, o_BHSD.new_zeros(B, H, 1, D)], dim=2)  # row S reads as zero
    out_BHND = o_BHSD.new_zeros(B, H, seq_len, D)
    for level in range(1, spec.num_levels + 1):
        c, off, n = spec.window(level), offsets[level - 1], lengths[level - 1]
        # Position j is covered by window (j - c + 1) // c of this level: the first c - 1
        # positions by none (they read row S).
        per_pos = inv_BGP[:, :, off : off + n].repeat_interleave(c, dim=2)[:, :, : seq_len - c + 1]
        per_pos = torch.nn.functional.pad(per_pos, (c - 1, 0), value=S)
        per_pos = per_pos.repeat_interleave(H // G, dim=1)
        out_BHND += o_pad.gather(2, per_pos.unsqueeze(-1).expand(B, H, seq_len, D))
    return out_BHND.transpose(1, 2)


def span_sums(x_BNHD: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Adjoint layout: for every pyramid row (window i of level l) the sum of x over its span
    [i*c + c - 1, i*c + 2c - 1) clipped to N, laid out like the pyramid: [B, P, H, D]."""
    B, N, H, D = x_BNHD.shape
    sums = []
    for level in range(1, spec.num_levels + 1):
        c = spec.window(level)
        shifted = torch.nn.functional.pad(x_BNHD[:, c - 1 :], (0, 0, 0, 0, 0, c - 1))
        sums.append(shifted.view(B, N // c, c, H, D).sum(2))
    return torch.cat(sums, dim=1)


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
