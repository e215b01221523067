"""Slow, obviously correct reading of spec/LIGHTHOUSE.md (Python loops, float64 math); tests only.

Nothing here is shared with the fast path: selection is Python lists and sorted(), pooling and
scatter are explicit 0/1 matrices, attention is a masked softmax.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from lhdist.ops.spec import LighthouseSpec


def _window_max(scores: list[float], start: int, size: int) -> float:
    return max(scores[start : start + size])


def _best(cands: list[int], score: dict[int, float], count: int) -> list[int]:
    """`count` windows with the largest score; ties to the lower window index."""
    return sorted(cands, key=lambda w: (-score[w], w))[:count]


def _causal_best(cands: list[int], score: dict[int, float], count: int) -> list[int]:
    """`count` of `cands` (in position order), each decided from the candidates up to it alone.

    Candidate i passes if fewer than count*(i+1)/len(cands) earlier candidates beat it (a larger
    score, or an equal one: earlier wins ties); passes are taken while fewer than `count` are,
    and once the candidates left are no more than the picks still owed, all of them are taken.
    """
    C, picked = len(cands), []
    for i, w in enumerate(cands):
        beaten_by = sum(1 for v in cands[:i] if (-score[v], v) < (-score[w], w))
        owed, left = count - len(picked), C - i
        if left <= owed or (beaten_by * C < count * (i + 1) and owed > 0):
            picked.append(w)
    assert len(picked) == count
    return picked


def reference_entries(
    score_q: list[float], score_k: list[float], spec: LighthouseSpec
) -> list[tuple[int, int]]:
    """(level, window) entries of one sequence and kv head, in causal order (spec 3-4, 7)."""
    N, L, p = len(score_q), spec.num_levels, spec.pooling_factor
    regions = spec.num_tiles
    half = spec.half_budget
    region_len = N // regions
    entries: list[tuple[Fraction, int, int]] = []  # (key, level, window)
    for r in range(regions):
        c_L = spec.window(L)
        cands = list(range(r * region_len // c_L, (r + 1) * region_len // c_L))
        for level in range(L, 1, -1):
            c = spec.window(level)
            sq = {w: _window_max(score_q, w * c, c) for w in cands}
            sk = {w: _window_max(score_k, w * c, c) for w in cands}
            best = _causal_best if spec.competition == "causal" else _best
            by_q = best(cands, sq, half)
            by_k = best([w for w in cands if w not in by_q], sk, half)
            selected = set(by_q) | set(by_k)
            for w in cands:
                if w in selected:
                    entries.append(
                        (Fraction(c * (w + 1)) - Fraction(1, 2 ** (level - 1)), level, w)
                    )
                else:
                    entries.append((Fraction(c * w), level, w))
            cands = [w * p + j for w in sorted(selected) for j in range(p)]
        entries.extend((Fraction(w), 1, w) for w in cands)
    entries.sort()
    return [(level, w) for _, level, w in entries]


def reference_select(q: torch.Tensor, k: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """int64 [B, G, S] pyramid indices (level 1 first), as lighthouse_select specifies."""
    B, N, H, _ = q.shape
    G = k.shape[2]
    offsets = spec.level_offsets(N)
    out = []
    for b in range(B):
        rows = []
        for g in range(G):
            heads = range(g * (H // G), (g + 1) * (H // G))
            score_q = [max(float(q[b, t, h].double().norm()) for h in heads) for t in range(N)]
            score_k = [float(k[b, t, g].double().norm()) for t in range(N)]
            entries = reference_entries(score_q, score_k, spec)
            rows.append([offsets[level - 1] + w for level, w in entries])
        out.append(rows)
    return torch.tensor(out, dtype=torch.int64)


def _decode(index: int, spec: LighthouseSpec, seq_len: int) -> tuple[int, int]:
    for level in range(spec.num_levels, 0, -1):
        off = spec.level_offsets(seq_len)[level - 1]
        if index >= off:
            return level, index - off
    raise AssertionError(index)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: LighthouseSpec, indices: torch.Tensor
) -> torch.Tensor:
    """Lighthouse output [B, N, H, D] for a fixed selection, built from dense fp32 matrices."""
    B, N, H, D = q.shape
    G = k.shape[2]
    S = indices.shape[-1]
    out = torch.zeros(B, N, H, D, dtype=torch.float64)
    for b in range(B):
        for g in range(G):
            pool = torch.zeros(S, N, dtype=torch.float64)  # row s: mean over entry s's window
            spread = torch.zeros(N, S, dtype=torch.float64)  # column s: entry s's scatter span
            for s, index in enumerate(indices[b, g].tolist()):
                level, w = _decode(index, spec, N)
                c = spec.window(level)
                pool[s, w * c : (w + 1) * c] = 1.0 / c
                spread[w * c + c - 1 : min(w * c + 2 * c - 1, N), s] = 1.0
            ks, vs = pool @ k[b, :, g].double(), pool @ v[b, :, g].double()
            causal = torch.ones(S, S, dtype=torch.bool).tril()
            for h in range(g * (H // G), (g + 1) * (H // G)):
                qs = pool @ q[b, :, h].double()
                logits = (qs @ ks.T) / D**0.5
                probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)
                out[b, :, h] = spread @ (probs @ vs)
    return out.to(q.dtype)
