"""Per-step metrics kept on the device and read back once per log interval.

Reading a loss or a grad norm as a Python number makes the host wait for the GPU, every step, so
the next step's kernels cannot be queued while this one runs. Instead each step leaves its loss,
token count and grad norm as device tensors and marks its start and end on the device's timeline
(CUDA events); `read()` turns every pending step into numbers with one synchronisation. The
values are the same numbers a per-step read gives; the step time is the device's time from the
step's start (or the end of the previous step's work, if later) to the end of its work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


class StepClock:
    """Marks on the device's timeline: CUDA events on the current stream, the host clock on CPU
    (where work runs synchronously)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        """Time between two marks whose work has completed (after a read-back)."""
        if not self.cuda:
            return end - start
        end.synchronize()  # already done after a read-back; cheap then
        return start.elapsed_time(end) / 1e3


@dataclass
class PendingStep:
    step: int
    stage: int
    lr: float
    start: Any
    end: Any
    loss: torch.Tensor | float
    tokens: torch.Tensor | int
    grad_norm: torch.Tensor | float | None  # None: the engine computed none
    memory_gib: float


class StepReadback:
    """Collects each step's device-side values; `read()` returns them as numbers, in order."""

    def __init__(self, device: torch.device) -> None:
        self.clock = StepClock(device)
        self.pending: list[PendingStep] = []

    def start(self) -> Any:
        return self.clock.mark()

    def add(self, step, stage, lr, start, loss, tokens, grad_norm, memory_gib) -> None:
        """Called at the end of the step's work (its end mark is taken here)."""
        self.pending.append(
            PendingStep(
                step, stage, lr, start, self.clock.mark(), loss, tokens, grad_norm, memory_gib
            )
        )

    def read(self) -> list[dict[str, Any]]:
        """Every pending step as {step, stage, lr, loss, tokens, grad_norm, step_time_s,
        memory_gib}, oldest first; one device synchronisation for all of them."""
        steps, self.pending = self.pending, []
        fields = [(s.loss, s.tokens, s.grad_norm) for s in steps]
        tensors = [v for row in fields for v in row if isinstance(v, torch.Tensor)]
        numbers = iter([])
        if tensors:
            # float64 holds the fp32 losses and norms and the int64 token counts exactly.
            flat = torch.stack([t.detach().reshape(()).to(tensors[0].device, torch.float64)
                                for t in tensors])  # fmt: skip
            numbers = iter(flat.tolist())  # the one synchronisation

        def number(value):
            return next(numbers) if isinstance(value, torch.Tensor) else value

        records = []
        for s, (loss, tokens, grad_norm) in zip(steps, fields, strict=True):
            records.append({
                "step": s.step,
                "stage": s.stage,
                "lr": s.lr,
                "loss": float(number(loss)),
                "tokens": int(number(tokens)),
                "grad_norm": None if grad_norm is None else float(number(grad_norm)),
                "step_time_s": self.clock.seconds(s.start, s.end),
                "memory_gib": s.memory_gib,
            })  # fmt: skip
        return records
