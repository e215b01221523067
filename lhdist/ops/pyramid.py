"""The parameter-free pyramid: mean-pooled q/k/v per level and max-pooled fp32 norm scores.

Level 1 is the input itself; the coarse levels 2..L are kept apart ("coarse pyramid") so that
no full-length copy of the input is ever made. Pyramid indices still count level 1 first.

Legend: B batch, N sequence, P pyramid length (all levels), Pc = P - N coarse length, H query
heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.kernels.rows import spread, window_reduce
from lhdist.ops.spec import LighthouseSpec


def coarse_pyramid(
    x_BNHD: torch.Tensor, spec: LighthouseSpec, with_norms: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Levels 2..L of mean-pooled windows, concatenated: [B, Pc, heads, D] (no autograd), and,
    if asked, the fp32 norms [B, N, heads] of x's vectors, from the same read of x."""
    p, n = spec.pooling_factor, x_BNHD.shape[1] // spec.pooling_factor
    # Each level pools the previous one by p, which equals the mean over its c_l tokens; the
    # levels are written straight into one buffer.
    coarse, norms = window_reduce(x_BNHD, n, p, 0, 1.0 / p, with_norms, spec.num_levels - 1)
    return coarse, norms if with_norms else None


def unpool_coarse(grad_coarse: torch.Tensor, seq_len: int, spec: LighthouseSpec):
    """Adjoint of `coarse_pyramid` (coarse part): the token-level gradient [B, N, heads, D] of
    coarse-level gradients, every window's spread evenly over its tokens."""
    p = spec.pooling_factor
    lengths = spec.level_lengths(seq_len)[1:]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    acc = grad_coarse[:, starts[-1] :]
    for i in range(len(lengths) - 2, -1, -1):
        finer = grad_coarse[:, starts[i] : starts[i] + lengths[i]]
        acc = spread(finer, acc, lengths[i], p, 0, 0, 1.0 / p)
    return spread(None, acc, seq_len, p, 0, 0, 1.0 / p)


def pool_pyramid(x_BNHD: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Level-concatenated pyramid [B, P, heads, D] (level 1 = x itself); differentiable.

    A full copy of x: for tests and tools. The op itself gathers from x and `coarse_pyramid`.
    """
    levels = [x_BNHD]
    for _ in range(spec.num_levels - 1):
        prev = levels[-1]
        B, n, heads, D = prev.shape
        levels.append(prev.view(B, n // spec.pooling_factor, spec.pooling_factor, heads, D).mean(2))
    return torch.cat(levels, dim=1)


def _norms_fp32(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 over the last dim in fp32, without materialising an fp32 copy of low-precision x."""
    if x.dtype == torch.float64:
        return torch.linalg.vector_norm(x, dim=-1).float()
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)


def group_max(norms_BNH: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Per kv group, the max over its query heads: [B, N, H] -> [B, G, N]."""
    B, N, H = norms_BNH.shape
    return norms_BNH.view(B, N, num_kv_heads, H // num_kv_heads).amax(-1).transpose(1, 2)


def group_query_scores(q_BNHD: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Level-1 score_q per kv group: max over the group's query heads of ||q||_2, fp32 [B, G, N]."""
    return group_max(_norms_fp32(q_BNHD), num_kv_heads)


def key_scores(k_BNGD: torch.Tensor) -> torch.Tensor:
    """Level-1 score_k: ||k||_2 per token and kv head, fp32 [B, G, N]."""
    return _norms_fp32(k_BNGD).transpose(1, 2)


def score_pyramid(scores_BGN: torch.Tensor, spec: LighthouseSpec) -> list[torch.Tensor]:
    """Scores of every level, level 1 first; level l: max of level-1 scores over its window."""
    levels = [scores_BGN]
    for _ in range(spec.num_levels - 1):
        prev = levels[-1]
        B, G, n = prev.shape
        levels.append(prev.view(B, G, n // spec.pooling_factor, spec.pooling_factor).amax(-1))
    return levels
