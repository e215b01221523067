"""Autograd-aware collectives, the ring's point-to-point exchange, and communication accounting.

Legend: B batch, N global sequence, S local length, H query heads, G kv heads, D head dim;
W the size of the group a call runs over.

Every collective here takes its group as an argument and works on gloo (CPU, CI) and NCCL (GPU).
If gloo lacks one on the installed torch, the fallback lives here, never in callers.
`CommStats` counts the bytes this rank sends, per collective kind and autograd phase.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

ProcessGroup = dist.ProcessGroup
COMM_KINDS = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all", "ring", "check")
PHASES = ("forward", "backward")

# ---------------------------------------------------------------------------------------------
# accounting

_active_stats: list[CommStats] = []


class CommStats:
    """Bytes this rank sends (and calls it makes), per collective kind and autograd phase.

    Use it as a context manager around the calls to measure:

        with CommStats() as stats:
            out = ring_attention(q, k, v, group=cp_group)
        out.sum().backward()
        stats.bytes_sent("ring", phase="forward"), stats.bytes_sent("ring")  # fwd, fwd+bwd

    Autograd functions keep the recorders that were open in their forward, so their backward
    traffic lands in the same `CommStats` even when backward runs after the block has closed.
    Kinds: all_gather, reduce_scatter, all_reduce, all_to_all, ring (point-to-point), check
    (config checks).
    Bytes are the logical payload leaving this rank (what a gloo fallback does is not counted).
    """

    def __init__(self) -> None:
        self._bytes: Counter[tuple[str, str]] = Counter()
        self._calls: Counter[tuple[str, str]] = Counter()

    def record(self, kind: str, nbytes: int, phase: str = "forward") -> None:
        """Add one call of `kind` that sent `nbytes` bytes from this rank."""
        if kind not in COMM_KINDS or phase not in PHASES:
            raise ValueError(f"kind={kind!r} must be in {COMM_KINDS}, phase={phase!r} in {PHASES}")
        self._bytes[kind, phase] += int(nbytes)
        self._calls[kind, phase] += 1

    def bytes_sent(self, kind: str | None = None, phase: str | None = None) -> int:
        """Bytes sent by this rank, optionally restricted to one kind and/or phase."""
        return sum(n for (k, p), n in self._bytes.items() if _match(k, p, kind, phase))

    def num_calls(self, kind: str | None = None, phase: str | None = None) -> int:
        """Number of collective calls (a ring step counts one), optionally filtered."""
        return sum(n for (k, p), n in self._calls.items() if _match(k, p, kind, phase))

    def as_dict(self) -> dict[str, int]:
        """{"ring/forward": bytes, ...} for logging."""
        return {f"{k}/{p}": n for (k, p), n in sorted(self._bytes.items())}

    def reset(self) -> None:
        self._bytes.clear()
        self._calls.clear()

    def __enter__(self) -> CommStats:
        _active_stats.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active_stats.remove(self)

    def __repr__(self) -> str:
        return f"CommStats({self.as_dict()})"


def _match(k: str, p: str, kind: str | None, phase: str | None) -> bool:
    return (kind is None or k == kind) and (phase is None or p == phase)


def active_comm_stats() -> tuple[CommStats, ...]:
    """The recorders open now; autograd functions keep this tuple for their backward."""
    return tuple(_active_stats)


def record_comm(
    kind: str, nbytes: int, phase: str = "forward", stats: tuple[CommStats, ...] | None = None
) -> None:
    """Record one call in `stats` (default: every open recorder)."""
    for s in active_comm_stats() if stats is None else stats:
        s.record(kind, nbytes, phase)


# ---------------------------------------------------------------------------------------------
# raw collectives along dim 0 (no autograd), with the gloo fallbacks

# Collectives found missing in this torch's gloo at first use; from then on the fallback runs.
_gloo_missing: set[str] = set()


def _is_gloo(group: ProcessGroup | None) -> bool:
    return dist.get_backend(group) == "gloo"


def _run_with_gloo_fallback(name: str, group: ProcessGroup | None, native, fallback) -> Any:
    gloo = _is_gloo(group)
    if not (gloo and name in _gloo_missing):
        try:
            return native()
        except (RuntimeError, NotImplementedError) as err:
            # Only an "unsupported" refusal falls back: it is raised on every gloo rank before
            # anything is sent, so all ranks switch together. Real failures propagate.
            text = str(err).lower()
            unsupported = any(s in text for s in ("not support", "unsupported", "not implement"))
            if not (gloo and unsupported):
                raise
            _gloo_missing.add(name)
    return fallback()


def comm_device(group: ProcessGroup | None) -> torch.device:
    """Device of the small tensors this group exchanges (cuda for NCCL, else cpu)."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_dim0(x: Tensor, group: ProcessGroup | None) -> Tensor:
    world = dist.get_world_size(group)
    x = x.contiguous()
    out = x.new_empty((world * x.shape[0], *x.shape[1:]))
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

    def fallback() -> None:
        dist.all_gather(list(out.chunk(world)), x, group=group)

    _run_with_gloo_fallback(
        "all_gather", group, lambda: gather_single(out, x, group=group), fallback
    )
    return out


