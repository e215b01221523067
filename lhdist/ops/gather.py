"""Moving rows between the pyramid and the gathered sequence, per kv group.

Rows are D-vectors: a [B, P, H, D] tensor is viewed as B*P*H rows, and every move is one
index_select over them (contiguous D-wide copies, the fastest gather on CPU and GPU alike).

Legend: B batch, N sequence, P pyramid length (levels concatenated), S selected length, H query
heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch


def entry_rows(idx_BGS: torch.Tensor, pyramid_len: int, num_heads: int) -> torch.Tensor:
    """Flat row of every (batch, head, entry) in a [B, P, H, D] tensor: int64 [B, H, S]."""
    B, G, S = idx_BGS.shape
    device = idx_BGS.device
    per_group = num_heads // G
    batch_base = (torch.arange(B, device=device) * pyramid_len).view(B, 1, 1)
    rows_BGS = (idx_BGS + batch_base) * num_heads
    heads = torch.arange(num_heads, device=device).view(1, num_heads, 1)
    return rows_BGS.repeat_interleave(per_group, dim=1) + heads


def gather_entries(pyramid_BPHD: torch.Tensor, idx_BGS: torch.Tensor) -> torch.Tensor:
    """Rows of the pyramid in selection order, head-major for attention: [B, H, S, D].

    The backward adds into distinct rows (selected indices are unique per head), so it is
    deterministic.
    """
    B, P, H, D = pyramid_BPHD.shape
    rows_BHS = entry_rows(idx_BGS, P, H)
    flat = pyramid_BPHD.reshape(B * P * H, D).index_select(0, rows_BHS.view(-1))
    return flat.view(B, H, idx_BGS.shape[-1], D)
