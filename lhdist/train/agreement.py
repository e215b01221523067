"""Checks that end alike on every rank: a user error found by one rank is raised by all, with
the same message, instead of one rank exiting while the others wait in a collective.

`agree(fn)`: every rank runs `fn`; the outcomes are all-gathered. `decide_on_rank0(fn)`: rank 0
runs `fn` (a decision others must share, e.g. which checkpoint to resume) and broadcasts it.
Only user errors (`lhdist.errors.is_user_error`) travel; anything else is raised where it
happened and the watchdog names that rank to the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from lhdist.errors import describe, is_user_error

T = TypeVar("T")


class AgreedError(ValueError):
    """A user error one rank found, raised on every rank."""


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _run(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    try:
        return fn(), None
    except Exception as e:
        if not is_user_error(e):
            raise
        return None, describe(e)


def agree(fn: Callable[[], T]) -> T:
    """`fn()` on every rank; if it raised a user error anywhere, every rank raises the first
    failing rank's message (naming that rank)."""
    world = _world()
    if world == 1:
        return fn()
    result, error = _run(fn)
    errors: list[Any] = [None] * world
    dist.all_gather_object(errors, error)
    for rank, message in enumerate(errors):
        if message is not None:
            raise AgreedError(f"{message} (found by rank {rank})")
    return result  # type: ignore[return-value]


def decide_on_rank0(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only; its result (or user error) is every rank's."""
    if _world() == 1:
        return fn()
    box: list[Any] = [_run(fn) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise AgreedError(error)
    return result  # type: ignore[return-value]
