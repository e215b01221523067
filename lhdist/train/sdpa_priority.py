"""train.sdpa_priority: which CUDA kernel F.scaled_dot_product_attention tries first.

The dense layers (one process) and the attention inside the Lighthouse op call plain SDPA; torch
tries flash first, while cuDNN's kernel runs causal fwd+bwd about 1.9x faster on an H200 (issue
18). The priority is a process-wide setting, read when SDPA picks its kernel (also while
torch.compile traces), so one context around the run covers every call; SDPA skips a backend
whose constraints the inputs fail (head dim, dtype, strict deterministic mode for cuDNN), so
the fallback is torch's own. CPU SDPA does not consult it. The ring's block kernels choose
cuDNN themselves (`lhdist.ops.attention_block`).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lhdist.config import Config

CUDNN_FIRST = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def can_set_priority() -> bool:
    """torch >= 2.6's sdpa_kernel(..., set_priority=True)."""
    return "set_priority" in inspect.signature(sdpa_kernel).parameters


def sdpa_priority(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the run executes in: cuDNN first on CUDA when train.sdpa_priority=cudnn."""
    if device.type != "cuda" or cfg.train.sdpa_priority != "cudnn" or not can_set_priority():
        return contextlib.nullcontext()
    # Every listed backend is enabled, so nothing torch would have run is taken away.
    overrideable = getattr(SDPBackend, "OVERRIDEABLE", None)
    backends = CUDNN_FIRST + ([overrideable] if overrideable is not None else [])
    return sdpa_kernel(backends, set_priority=True)
