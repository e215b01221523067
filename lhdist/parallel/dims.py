"""The dp x cp mesh: process-group setup and the purpose-named groups every other module takes.

Global rank = dp_rank * cp_degree + cp_rank, so the CP ranks of a group are consecutive global
ranks (on one node, or on neighbouring nodes, for the ring's point-to-point traffic).
  cp_group:   the cp_degree ranks that share one sample; attention collectives run here.
  grad_group: all dp_degree * cp_degree ranks; gradients are reduced here.
  dp_rank / dp_degree: which sample stream a rank reads (all CP ranks of a group read the same).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """What `init_distributed` found: this process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain `python` run becomes a 1-rank group.

    backend: None picks nccl when CUDA is available, else gloo. timeout_s bounds every
    collective (a hung rank fails the job instead of stalling it forever). On CUDA the device
    is set to LOCAL_RANK first. Calling it again when already initialised just reports.
    """
    if dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
            dist.get_backend(),
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(seconds=timeout_s)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if "nccl" in backend:
        if not torch.cuda.is_available():
            raise ValueError(
                "parallel.backend=nccl needs CUDA devices, and this machine has none; use "
                "parallel.backend=gloo (or auto)"
            )
        torch.cuda.set_device(local_rank)
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        raise ValueError(
            f"SLURM_NTASKS={os.environ['SLURM_NTASKS']} but RANK/WORLD_SIZE are not set: start "
            "the ranks with torchrun (one task per node), or export RANK, WORLD_SIZE, "
            "LOCAL_RANK, MASTER_ADDR and MASTER_PORT per task"
        )
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(
            backend,
            init_method="env://",
            timeout=timeout,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    else:  # single process: an in-memory store, no port to pick
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def destroy_distributed() -> None:
    """Tear down the default process group (and every subgroup) if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class ParallelDims:
    """dp_degree x cp_degree = world_size ranks; validated on construction (no collectives).

    The mesh maths (`cp_rank_of`, `cp_group_ranks`, ...) works without a process group, e.g.
    to dry-run a large layout. `build_groups()` creates the groups; it is a collective call on
    every rank of the default group.
    """

    dp_degree: int
    cp_degree: int
    world_size: int
    rank: int = 0
    """This process's global rank (set from the default group by `build_groups`)."""
    _cp_group: dist.ProcessGroup | None = field(default=None, init=False, repr=False)
    _grad_group: dist.ProcessGroup | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("dp_degree", "cp_degree", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.dp_degree * self.cp_degree != self.world_size:
            raise ValueError(
                f"dp_degree * cp_degree = {self.dp_degree} * {self.cp_degree} = "
                f"{self.dp_degree * self.cp_degree} must equal world_size={self.world_size}"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")

    # mesh maths ------------------------------------------------------------------------------

    def cp_rank_of(self, rank: int) -> int:
        return rank % self.cp_degree

    def dp_rank_of(self, rank: int) -> int:
        return rank // self.cp_degree

    def cp_group_ranks(self, dp_rank: int) -> list[int]:
        """Global ranks of the CP group that reads data stream `dp_rank` (consecutive)."""
        return list(range(dp_rank * self.cp_degree, (dp_rank + 1) * self.cp_degree))

    @property
    def cp_rank(self) -> int:
        return self.cp_rank_of(self.rank)

    @property
    def dp_rank(self) -> int:
        return self.dp_rank_of(self.rank)

    # groups ----------------------------------------------------------------------------------

    def build_groups(self) -> ParallelDims:
        """Create cp_group and grad_group on the initialised default group; returns self.

        Every rank must call this (each rank takes part in creating every group)."""
        if not dist.is_initialized():
            raise RuntimeError(
                "build_groups needs torch.distributed initialised (call init_distributed first)"
            )
        if dist.get_world_size() != self.world_size:
            raise ValueError(
                f"ParallelDims.world_size={self.world_size} but the process group "
                f"has {dist.get_world_size()} ranks"
            )
        self.rank = dist.get_rank()
        world = dist.group.WORLD
        if self.cp_degree == self.world_size:
            self._cp_group = world
        else:
            for dp_rank in range(self.dp_degree):
                group = dist.new_group(self.cp_group_ranks(dp_rank))
                if dp_rank == self.dp_rank:
                    self._cp_group = group
        self._grad_group = world
        return self

    @property
    def cp_group(self) -> dist.ProcessGroup:
        """The CP group of this rank (attention collectives)."""
        if self._cp_group is None:
            raise RuntimeError("ParallelDims.build_groups() has not been called")
        return self._cp_group

    @property
    def grad_group(self) -> dist.ProcessGroup:
        """All dp x cp ranks (gradient reduction)."""
        if self._grad_group is None:
            raise RuntimeError("ParallelDims.build_groups() has not been called")
        return self._grad_group
