"""The attention-function contract of the model and its default: dense causal SDPA."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class AttentionFn(Protocol):
    """attn(q [B,N,H,D], k [B,N,G,D], v [B,N,G,D], layer_idx) -> out [B,N,H,D].

    Injected from outside (see `lhdist.parallel.parallelize_model`); the model never knows which
    attention runs, nor on how many ranks.
    """

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int
    ) -> torch.Tensor: ...


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int = 0
) -> torch.Tensor:
    """Dense causal attention with grouped kv heads (single device, whole sequence)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    return out.transpose(1, 2)
