"""Lighthouse attention over a sequence sharded across a CP group, exactly equal to the
single-device op on the whole sequence.

Legend: B batch, N global sequence, n chunks per rank, N_c chunk length, Bn = B*n (a rank's
chunks side by side as a batch), Pc coarse pyramid length of a chunk, S selected length
(global), S_c its share per chunk, S_loc = n*S_c this rank's share, H query heads, G kv heads,
D head dim, W group size, R rows.

A rank's chunks are contiguous in its shard, so [B, n*N_c, ...] is viewed as a batch of chunks
[Bn, N_c, ...] at no cost: the pyramid, scores, gather and scatter run once over all of them
with the single-device kernels, touching the full-length tensors as often as one device does.

  tile:   tiles lie inside chunks, so each chunk selects alone (`select_and_gather` on the
          chunk batch) and contributes S_c entries; the chunks' gathered sequences in global
          order are the single-device one, attended causally across ranks (`ring_attention`,
          or k/v of the short gathered sequence all-gathered).
  global: one cascade over the whole sequence; level by level the scores of the candidate
          windows are exchanged (each owner fills its own, zeros elsewhere, one all-reduce
          sums them), every rank computes the same top-k, and q/k/v rows move to the rank
          that attends them (all-to-all, orders from `global_routes`), outputs come back the
          same way.
Then every chunk scatters its entries' outputs, and the spans of its last windows (one per
level 2..L) that run past the chunk are added to the next chunk's first positions: a halo of
L-1 rows per chunk, all-gathered.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from lhdist.ops.flat_rows import (
    FlatEntries,
    gather_flat,
    rows_to_share,
    scatter_flat_with_spill,
    share_to_rows,
)
from lhdist.ops.lighthouse import select_and_gather
from lhdist.ops.pyramid import coarse_pyramid, group_max, score_pyramid
from lhdist.ops.scatter import add_halo_, scatter_entries_with_spill
from lhdist.ops.selection import cascade
from lhdist.ops.selection_graph import graph_applies, replay_graph
from lhdist.ops.spec import TILE_BUDGET, LighthouseSpec, check_qkv
from lhdist.parallel.allgather_attention import allgather_attention
from lhdist.parallel.collectives import (
    all_gather,
    all_reduce_sum_,
    all_to_all,
    check_same_across_ranks,
)
from lhdist.parallel.global_routes import Routes, route_entries
from lhdist.parallel.ring_attention import ring_attention_heads_first
from lhdist.parallel.sharding import LAYOUTS, check_layout, local_chunk_ids, num_chunks

ATTENTIONS = ("allgather", "ring")


def _check_layout_fits(spec: LighthouseSpec, N: int, chunks: int, layout: str) -> None:
    S = spec.selected_length(N)
    if spec.selection == "tile" and spec.num_tiles % chunks:
        raise ValueError(
            f"tile selection under CP needs tiles on chunk boundaries: topk/{TILE_BUDGET}="
            f"{spec.num_tiles} tiles must be divisible by the {chunks} chunks of the {layout} "
            f"layout (raise topk or use selection='global')"
        )
    if (N // chunks) % spec.coarsest_window:
        raise ValueError(
            f"chunk length N/{chunks}={N // chunks} must be a multiple of "
            f"pooling_factor**(num_levels-1)={spec.coarsest_window} so no window spans two ranks"
        )
    if S % chunks:
        raise ValueError(
            f"the selected length S={S} must split into the {chunks} chunks of the {layout} layout"
        )


def lighthouse_cp_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: LighthouseSpec,
    group: dist.ProcessGroup | None,
    layout: str = "zigzag",
    attention: str = "ring",
) -> Tensor:
    """This rank's shard of `lighthouse_attention` on the whole sequence, with autograd.

    attention: how the gathered sequence is attended across ranks: "ring" (`ring_attention`,
    the default, faster on 2 H200s) or "allgather" (its k/v, only O(S*G*D), gathered on
    every rank; `benchmarks/bench_cp.py --attentions ring,allgather` compares them).

    q [B, N/W, H, D], k/v [B, N/W, G, D]: this rank's shard (`shard_sequence` with `layout`).
    Returns [B, N/W, H, D]. Gradients cross ranks through every collective: the all-to-all's
    gradient is the reverse all-to-all, the halo all-gather's is a reduce-scatter-sum, the ring's
    is a backward ring. Every rank of `group` must call it with the same shapes and spec; a
    mismatch raises ValueError on every rank.
    """
    world = dist.get_world_size(group) if group is not None or dist.is_initialized() else 1
    rank = dist.get_rank(group) if world > 1 else 0
    check_layout(layout)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention={attention!r} must be one of {ATTENTIONS}")
    if spec.scatter != "sum":
        raise ValueError(
            f"spec.scatter={spec.scatter!r}: context parallelism scatters by sum only (the mean's "
            "divisor would need the neighbours' spans); use scatter='sum' or one process"
        )
    if world > 1:
        _check_same_call(q, k, spec, layout, group)
    chunks = num_chunks(world, layout)
    N_local = q.shape[1]
    N = N_local * world
    if N_local % (chunks // world):
        raise ValueError(f"local length {N_local} must split into {chunks // world} chunks")
    check_qkv(q, k, v, spec, seq_len=N)
    _check_layout_fits(spec, N, chunks, layout)
    N_c = N // chunks
    my_chunks = local_chunk_ids(rank, world, layout)
    B, _, H, D = q.shape
    n = len(my_chunks)
    as_chunks = lambda t: t.reshape(B * n, N_c, *t.shape[2:])  # noqa: E731  a free view

    if spec.selection == "tile":
        chunk_spec = dataclasses.replace(spec, topk=spec.topk // chunks)
        out, spill = _tile(as_chunks(q), as_chunks(k), as_chunks(v), chunk_spec, n, group,
                           layout, attention)  # fmt: skip
    else:
        out, spill = _global(
            as_chunks(q), as_chunks(k), as_chunks(v), spec, N, my_chunks, group, layout, attention
        )
    out = _add_previous_spill_(out, spill, spec, B, my_chunks, world, group, layout)
    return out.view(B, N_local, H, D)


def _add_previous_spill_(out, spill, spec, B, my_chunks, world, group, layout) -> Tensor:
    """Each chunk's output [Bn, N_c, H, D] += the spill of the chunk before it (in place)."""
    n = len(my_chunks)
    L1, H, D = spill.shape[1:]
    spills_local = spill.view(B, n, L1, H, D).transpose(0, 1)  # [n, B, L-1, H, D]
    spills = all_gather(spills_local.contiguous(), 0, group) if world > 1 else spills_local
    # Row 0 is the (empty) spill before chunk 0. Every rank reads through the gathered tensor,
    # so every rank runs its backward (a collective) even when it has no previous chunk.
    spills = torch.cat([torch.zeros_like(spills[:1]), spills])
    order = [c for r in range(world) for c in local_chunk_ids(r, world, layout)]
    prev_rows = [order.index(c - 1) + 1 if c > 0 else 0 for c in my_chunks]  # ints: no H2D sync
    prev = torch.stack([spills[row] for row in prev_rows], dim=1).reshape(B * n, L1, H, D)
    return add_halo_(out, prev, spec)


