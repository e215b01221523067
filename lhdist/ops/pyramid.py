"""The parameter-free pyramid: mean-pooled q/k/v per level and max-pooled fp32 norm scores.

Legend: B batch, N sequence, P pyramid length (all levels concatenated, level 1 first), H query
heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.spec import LighthouseSpec


def pool_pyramid(x_BNHD: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Level-concatenated pyramid [B, P, heads, D] of mean-pooled windows (level 1 = x itself).

    Each level pools the previous one by p, which equals the mean over the c_l tokens of a window.
    Differentiable: gradients of pooled entries spread evenly over their window's tokens.
    """
    levels = [x_BNHD]
    for _ in range(spec.num_levels - 1):
        prev = levels[-1]
        B, n, heads, D = prev.shape
        levels.append(prev.view(B, n // spec.pooling_factor, spec.pooling_factor, heads, D).mean(2))
    return torch.cat(levels, dim=1)


def group_query_scores(q_BNHD: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Level-1 score_q per kv group: max over the group's query heads of ||q||_2, fp32 [B, G, N]."""
    B, N, H, _ = q_BNHD.shape
    norms_BNH = torch.linalg.vector_norm(q_BNHD.float(), dim=-1)
    return norms_BNH.view(B, N, num_kv_heads, H // num_kv_heads).amax(-1).transpose(1, 2)


def key_scores(k_BNGD: torch.Tensor) -> torch.Tensor:
    """Level-1 score_k: ||k||_2 per token and kv head, fp32 [B, G, N]."""
    return torch.linalg.vector_norm(k_BNGD.float(), dim=-1).transpose(1, 2)


def score_pyramid(scores_BGN: torch.Tensor, spec: LighthouseSpec) -> list[torch.Tensor]:
    """Scores of every level, level 1 first; level l: max of level-1 scores over its window."""
    levels = [scores_BGN]
    for _ in range(spec.num_levels - 1):
        prev = levels[-1]
        B, G, n = prev.shape
        levels.append(prev.view(B, G, n // spec.pooling_factor, spec.pooling_factor).amax(-1))
    return levels
