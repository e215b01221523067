"""Cascade selection (tile and global; top-k or causal competition), emitted in causal key order
as pyramid indices.

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


# Fan-out of `_earlier_greater`'s tree: transient memory about 16*fanout bytes per candidate,
# against about log_fanout(C) rounds of half a dozen kernels.
_RANK_FANOUT = 8


def _earlier_greater(keys_RC: torch.Tensor) -> torch.Tensor:
    """For each candidate w of a row of unique keys, how many candidates v < w have a greater
    key; int64 [.., C].

    A tree over positions (padded to a power of two): in the round with sub-blocks of s
    candidates, each candidate counts the greater keys in the earlier sub-blocks of its block
    of fanout*s, by searching the sorted sub-blocks. Each pair v < w is counted in the one
    round where they share a block but not a sub-block. Memory O(C * fanout), not the O(C^2)
    of a [C, C] comparison, so no candidate count needs a limit; static shapes, no host syncs.
    """
    *lead, C = keys_RC.shape
    rows = keys_RC.reshape(-1, C)
    R, P, device = rows.shape[0], 1 << (C - 1).bit_length(), rows.device
    # Dense int32 ranks order like the keys and halve the memory of every round.
    ranks = torch.arange(C, device=device, dtype=torch.int32).expand(R, C)
    dense = torch.empty_like(ranks).scatter_(-1, rows.argsort(dim=-1), ranks)
    # -1 pads after every candidate, and is never greater than one anyway.
    x = torch.cat([dense, dense.new_full((R, P - C), -1)], dim=-1)
    count = torch.zeros(R, P, dtype=torch.int32, device=device)
    s = 1
    while s < P:
        f = min(_RANK_FANOUT, P // s)
        ordered = x.view(R, P // (f * s), f, s).sort(dim=-1).values
        probes = x.view(R, P // (f * s), 1, f * s).expand(-1, -1, f, -1).contiguous()
        at_most = torch.searchsorted(ordered, probes, right=True, out_int32=True)
        # [sub-block i, candidate]: i lies before the candidate's own sub-block.
        earlier = torch.arange(f, device=device).unsqueeze(-1) < (
            torch.arange(f * s, device=device) // s
        )
        count += ((s - at_most) * earlier).sum(2, dtype=torch.int32).view(R, P)
        s *= f
    return count[:, :C].long().view(*lead, C)


def _causal_pick(keys_RC: torch.Tensor, quota: int) -> torch.Tensor:
    """Exactly `quota` of each row's C candidates, each decided from candidates 0..w alone;
    bool [.., C] (the rule of `_select_level_causal`)."""
    C = keys_RC.shape[-1]
    w = torch.arange(C, device=keys_RC.device)
    rank = _earlier_greater(keys_RC)
    passed = rank * C < quota * (w + 1)  # in the top quota/C of candidates 0..w
    capped = passed & (passed.cumsum(-1) <= quota)
    before = capped.cumsum(-1) - capped.long()
    # Exactly `quota` are picked: g_w = (C - w) - (quota - before_w) starts at C - quota >= 0 and
    # falls by 1 - capped_w, i.e. 0 or 1, per step. If it reaches 0 at some f < C, the forced
    # fill takes [f, C) on top of before_f capped picks: before_f + C - f = quota, and g stays
    # <= 0 from f on (it never rises), so `forced` is exactly w >= f. If it never reaches 0 then
    # g_C = total_capped - quota >= g_{C-1} - 1 >= 0, while the cap gives total_capped <= quota.
    forced = C - w <= quota - before
    return capped | forced


def _select_level_causal(
    cand_BGTC: torch.Tensor, sq_BGTC: torch.Tensor, sk_BGTC: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_select_level`'s split with no look-ahead: whether candidate w (candidates are in
    ascending position order) is selected depends only on the scores of candidates 0..w.

    With quota m over C candidates, w passes if fewer than m*(w+1)/C of candidates 0..w-1
    outrank it (same ranking keys as top-k); passes are taken until m are, and once the
    candidates left are just enough for the quota left, all of them are taken. First m = half
    over all candidates by score_q, then m = half over the C - half others by score_k.
    """
    C = cand_BGTC.shape[-1]
    by_q = _causal_pick(_ranking_keys(sq_BGTC), half).to(torch.int8)
    # Stable argsort lists the candidates not picked by q first, in position order.
    rest = torch.argsort(by_q, dim=-1, stable=True)[..., : C - half]
    by_k = _causal_pick(_ranking_keys(sk_BGTC).gather(-1, rest), half).to(torch.int8)
    chosen = by_q.scatter(-1, rest, by_k)
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
    select_level = _select_level_causal if spec.competition == "causal" else _select_level
    for level in range(L, 1, -1):
        selected, rejected = select_level(cand, *fetch_scores(level, cand), half)
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
