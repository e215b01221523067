"""The parameter-free pyramid: mean-pooled q/k/v per level and max-pooled fp32 norm scores.

Level 1 is the input itself; the coarse levels 2..L are kept apart ("coarse pyramid") so that
no full-length copy of the input is ever made. Pyramid indices still count level 1 first.

Legend: B batch, N sequence, P pyramid length (all levels), Pc = P - N coarse length, H query
heads, G kv heads, D head dim.
"""

from __future__ import annotations

import torch

from lhdist.ops.spec import LighthouseSpec


def coarse_pyramid(x_BNHD: torch.Tensor, spec: LighthouseSpec) -> torch.Tensor:
    """Levels 2..L of mean-pooled windows, concatenated: [B, Pc, heads, D] (no autograd)."""
    B, N, heads, D = x_BNHD.shape
    p = spec.pooling_factor
    lengths = spec.level_lengths(N)[1:]
    out = x_BNHD.new_empty(B, sum(lengths), heads, D)
    prev, start = x_BNHD, 0
    for n in lengths:
        # Each level pools the previous one by p, which equals the mean over its c_l tokens.
        out[:, start : start + n] = prev.reshape(B, n, p, heads, D).mean(2)
        prev, start = out[:, start : start + n], start + n
    return out


def unpool_coarse_(grad_BNHD: torch.Tensor, grad_coarse: torch.Tensor, spec: LighthouseSpec):
    """Adjoint of `coarse_pyramid`, in place: fold the coarse-level gradients down into
    `grad_BNHD` (every window's gradient spread evenly over its p children)."""
    B, N, heads, D = grad_BNHD.shape
    p = spec.pooling_factor
    lengths = spec.level_lengths(N)[1:]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    for i in range(len(lengths) - 1, 0, -1):
        finer = grad_coarse[:, starts[i - 1] : starts[i - 1] + lengths[i - 1]]
        coarse = grad_coarse[:, starts[i] : starts[i] + lengths[i]]
        finer.view(B, lengths[i], p, heads, D).add_(coarse.unsqueeze(2), alpha=1.0 / p)
    grad_BNHD.view(B, lengths[0], p, heads, D).add_(
        grad_coarse[:, : lengths[0]].unsqueeze(2), alpha=1.0 / p
    )
    return grad_BNHD


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


def group_query_scores(q_BNHD: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Level-1 score_q per kv group: max over the group's query heads of ||q||_2, fp32 [B, G, N]."""
    B, N, H, _ = q_BNHD.shape
    norms_BNH = _norms_fp32(q_BNHD)
    return norms_BNH.view(B, N, num_kv_heads, H // num_kv_heads).amax(-1).transpose(1, 2)


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
