"""The Lighthouse attention op: select, gather from the pyramid, causal SDPA, scatter back.

Legend: B batch, N sequence, P pyramid length, S selected length, H query heads, G kv heads,
D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lhdist.ops.gather import gather_pooled
from lhdist.ops.pyramid import coarse_pyramid, group_max
from lhdist.ops.scatter import scatter_entries
from lhdist.ops.selection import select_from_scores
from lhdist.ops.spec import LighthouseSpec, check_qkv


def check_indices(idx: torch.Tensor, q: torch.Tensor, k: torch.Tensor, spec: LighthouseSpec):
    """Raise ValueError unless `idx` is a selection for q/k's shapes under `spec`."""
    B, N, _, _ = q.shape
    G = k.shape[2]
    S = spec.selected_length(N)
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64:
        raise ValueError(f"indices must be an int64 tensor, got {getattr(idx, 'dtype', idx)}")
    if tuple(idx.shape) != (B, G, S):
        raise ValueError(
            f"indices shape {tuple(idx.shape)} must be [B, G, S] = {(B, G, S)} for N={N} "
            f"(S = N/p^(L-1) + (L-1)*p*k)"
        )
    if idx.device != q.device:
        raise ValueError(f"indices on {idx.device} but q on {q.device}")
    pyramid_len = sum(spec.level_lengths(N))
    if torch.compiler.is_compiling():
        return  # a value check would break the graph; traced callers pass our own selection
    lo, hi = int(idx.min()), int(idx.max())  # one sync; a bad index would be a device assert
    if lo < 0 or hi >= pyramid_len:
        raise ValueError(f"indices span [{lo}, {hi}] outside the pyramid [0, {pyramid_len})")


def select_and_gather(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: LighthouseSpec,
    indices: torch.Tensor | None = None,
    chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selection (unless given) and the gathered pooled rows: (q [B,H,S,D], k/v [B,G,S,D],
    indices [B,G,S]); differentiable in q, k, v. Inputs are checked by the caller.
    `chunks` > 1: the batch rows are consecutive chunks of longer sequences, each selecting
    alone; the gathered rows are then [B/chunks, heads, chunks*S, D] (see `take_rows`)."""
    G = k.shape[2]
    select = indices is None
    with torch.no_grad():
        # One read of q and k gives both their first coarse level and their selection scores.
        q_coarse, q_norms = coarse_pyramid(q.detach(), spec, with_norms=select)
        k_coarse, k_norms = coarse_pyramid(k.detach(), spec, with_norms=select)
        v_coarse, _ = coarse_pyramid(v.detach(), spec)
        if select:
            indices = select_from_scores(group_max(q_norms, G), k_norms.transpose(1, 2), spec)
        else:
            check_indices(indices, q, k, spec)
    return (
        gather_pooled(q, indices, spec, q_coarse, chunks),
        gather_pooled(k, indices, spec, k_coarse, chunks),
        gather_pooled(v, indices, spec, v_coarse, chunks),
        indices,
    )


def lighthouse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: LighthouseSpec,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lighthouse attention: q [B,N,H,D], k/v [B,N,G,D] -> [B,N,H,D], differentiable in q, k, v.

    `indices` (from `lighthouse_select`) reuses a selection; otherwise it is computed here.
    Gradients flow through the pooled q/k/v rows that are gathered, never through selection.
    """
    check_qkv(q, k, v, spec)
    B, N, H, _ = q.shape
    G = k.shape[2]
    q_BHSD, k_BGSD, v_BGSD, indices = select_and_gather(q, k, v, spec, indices)
    o_BHSD = F.scaled_dot_product_attention(
        q_BHSD, k_BGSD, v_BGSD, is_causal=True, enable_gqa=H != G
    )
    out = scatter_entries(o_BHSD, indices, spec, N)
    if spec.scatter == "mean":
        counts_BNG = scatter_counts(indices, spec, N).clamp_(min=1).to(out.dtype)
        out = out / counts_BNG.repeat_interleave(H // G, dim=2).unsqueeze(-1)
    return out


@torch.no_grad()
def scatter_counts(idx_BGS: torch.Tensor, spec: LighthouseSpec, seq_len: int) -> torch.Tensor:
    """Entries whose scatter span covers each position, [B, N, G] (0..L; spec section 5): the
    divisor of `scatter="mean"`. A difference array over the spans, then a running sum."""
    offsets = torch.tensor(spec.level_offsets(seq_len), device=idx_BGS.device)
    level = torch.bucketize(idx_BGS, offsets, right=True)  # 1-based
    window = idx_BGS - offsets[level - 1]
    c = spec.pooling_factor ** (level - 1)
    start = window * c + c - 1
    end = (start + c).clamp_(max=seq_len)
    B, G, _ = idx_BGS.shape
    delta = torch.zeros(B, G, seq_len + 1, dtype=torch.int32, device=idx_BGS.device)
    ones = torch.ones_like(start, dtype=torch.int32)
    delta.scatter_add_(2, start.clamp(max=seq_len), ones).scatter_add_(2, end, -ones)
    return delta[..., :seq_len].cumsum(2).transpose(1, 2)
