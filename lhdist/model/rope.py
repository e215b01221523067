"""Rotary position embedding from (global) position ids, so CP shards need no rank logic."""

from __future__ import annotations

from typing import Any

import torch

from lhdist.model.rope_scaling import inverse_frequencies


def rope_angles(
    positions: torch.Tensor, head_dim: int, theta: float, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., N, head_dim/2] (fp32) for integer `positions` [..., N]; `scaling` is a
    Hugging Face style rope_scaling dict (llama3, yarn; see rope_scaling.py) or None.

    Angles are formed in float64: at 1M positions an fp32 product loses whole radians.
    """
    freqs, attention_factor = inverse_frequencies(head_dim, theta, scaling)
    inv_freq = torch.tensor(freqs, device=positions.device, dtype=torch.float64)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    # YaRN scales q and k (both rotated by these) by its attention factor.
    return (angles.cos() * attention_factor).float(), (angles.sin() * attention_factor).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x [B, N, heads, D] by the angles [N, D/2] or [B, N, D/2]."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [B|1, N, 1, D/2]
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, N, heads, D/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)
