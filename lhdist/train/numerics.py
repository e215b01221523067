"""A non-finite loss or gradient norm stops the run with one line, after `train.max_bad_steps`
tolerated ones (engines skip the update of such a step: DeepSpeed ZeRO's overflow check, the
torch engine's own). Reads only the values the loop already has on the host: no extra sync."""

from __future__ import annotations

import math


class NonFiniteError(ValueError):
    """The run diverged: a user-fixable setting (lr, data, init) rather than a bug."""


class BadStepGuard:
    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.bad_steps = 0
        self.last_finite_loss = float("nan")

    def check(self, step: int, loss: float, grad_norm: float | None) -> bool:
        """True when `step` was bad but is tolerated; NonFiniteError past the budget. A step
        without a norm (DeepSpeed ZeRO-1/2 with optim.grad_clip=0) is judged by its loss."""
        if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
            self.last_finite_loss = loss
            return False
        self.bad_steps += 1
        if self.bad_steps > self.max_bad_steps:
            raise NonFiniteError(
                f"step {step}: loss {loss} and gradient norm {grad_norm} are not both finite "
                f"({self.bad_steps} such step(s), train.max_bad_steps={self.max_bad_steps}); "
                "lower optim.lr, check the data, or raise train.max_bad_steps to skip a few"
            )
        return True