def _check_same_call(q, k, spec, layout, group) -> None:
    check_same_across_ranks(
        [*q.shape, *k.shape, spec.num_levels, spec.pooling_factor, spec.topk,
         spec.selection == "global", LAYOUTS.index(layout)],
        group,
        "lighthouse_cp_attention arguments",
        names=["B", "N_local", "H", "D", "B_k", "N_local_k", "G", "D_k", "num_levels",
               "pooling_factor", "topk", "global_selection", "layout"],
        once_per_config=True,
    )  # fmt: skip


def _attend(q_BHSD, k_BGSD, v_BGSD, group, layout, attention):
    if group is None and not dist.is_initialized():
        return torch.nn.functional.scaled_dot_product_attention(
            q_BHSD, k_BGSD, v_BGSD, is_causal=True, enable_gqa=q_BHSD.shape[1] != k_BGSD.shape[1]
        )
    if attention == "allgather":
        qkv = (x.transpose(1, 2) for x in (q_BHSD, k_BGSD, v_BGSD))
        return allgather_attention(*qkv, group=group, layout=layout).transpose(1, 2)
    return ring_attention_heads_first(q_BHSD, k_BGSD, v_BGSD, group, layout, causal=True)


def _tile(q_c, k_c, v_c, chunk_spec, n, group, layout, attention) -> tuple[Tensor, Tensor]:
    """Tile mode: every chunk selects and gathers alone, written straight into this rank's
    gathered sequence [B, heads, n*S_c, D] (its chunks in local order); (out [Bn, N_c, H, D],
    spill)."""
    q_sel, k_sel, v_sel, idx_BnGS = select_and_gather(q_c, k_c, v_c, chunk_spec, chunks=n)
    o_BHSD = _attend(q_sel, k_sel, v_sel, group, layout, attention)
    return scatter_entries_with_spill(o_BHSD, idx_BnGS, chunk_spec, q_c.shape[1], chunks=n)


@torch.no_grad()
def _select_and_route(score_q, score_k, spec, N, my_chunks, rank, world, group, layout) -> Routes:
    """The global cascade over the scores of this rank's chunks [Bn, G, N_c], then this rank's
    routes for its entries (`route_entries`).

    On CUDA both are replayed from CUDA graphs cut at the score exchanges, which run eagerly in
    between (`replay_graph`): a few hundred small launches per call would otherwise leave the
    GPU waiting, and NCCL stays out of the graphs."""
    cascade_then_route = functools.partial(
        _cascade_then_route, spec=spec, N=N, my_chunks=my_chunks, rank=rank, world=world,
        layout=layout,
    )  # fmt: skip
    exchange = functools.partial(all_reduce_sum_, group=group) if world > 1 else None
    if not graph_applies(score_q):
        return Routes(*cascade_then_route(score_q, score_k, exchange))
    key = ("cp_global", spec, N, tuple(my_chunks), rank, world, layout,
           id(group) if world > 1 else None)  # fmt: skip
    # The first call exchanges twice (eager warm-up, verified replay); its traffic counts once.
    if exchange is None:  # one rank: nothing to exchange, one segment
        alone = functools.partial(cascade_then_route, exchange=None)
        return Routes(*replay_graph(alone, (score_q, score_k), key))
    quiet = functools.partial(all_reduce_sum_, group=group, count=False)
    return Routes(*replay_graph(cascade_then_route, (score_q, score_k), key, exchange, quiet))


