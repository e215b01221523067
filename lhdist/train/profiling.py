"""train.profile_steps: a torch.profiler trace of each window [first, last] of steps into
<run_dir>/profile/.

The trace is chrome-trace JSON (open it in https://ui.perfetto.dev or chrome://tracing; the
bench's time split reads it). The loop's phases (data, forward, backward, optimizer step) are
named ranges `lhdist.<phase>` in it; outside the profiled steps nothing is recorded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.autograd.profiler import record_function

PHASE_PREFIX = "lhdist."
PROFILE_DIR = "profile"


def trace_path(run_dir: Path, rank: int, first: int, last: int) -> Path:
    return Path(run_dir) / PROFILE_DIR / f"trace_rank{rank}_steps{first}-{last}.json"


class StepProfiler:
    """Starts torch.profiler at the first step of each window, stops and writes the trace after
    its last step; does nothing when `steps` (flat [first, last, first, last, ...]) is empty."""

    def __init__(self, steps: list[int], run_dir: Path, rank: int, device: torch.device) -> None:
        self.windows = dict(zip(steps[::2], steps[1::2]))  # first step -> last step
        self.first = self.last = None
        self.run_dir, self.rank, self.device = Path(run_dir), rank, device
        self.profile: torch.profiler.profile | None = None
        self.range: record_function | None = None

    @property
    def active(self) -> bool:
        return self.profile is not None

    def step_started(self, step: int) -> None:
        if step not in self.windows:
            return
        self.first, self.last = step, self.windows[step]
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(self.device)  # earlier steps' kernels stay out of the trace
        self.profile = torch.profiler.profile(activities=activities)
        self.profile.__enter__()

    def phase(self, name: str | None) -> None:
        """End the current phase range and, unless `name` is None, start `lhdist.<name>`."""
        if self.range is not None:
            self.range.__exit__(None, None, None)
            self.range = None
        if self.active and name is not None:
            self.range = record_function(PHASE_PREFIX + name.replace(" ", "_"))
            self.range.__enter__()

    def step_ended(self, step: int) -> Path | None:
        """After the last profiled step: stop, write the trace and return its path."""
        if step != self.last or not self.active:
            return None
        self.phase(None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # every kernel of the last step in the trace
        self.profile.__exit__(None, None, None)
        path = trace_path(self.run_dir, self.rank, self.first, self.last)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.profile.export_chrome_trace(str(path))
        self.profile = None
        return path