def _reduce_scatter_dim0(x: Tensor, group: ProcessGroup | None) -> Tensor:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    x = x.contiguous()
    out = x.new_empty((x.shape[0] // world, *x.shape[1:]))
    scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

    def fallback() -> None:
        total = x.clone()
        dist.all_reduce(total, group=group)
        out.copy_(total.chunk(world)[rank])

    _run_with_gloo_fallback(
        "reduce_scatter", group, lambda: scatter_single(out, x, group=group), fallback
    )
    return out


def _all_to_all_dim0(
    x: Tensor, in_splits: list[int], out_splits: list[int], group: ProcessGroup | None
) -> Tensor:
    x = x.contiguous()
    out = x.new_empty((sum(out_splits), *x.shape[1:]))

    def native() -> None:
        dist.all_to_all_single(out, x, out_splits, in_splits, group=group)

    def fallback() -> None:  # point-to-point pairs; the self part is a local copy
        rank = dist.get_rank(group)
        sends, recvs = list(x.split(in_splits)), list(out.split(out_splits))
        recvs[rank].copy_(sends[rank])
        ops = []
        for peer in range(dist.get_world_size(group)):
            if peer != rank and in_splits[peer]:
                ops.append(dist.P2POp(dist.isend, sends[peer], _global(group, peer), group))
            if peer != rank and out_splits[peer]:
                ops.append(dist.P2POp(dist.irecv, recvs[peer], _global(group, peer), group))
        for work in dist.batch_isend_irecv(ops) if ops else []:
            work.wait()

    _run_with_gloo_fallback("all_to_all", group, native, fallback)
    return out


def _global(group: ProcessGroup | None, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


# ---------------------------------------------------------------------------------------------
# autograd-aware collectives


class _AllGather(torch.autograd.Function):
    """y = concat over ranks of x along `dim`.

    Gradient: every rank's y feeds its own loss and the objective is their sum, so the gradient
    of x is the sum over ranks of their dy, sliced at this rank's block (a reduce-scatter-sum).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, group: ProcessGroup | None) -> Tensor:
        ctx.dim, ctx.group, ctx.stats = dim, group, active_comm_stats()
        world = dist.get_world_size(group)
        record_comm("all_gather", x.numel() * x.element_size() * (world - 1), "forward", ctx.stats)
        y = _all_gather_dim0(x.movedim(dim, 0), group)
        return y.movedim(0, dim)

    @staticmethod
    def backward(ctx, dy: Tensor):
        world = dist.get_world_size(ctx.group)
        record_comm(
            "reduce_scatter",
            dy.numel() * dy.element_size() * (world - 1) // world,
            "backward",
            ctx.stats,
        )
        dx = _reduce_scatter_dim0(dy.movedim(ctx.dim, 0), ctx.group)
        return dx.movedim(0, ctx.dim), None, None


class _ReduceScatter(torch.autograd.Function):
    """y = this rank's block (along `dim`) of the sum over ranks of x.

    Gradient: x fed every rank's block, so dx is the concatenation of all ranks' dy
    (an all-gather).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, group: ProcessGroup | None) -> Tensor:
        ctx.dim, ctx.group, ctx.stats = dim, group, active_comm_stats()
        world = dist.get_world_size(group)
        record_comm(
            "reduce_scatter",
            x.numel() * x.element_size() * (world - 1) // world,
            "forward",
            ctx.stats,
        )
        return _reduce_scatter_dim0(x.movedim(dim, 0), group).movedim(0, dim)

    @staticmethod
    def backward(ctx, dy: Tensor):
        world = dist.get_world_size(ctx.group)
        record_comm(
            "all_gather", dy.numel() * dy.element_size() * (world - 1), "backward", ctx.stats
        )
        dx = _all_gather_dim0(dy.movedim(ctx.dim, 0), ctx.group)
        return dx.movedim(0, ctx.dim), None, None


class _AllToAll(torch.autograd.Function):
    """Rows [sum(in_splits[:p]), +in_splits[p]) of x go to rank p; y stacks what each rank sent.

    Gradient: each output row is a copy of one input row elsewhere, so dy travels back the same
    way reversed (an all-to-all with in/out splits swapped).
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, in_splits: list[int], out_splits: list[int], group: ProcessGroup | None
    ) -> Tensor:
        ctx.in_splits, ctx.out_splits, ctx.group = in_splits, out_splits, group
        ctx.stats = active_comm_stats()
        rank = dist.get_rank(group)
        row_bytes = x[:1].numel() * x.element_size()
        record_comm(
            "all_to_all", (sum(in_splits) - in_splits[rank]) * row_bytes, "forward", ctx.stats
        )
        return _all_to_all_dim0(x, in_splits, out_splits, group)

    @staticmethod
    def backward(ctx, dy: Tensor):
        rank = dist.get_rank(ctx.group)
        row_bytes = dy[:1].numel() * dy.element_size()
        record_comm(
            "all_to_all",
            (sum(ctx.out_splits) - ctx.out_splits[rank]) * row_bytes,
            "backward",
            ctx.stats,
        )
        dx = _all_to_all_dim0(dy, ctx.out_splits, ctx.in_splits, ctx.group)
        return dx, None, None, None


def all_gather(x: Tensor, dim: int, group: ProcessGroup | None) -> Tensor:
    """Concatenate every rank's x along `dim` in group-rank order (equal shapes on all ranks).

    Gradient: reduce-scatter-sum of the output gradient (each rank's loss uses the gathered
    tensor; x's gradient is the sum of all ranks' gradients for x's block).
    """
    if dist.get_world_size(group) == 1:
        return x
    return _AllGather.apply(x, dim % x.dim(), group)


def reduce_scatter(x: Tensor, dim: int, group: ProcessGroup | None) -> Tensor:
    """Sum x over ranks and keep this rank's 1/W block along `dim` (x.shape[dim] % W == 0).

    Gradient: all-gather of the output gradient.
    """
    world = dist.get_world_size(group)
    if x.shape[dim] % world:
        raise ValueError(
            f"reduce_scatter: size {x.shape[dim]} of dim {dim} must be divisible "
            f"by the group size {world}"
        )
    if world == 1:
        return x
    return _ReduceScatter.apply(x, dim % x.dim(), group)


def all_to_all(
    x: Tensor, in_splits: Sequence[int], out_splits: Sequence[int], group: ProcessGroup | None
) -> Tensor:
    """Exchange rows of x (dim 0) between ranks, with uneven splits.

    x [sum(in_splits), ...]: rows [sum(in_splits[:p]), +in_splits[p]) go to group rank p.
    Returns [sum(out_splits), ...]: out_splits[p] rows from rank p, in rank order; out_splits[p]
    must equal rank p's in_splits[this rank].
    Gradient: the reverse all-to-all of the output gradient (splits swapped).
    """
    world = dist.get_world_size(group)
    in_splits, out_splits = [int(s) for s in in_splits], [int(s) for s in out_splits]
    if len(in_splits) != world or len(out_splits) != world:
        raise ValueError(
            f"all_to_all: in_splits ({len(in_splits)}) and out_splits "
            f"({len(out_splits)}) need one entry per rank of the group ({world})"
        )
    if sum(in_splits) != x.shape[0]:
        raise ValueError(
            f"all_to_all: sum(in_splits)={sum(in_splits)} must equal x.shape[0]={x.shape[0]}"
        )
    if world == 1:
        return x
    return _AllToAll.apply(x, in_splits, out_splits, group)


# ---------------------------------------------------------------------------------------------
# ring point-to-point


class RingTransfer:
    """An in-flight ring exchange; `wait()` returns the received tensor."""

    def __init__(self, sent: Tensor, received: Tensor, works: list[Any]) -> None:
        # Holding `sent` keeps its memory alive (and unreused) until the send has completed.
        self._sent, self._received, self._works = sent, received, works

    def wait(self) -> Tensor:
        for work in self._works:
            work.wait()
        self._works, self._sent = [], None
        return self._received


class RingComm:
    """Send to the next rank of `group`, receive from the previous one, asynchronously.

    `start(x)` posts both halves at once (dist.batch_isend_irecv) and returns a `RingTransfer`,
    so the caller computes on the current block while the next one travels. Concurrent
    transfers need distinct `tag`s (gloo matches messages by tag; NCCL keeps issue order).
    """

    def __init__(
        self,
        group: ProcessGroup | None,
        phase: str = "forward",
        stats: tuple[CommStats, ...] | None = None,
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.next_rank = _global(group, (self.rank + 1) % self.world_size)
        self.prev_rank = _global(group, (self.rank - 1) % self.world_size)
        self.phase = phase
        self.stats = active_comm_stats() if stats is None else stats

    def start(self, x: Tensor, tag: int = 0) -> RingTransfer:
        """Send x (contiguous) to the next rank; receive a tensor like x from the previous."""
        x = x.contiguous()
        received = torch.empty_like(x)
        record_comm("ring", x.numel() * x.element_size(), self.phase, self.stats)
        ops = [
            dist.P2POp(dist.isend, x, self.next_rank, self.group, tag),
            dist.P2POp(dist.irecv, received, self.prev_rank, self.group, tag),
        ]
        return RingTransfer(x, received, dist.batch_isend_irecv(ops))


# ---------------------------------------------------------------------------------------------
# config agreement


def all_reduce_sum_(x: Tensor, group: ProcessGroup | None, count: bool = True) -> Tensor:
    """x summed over the ranks of `group`, in place (no autograd); returns x. Counted as a ring
    all-reduce sends: 2 * (W-1) / W of x per rank (`count=False`: not counted)."""
    world = dist.get_world_size(group)
    if count:
        record_comm("all_reduce", 2 * (world - 1) * -(-x.numel() // world) * x.element_size())
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


# (id(group), what, values) already found equal on every rank (see `once_per_config`).
_agreed_configs: set[tuple[int, str, tuple[int, ...]]] = set()


def check_same_across_ranks(
    values: Sequence[int],
    group: ProcessGroup | None,
    what: str,
    names: Sequence[str] | None = None,
    once_per_config: bool = False,
) -> None:
    """Raise ValueError on every rank unless all ranks of `group` passed the same `values`.

    A CP op calls this before any other collective, so a rank with a different shape or layout
    fails with both values in the message instead of hanging in a mismatched collective. Every
    rank must pass the same number of values (the same code path does).
    once_per_config: skip the exchange when these exact values already agreed on this group
    (a hot path then pays one small all-gather, and on GPU one host sync, per new shape only;
    a rank that alone changes its values later is not caught).
    """
    world = dist.get_world_size(group)
    if world == 1:
        return
    values = tuple(int(v) for v in values)
    key = (id(group), what, values)
    if once_per_config and key in _agreed_configs:
        return
    local = torch.tensor(values, dtype=torch.int64, device=comm_device(group))
    record_comm("check", local.numel() * local.element_size() * (world - 1))
    gathered = _all_gather_dim0(local[None], group).cpu()
    rows = [tuple(r.tolist()) for r in gathered]
    if all(r == rows[0] for r in rows):
        if once_per_config:
            _agreed_configs.add(key)
        return

    def fmt(row: tuple[int, ...]) -> str:
        if names is None:
            return str(row)
        return "(" + ", ".join(f"{n}={v}" for n, v in zip(names, row, strict=True)) + ")"

    rank = dist.get_rank(group)
    other = next(i for i, r in enumerate(rows) if r != rows[rank])
    seen = "; ".join(f"rank {i}: {fmt(r)}" for i, r in enumerate(rows))
    raise ValueError(
        f"{what} differs across the ranks of the group: this rank ({rank}) has {fmt(rows[rank])} "
        f"but rank {other} has {fmt(rows[other])} (all ranks: {seen})"
    )
