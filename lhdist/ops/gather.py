"""Moving rows between the pyramid and the gathered sequence, per kv group.

Legend: B batch, N sequence, P pyramid length (levels concatenated), S selected length, H query
heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch


def expand_group_index(idx_BGS: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Index [B, S, H, D] (a broadcast view) giving every query head its kv group's entries."""
    B, G, S = idx_BGS.shape
    idx_BSH = idx_BGS.transpose(1, 2).repeat_interleave(num_heads // G, dim=2)
    return idx_BSH.unsqueeze(-1).expand(B, S, num_heads, head_dim)


def gather_entries(pyramid_BPHD: torch.Tensor, idx_BGS: torch.Tensor) -> torch.Tensor:
    """Rows of the pyramid in selection order, head-major for attention: [B, H, S, D].

    The backward scatters into distinct rows (selected indices are unique per head), so it is
    deterministic.
    """
    B, _, H, D = pyramid_BPHD.shape
    rows_BSHD = pyramid_BPHD.gather(1, expand_group_index(idx_BGS, H, D))
    return rows_BSHD.transpose(1, 2)
