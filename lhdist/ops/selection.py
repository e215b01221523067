"""Top-k cascade selection (tile and global), emitted in causal key order as pyramid indices.

Legend: B batch, N sequence, G kv heads, T selection regions (tiles; 1 in global mode), C candidate
windows per region, E entries per region, S = T*E selected entries per (batch, kv head).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lhdist.ops.pyramid import group_query_scores, key_scores, score_pyramid
from lhdist.ops.selection_graph import graph_applies, replay_selection
from lhdist.ops.spec import LighthouseSpec, check_qkv


def _ranking_keys(scores: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys ordering candidates by score, ties to the lower position.

    Scores are non-negative fp32 norms, whose bit patterns order like the values; the low 32
    bits hold the reversed position. One top-k over unique keys is deterministic, and cheaper
    than a stable sort.
    """
    C = scores.shape[-1]
    reversed_pos = C - 1 - torch.arange(C, device=scores.device)
    bits = scores.float().contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | reversed_pos


def _select_level(
    cand_BGTC: torch.Tensor, sq_BGTC: torch.Tensor, sk_BGTC: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split candidates into (selected, rejected) window indices, both ascending per row.

    Selected: the `half` best by score_q, then the `half` best of the rest by score_k.
    """
    C = cand_BGTC.shape[-1]
    by_q = _ranking_keys(sq_BGTC).topk(half, dim=-1).indices
    by_k = _ranking_keys(sk_BGTC).scatter(-1, by_q, -1).topk(half, dim=-1).indices
    chosen = torch.zeros_like(cand_BGTC, dtype=torch.int8)
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


ScoreFetch = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(level, candidate windows [B, G, T, C]) -> their (score_q, score_k), each [B, G, T, C]."""


@torch.no_grad()
def cascade(
    fetch_scores: ScoreFetch,
    batch: int,
    num_kv_heads: int,
    seq_len: int,
    spec: LighthouseSpec,
    device: torch.device,
) -> torch.Tensor:
    """The cascade of spec section 3 (or 7 for global) over the whole sequence; int64 [B, G, S].

    `fetch_scores` supplies candidate scores, so the same cascade runs on one device (a gather
    from the score pyramid) and under context parallelism (scores of remote windows exchanged).
    """
    N, L, p, T, half = (
        seq_len,
        spec.num_levels,
        spec.pooling_factor,
        spec.num_tiles,
        spec.half_budget,
    )
    offsets = spec.level_offsets(N)
    keys, pyramid_idx = [], []

    def emit(level: int, windows: torch.Tensor, summary: bool) -> None:
        keys.append(_entry_keys(level, windows, summary, spec))
        pyramid_idx.append(windows + offsets[level - 1])

    n_coarse = N // spec.coarsest_window
    cand = torch.arange(n_coarse, device=device).view(1, 1, T, n_coarse // T)
    cand = cand.expand(batch, num_kv_heads, -1, -1)
    children = torch.arange(p, device=device)
    for level in range(L, 1, -1):
        selected, rejected = _select_level(cand, *fetch_scores(level, cand), half)
        emit(level, rejected, summary=False)
        emit(level, selected, summary=True)
        cand = (selected.unsqueeze(-1) * p + children).flatten(-2)
    emit(1, cand, summary=False)

    # Every entry of a region has its key inside the region's token range, so sorting within
    # regions and concatenating them in order is the global causal order.
    keys_BGTE = torch.cat(keys, dim=-1)
    idx_BGTE = torch.cat(pyramid_idx, dim=-1)
    order = torch.argsort(keys_BGTE, dim=-1)
    return idx_BGTE.gather(-1, order).reshape(batch, num_kv_heads, -1)


@torch.no_grad()
def select_from_scores(
    score_q_BGN: torch.Tensor, score_k_BGN: torch.Tensor, spec: LighthouseSpec
) -> torch.Tensor:
    """The cascade on level-1 scores [B, G, N] held on this device; int64 [B, G, S].

    On CUDA it replays a captured graph (`selection_graph`): same indices, one launch."""
    spec.check_seq_len(score_q_BGN.shape[-1])
    if graph_applies(score_q_BGN):
        return replay_selection(_select_eager, score_q_BGN, score_k_BGN, spec)
    return _select_eager(score_q_BGN, score_k_BGN, spec)


def _select_eager(
    score_q_BGN: torch.Tensor, score_k_BGN: torch.Tensor, spec: LighthouseSpec
) -> torch.Tensor:
    B, G, N = score_q_BGN.shape
    sq_levels, sk_levels = score_pyramid(score_q_BGN, spec), score_pyramid(score_k_BGN, spec)

    def fetch(level: int, cand_BGTC: torch.Tensor):
        flat = cand_BGTC.reshape(B, G, -1)
        sq = sq_levels[level - 1].gather(2, flat).view(cand_BGTC.shape)
        sk = sk_levels[level - 1].gather(2, flat).view(cand_BGTC.shape)
        return sq, sk

    return cascade(fetch, B, G, N, spec, score_q_BGN.device)


def lighthouse_select(q: torch.Tensor, k: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Selected entries for q [B,N,H,D], k [B,N,G,D]: int64 [B, G, S] indices into the
    level-concatenated pyramid (level 1 first), in gathered (causal) order. No gradient."""
    check_qkv(q, k, k, spec)
    with torch.no_grad():
        return select_from_scores(group_query_scores(q, k.shape[2]), key_scores(k), spec)
