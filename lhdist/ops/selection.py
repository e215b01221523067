"""Top-k cascade selection (tile and global), emitted in causal key order as pyramid indices.

Legend: B batch, N sequence, G kv heads, T selection regions (tiles; 1 in global mode), C candidate
windows per region, E entries per region, S = T*E selected entries per (batch, kv head).
"""

from __future__ import annotations

import torch

from lhdist.ops.pyramid import group_query_scores, key_scores, score_pyramid
from lhdist.ops.spec import LighthouseSpec, check_qkv


def _top_positions(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the `count` largest scores per row; ties go to the lower position."""
    # A stable descending sort keeps equal scores in position order; candidate rows are sorted by
    # window index, so ties resolve deterministically to the lower global index.
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]


def _select_level(
    cand_BGTC: torch.Tensor, sq_BGn: torch.Tensor, sk_BGn: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split candidates into (selected, rejected) window indices, both ascending per row.

    Selected: the `half` best by score_q, then the `half` best of the rest by score_k.
    """
    B, G, T, C = cand_BGTC.shape
    flat = cand_BGTC.reshape(B, G, T * C)
    sq = sq_BGn.gather(2, flat).view(B, G, T, C)
    sk = sk_BGn.gather(2, flat).view(B, G, T, C)
    by_q = _top_positions(sq, half)
    sk = sk.scatter(-1, by_q, float("-inf"))
    by_k = _top_positions(sk, half)
    chosen = torch.zeros(B, G, T, C, dtype=torch.int8, device=cand_BGTC.device)
    chosen.scatter_(-1, torch.cat([by_q, by_k], dim=-1), 1)
    # Stable ascending argsort of the 0/1 mask lists unchosen positions first, each group in order.
    order = torch.argsort(chosen, dim=-1, stable=True)
    rejected = cand_BGTC.gather(-1, order[..., : C - 2 * half])
    selected = cand_BGTC.gather(-1, order[..., C - 2 * half :])
    return selected, rejected


def _entry_keys(level: int, windows: torch.Tensor, summary: bool, spec: LighthouseSpec):
    """Exact int64 sort keys (spec section 4) scaled by 2^L: window start, or just past its end."""
    c, scale = spec.window(level), 1 << spec.num_levels
    if summary:
        return (windows + 1) * (c * scale) - (1 << (spec.num_levels + 1 - level))
    return windows * (c * scale)


@torch.no_grad()
def select_from_scores(
    score_q_BGN: torch.Tensor, score_k_BGN: torch.Tensor, spec: LighthouseSpec
) -> torch.Tensor:
    """The cascade of spec section 3 (or 7 for global) on level-1 scores; int64 [B, G, S]."""
    B, G, N = score_q_BGN.shape
    spec.check_seq_len(N)
    L, p, T, half = spec.num_levels, spec.pooling_factor, spec.num_tiles, spec.half_budget
    sq_levels, sk_levels = score_pyramid(score_q_BGN, spec), score_pyramid(score_k_BGN, spec)
    offsets = spec.level_offsets(N)
    device = score_q_BGN.device

    keys, pyramid_idx = [], []

    def emit(level: int, windows: torch.Tensor, summary: bool) -> None:
        keys.append(_entry_keys(level, windows, summary, spec))
        pyramid_idx.append(windows + offsets[level - 1])

    n_coarse = N // spec.coarsest_window
    cand = torch.arange(n_coarse, device=device).view(1, 1, T, n_coarse // T).expand(B, G, -1, -1)
    children = torch.arange(p, device=device)
    for level in range(L, 1, -1):
        selected, rejected = _select_level(cand, sq_levels[level - 1], sk_levels[level - 1], half)
        emit(level, rejected, summary=False)
        emit(level, selected, summary=True)
        cand = (selected.unsqueeze(-1) * p + children).flatten(-2)
    emit(1, cand, summary=False)

    # Every entry of a region has its key inside the region's token range, so sorting within
    # regions and concatenating them in order is the global causal order.
    keys_BGTE = torch.cat(keys, dim=-1)
    idx_BGTE = torch.cat(pyramid_idx, dim=-1)
    order = torch.argsort(keys_BGTE, dim=-1)
    return idx_BGTE.gather(-1, order).reshape(B, G, -1)


def lighthouse_select(q: torch.Tensor, k: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Selected entries for q [B,N,H,D], k [B,N,G,D]: int64 [B, G, S] indices into the
    level-concatenated pyramid (level 1 first), in gathered (causal) order. No gradient."""
    check_qkv(q, k, k, spec)
    with torch.no_grad():
        return select_from_scores(group_query_scores(q, k.shape[2]), key_scores(k), spec)
