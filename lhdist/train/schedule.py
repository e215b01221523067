"""What changes with the step: the learning-rate factor and the attention stage."""

from __future__ import annotations

import math

from lhdist.config import Config


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of the peak lr for optimizer step `step` (1-based): linear warmup, then
    constant, cosine or linear decay to `min_lr_ratio` at `train.steps`."""
    o, total = cfg.optim, cfg.train.steps
    if step <= o.warmup_steps:
        return step / max(1, o.warmup_steps)
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    decay = cosine if o.schedule == "cosine" else 1.0 - progress
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * decay


def stage_at(step: int, cfg: Config) -> int:
    """Stage of optimizer step `step` (1-based): 1 (Lighthouse in the sparse layers) for the
    first `stage1_steps` steps, then 2 (every layer dense)."""
    if not cfg.sparse_layers():
        return 2
    return 1 if step <= cfg.train.stage1_steps else 2
