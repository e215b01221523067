"""Sequence sharding over a CP group: which tokens (and positions) each rank holds, and back.

Legend: B batch, N global sequence, S local length (N / W), W CP group size.

Layouts cut the sequence into equal chunks:
  contiguous: W chunks, rank r holds chunk r (tokens [r*N/W, (r+1)*N/W)).
  zigzag:     2W chunks, rank r holds chunks r and 2W-1-r, in that order; every rank then does the
              same amount of causal attention work.
A rank's chunks are always in ascending global order, so its local tokens are position-sorted.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lhdist.parallel.collectives import all_gather

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str) -> None:
    """ValueError unless `layout` is a known layout name."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}")


def num_chunks(world_size: int, layout: str) -> int:
    """Chunks the global sequence is cut into: W (contiguous) or 2W (zigzag)."""
    check_layout(layout)
    return world_size if layout == "contiguous" else 2 * world_size


def local_chunk_ids(rank: int, world_size: int, layout: str) -> tuple[int, ...]:
    """Global chunk indices held by `rank`, ascending (its local order)."""
    check_layout(layout)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    return (rank,) if layout == "contiguous" else (rank, 2 * world_size - 1 - rank)


def check_divisible(seq_len: int, world_size: int, layout: str) -> None:
    """ValueError unless `seq_len` splits into equal chunks for this layout and group size."""
    chunks = num_chunks(world_size, layout)
    if seq_len % chunks:
        rule = "world_size" if layout == "contiguous" else "2*world_size"
        raise ValueError(
            f"seq_len={seq_len} must be divisible by {rule}={chunks} for the {layout} layout"
        )


def shard_sequence(
    x: Tensor, rank: int, world_size: int, layout: str = "contiguous", dim: int = 1
) -> Tensor:
    """This rank's tokens of x (the full sequence along `dim`), concatenated in local order.

    Differentiable (slicing and concatenation). [.., N, ..] -> [.., N/W, ..].
    """
    check_divisible(x.shape[dim], world_size, layout)
    chunk = x.shape[dim] // num_chunks(world_size, layout)
    parts = [x.narrow(dim, c * chunk, chunk) for c in local_chunk_ids(rank, world_size, layout)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def shard_positions(
    seq_len: int,
    rank: int,
    world_size: int,
    layout: str = "contiguous",
    device: torch.device | str | None = None,
) -> Tensor:
    """Global position ids (int64 [N/W]) of the tokens `shard_sequence` gives this rank."""
    return shard_sequence(torch.arange(seq_len, device=device), rank, world_size, layout, dim=0)


def unshard_sequence(
    x_local: Tensor, group: dist.ProcessGroup | None, layout: str = "contiguous", dim: int = 1
) -> Tensor:
    """The full sequence from every rank's shard: all-gather along `dim`, then global order.

    [.., N/W, ..] -> [.., N, ..] on every rank. Gradient: each rank's shard receives the sum over
    ranks of the gradients of its tokens (the all-gather's reduce-scatter).
    """
    world = dist.get_world_size(group)
    check_divisible(x_local.shape[dim] * world, world, layout)
    gathered = all_gather(x_local, dim, group)
    if layout == "contiguous":
        return gathered
    # gathered holds chunks (0, 2W-1, 1, 2W-2, ...): slot of chunk c is 2c for c < W, else
    # 2(2W-1-c)+1.
    chunk = x_local.shape[dim] // 2
    slots = [2 * c if c < world else 2 * (2 * world - 1 - c) + 1 for c in range(2 * world)]
    return torch.cat([gathered.narrow(dim, s * chunk, chunk) for s in slots], dim=dim)
