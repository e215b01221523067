"""The range of every numeric config key, checked at load: one table, one message per rule.

Types are checked when a value is set (`config._coerce`); this is the next gate, so that an
`--optim.lr=.inf` or a negative thread count stops at load time instead of training into `nan`
or failing deep inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Rule = tuple[str, Callable[[Any], bool]]

POSITIVE: Rule = ("a finite number > 0", lambda v: math.isfinite(v) and v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
AT_LEAST_1: Rule = ("an integer >= 1", lambda v: v >= 1)
AT_LEAST_0: Rule = ("an integer >= 0", lambda v: v >= 0)
SEED: Rule = ("an integer in [0, 2**63)", lambda v: 0 <= v < 2**63)
BETA: Rule = ("a number in [0, 1)", lambda v: 0 <= v < 1)
FRACTION: Rule = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
# 1 would make every stage-1 step dense: that is lighthouse.enabled=false.
EVERY_OR_NEVER: Rule = ("0 (never) or an integer >= 2 (1: use lighthouse.enabled=false)",
                        lambda v: v == 0 or v >= 2)  # fmt: skip
# Weights of std 1 already give activations of norm ~sqrt(dim); far beyond overflows fp32/bf16.
INIT_STD: Rule = ("a number in (0, 1]", lambda v: 0 < v <= 1)

RANGES: dict[str, Rule] = {
    "model.rope_theta": POSITIVE,
    "model.norm_eps": POSITIVE,
    "model.init_std": INIT_STD,
    "lighthouse.dense_every": EVERY_OR_NEVER,
    "parallel.timeout_s": AT_LEAST_1,
    "data.seed": SEED,
    "optim.lr": POSITIVE,
    "optim.min_lr_ratio": FRACTION,
    "optim.warmup_steps": AT_LEAST_0,
    "optim.decay_steps": AT_LEAST_0,
    "optim.resume_warmup_steps": AT_LEAST_0,
    "optim.beta1": BETA,
    "optim.beta2": BETA,
    "optim.eps": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.grad_clip": NON_NEGATIVE,
    "train.seed": SEED,
    "train.peak_tflops": NON_NEGATIVE,
    "train.num_threads": AT_LEAST_0,
    "train.max_bad_steps": AT_LEAST_0,
}


def check_ranges(cfg: Any) -> None:
    """ValueError naming the first key whose value is outside its range (None means unset)."""
    for key, (rule, ok) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name, None)
        if value is not None and not ok(value):
            raise ValueError(f"{key}={value!r} must be {rule}")
    for key in ("train.run_dir",):
        section, name = key.split(".")
        if not str(getattr(getattr(cfg, section), name)).strip():
            raise ValueError(f"{key} must name a directory, got an empty string")
