"""What changes with the step: the learning-rate factor and the attention stage."""

from __future__ import annotations

import math

from lhdist.config import Config


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of the peak lr for optimizer step `step` (1-based): linear warmup, then the
    schedule's shape, times a linear re-warmup after the stage switch when one is configured."""
    return _base_factor(step, cfg) * _resume_warmup(step, cfg)


def _base_factor(step: int, cfg: Config) -> float:
    o, total = cfg.optim, cfg.train.steps
    if step <= o.warmup_steps:
        return step / max(1, o.warmup_steps)
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "wsd":
        # Warmup, stable at the peak, then decay over the last decay_steps, ending at train.steps.
        decay_start = total - o.decay_steps
        if step <= decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / o.decay_steps)
        shape = o.decay_shape
    else:
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        shape = o.schedule
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0 - progress
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * decay


def _resume_warmup(step: int, cfg: Config) -> float:
    # The dense stage meets the attention it was not trained with: ramping the lr back up from
    # ~0 over resume_warmup_steps lets Adam's moments adapt before full-size updates.
    n, switch = cfg.optim.resume_warmup_steps, cfg.train.stage1_steps
    if n == 0 or not cfg.sparse_layers() or switch == 0 or step <= switch:
        return 1.0
    return min(1.0, (step - switch) / n)


def stage_at(step: int, cfg: Config) -> int:
    """Stage of optimizer step `step` (1-based): 1 (Lighthouse in the sparse layers) for the
    first `stage1_steps` steps, then 2 (every layer dense)."""
    if not cfg.sparse_layers():
        return 2
    return 1 if step <= cfg.train.stage1_steps else 2


def dense_step(step: int, cfg: Config) -> bool:
    """Whether stage-1 step `step` trains with dense attention (lighthouse.dense_every): the
    logged stage stays 1, only the attention of that step changes."""
    n = cfg.lighthouse.dense_every
    return n > 0 and stage_at(step, cfg) == 1 and step % n == 0