def _cascade_then_route(score_q, score_k, exchange, spec, N, my_chunks, rank, world, layout):
    """`Routes.tensors()` of the global selection (a tuple: what a captured graph returns).
    exchange: sums a tensor over the ranks in place (None on one rank)."""
    idx_BGS = _global_cascade(score_q, score_k, spec, N, my_chunks, exchange)
    return route_entries(idx_BGS, spec, N, len(my_chunks), rank, world, layout).tensors()


def _global_cascade(score_q, score_k, spec, N, my_chunks, exchange) -> Tensor:
    """Candidate scores are filled by their owner and summed over the ranks, level by level
    (each candidate is owned, hence non-zero, on exactly one rank)."""
    Bn, G, N_c = score_q.shape
    n = len(my_chunks)
    B, device = Bn // n, score_q.device
    sq_levels = score_pyramid(score_q, spec)  # [Bn, G, N_c / c_l]
    sk_levels = score_pyramid(score_k, spec)

    def fetch(level: int, cand: Tensor):
        per_chunk = N_c // spec.window(level)
        owner_chunk = cand // per_chunk
        local = torch.zeros(2, *cand.shape, device=device)
        for j, chunk in enumerate(my_chunks):
            mine = owner_chunk == chunk
            at = (cand - chunk * per_chunk).clamp(0, per_chunk - 1).reshape(B, G, -1)
            for which, levels in enumerate((sq_levels, sk_levels)):
                scores = levels[level - 1].view(B, n, G, per_chunk)[:, j]
                vals = scores.gather(2, at).view(cand.shape)
                local[which] = torch.where(mine, vals, local[which])
        both = exchange(local) if exchange is not None else local
        return both[0], both[1]

    return cascade(fetch, B, G, N, spec, device)


def _global(q_c, k_c, v_c, spec, N, my_chunks, group, layout, attention) -> tuple[Tensor, Tensor]:
    """Global mode: one cascade over all chunks, rows moved to the attending rank and back;
    (out [Bn, N_c, H, D], spill)."""
    world = dist.get_world_size(group) if group is not None or dist.is_initialized() else 1
    rank = dist.get_rank(group) if world > 1 else 0
    Bn, N_c, H, D = q_c.shape
    G, n = k_c.shape[2], len(my_chunks)
    B = Bn // n

    with torch.no_grad():
        # One read of q and k gives their coarse levels (gathered below) and their scores.
        q_coarse, q_norms = coarse_pyramid(q_c.detach(), spec, with_norms=True)
        k_coarse, k_norms = coarse_pyramid(k_c.detach(), spec, with_norms=True)
        score_q, score_k = group_max(q_norms, G), k_norms.transpose(1, 2)  # [Bn, G, N_c]
    routes = _select_and_route(score_q, score_k, spec, N, my_chunks, rank, world, group, layout)
    # The host waits for the all-to-all's split sizes (this call's one sync) while the GPU
    # pools v, queued behind their copy: the GPU is not idle while the host resumes launching.
    counts_host, v_coarse = _to_host_behind(
        routes.counts, lambda: coarse_pyramid(v_c.detach(), spec)[0]
    )
    counts = counts_host.tolist()
    send_counts, recv_counts = counts[:world], counts[world:]
    sent = sum(send_counts)
    mine = FlatEntries(routes.is_fine[:sent], routes.fine_rows[:sent], routes.coarse_rows[:sent])

    payload = gather_flat([(q_c, q_coarse), (k_c, k_coarse), (v_c, v_coarse)], mine, G, spec)
    received = all_to_all(payload, send_counts, recv_counts, group) if world > 1 else payload
    q_BHSD, k_BGSD, v_BGSD = rows_to_share(received, routes.received_row, B, G, (H // G, 1, 1), D)
    o_BHSD = _attend(q_BHSD, k_BGSD, v_BGSD, group, layout, attention)
    o_rows = share_to_rows(o_BHSD, routes.received_row, G)
    back = all_to_all(o_rows, recv_counts, send_counts, group) if world > 1 else o_rows
    return scatter_flat_with_spill(back, mine, (Bn, N_c, H, D), spec)


@torch.no_grad()
def _to_host_behind(x: Tensor, more_work: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """(x on the host, more_work()), more_work without autograd: x's copy is queued first and
    more_work's kernels behind it, then the host waits for the copy alone (an event wait, which
    CUDA's sync debug mode does not flag: it is still this call's one host sync)."""
    if not x.is_cuda:
        return x, more_work()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    result = more_work()
    copied.synchronize()
    return host, result
