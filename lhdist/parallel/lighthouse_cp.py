"""Lighthouse attention over a sequence sharded across a CP group, exactly equal to the
single-device op on the whole sequence.

Legend: B batch, N global sequence, N_c chunk length, P_c chunk pyramid length, S selected length
(global), S_loc this rank's share of the gathered sequence, H query heads, G kv heads, D head dim,
W group size, R rows.

Both modes cut the gathered sequence into the layout's chunks and attend it causally across
ranks (k/v of the short gathered sequence all-gathered, or `ring_attention`):
  tile:   tiles lie inside sequence chunks, so each chunk selects alone and contributes S/chunks
          entries; chunk-wise gathered sequences in global order are the single-device one.
  global: one cascade over the whole sequence; level by level the scores of the candidate
          windows are exchanged (each owner fills its own, zeros elsewhere, summed), every rank
          computes the same top-k, and q/k/v rows move to the rank that attends them
          (all-to-all), outputs come back the same way.
Then every chunk scatters its windows' outputs, and the part of each level's last span that
runs past the chunk (a halo of L-1 rows) is added to the next chunk's first positions.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lhdist.ops.lighthouse import select_and_gather
from lhdist.ops.pyramid import group_query_scores, key_scores, pool_pyramid, score_pyramid
from lhdist.ops.scatter import add_spill, place_entries, place_rows, spill, spread_windows
from lhdist.ops.selection import cascade
from lhdist.ops.spec import TILE_BUDGET, LighthouseSpec, check_qkv
from lhdist.parallel.allgather_attention import allgather_attention
from lhdist.parallel.collectives import (
    all_gather,
    all_to_all,
    check_same_across_ranks,
    reduce_scatter,
)
from lhdist.parallel.ring_attention import ring_attention
from lhdist.parallel.sharding import LAYOUTS, check_layout, local_chunk_ids, num_chunks

ATTENTIONS = ("allgather", "ring")


def _chunk_rank_slot(chunk: Tensor, world: int, layout: str) -> tuple[Tensor, Tensor]:
    """(rank holding each global chunk id, its slot in that rank's local order)."""
    if layout == "contiguous":
        return chunk, torch.zeros_like(chunk)
    upper = chunk >= world  # zigzag: rank r holds chunks r (slot 0) and 2W-1-r (slot 1)
    return torch.where(upper, 2 * world - 1 - chunk, chunk), upper.long()


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
    the default: 64.5 ms per 1M-token layer on 2 H200s) or "allgather" (its k/v, only
    O(S*G*D), gathered on every rank; 71.3 ms there).

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
    split = lambda t: t.split(N_c, dim=1)  # noqa: E731  this rank's chunks, local order

    if spec.selection == "tile":
        chunk_spec = LighthouseSpec(
            spec.num_levels, spec.pooling_factor, spec.topk // chunks, "tile", spec.scorer
        )
        wins = _tile_chunks(split(q), split(k), split(v), chunk_spec, group, layout, attention)
    else:
        wins = _global_chunks(
            split(q), split(k), split(v), spec, N, my_chunks, group, layout, attention
        )

    # Scatter each chunk, then add the previous chunk's spill (the halo) to its first positions.
    outs = [spread_windows(win, spec, N_c) for win in wins]
    spills_local = torch.stack([spill(win, spec, N_c) for win in wins])
    spills = all_gather(spills_local, dim=0, group=group) if world > 1 else spills_local
    # Row 0 is the (empty) spill before chunk 0. Every rank reads through the gathered tensor,
    # so every rank runs its backward (a collective) even when it has no previous chunk.
    spills = torch.cat([torch.zeros_like(spills[:1]), spills])
    order = [c for r in range(world) for c in local_chunk_ids(r, world, layout)]
    prev_rows = torch.tensor([order.index(c - 1) + 1 if c > 0 else 0 for c in my_chunks])
    prev_spills = spills[prev_rows.to(spills.device)]
    outs = [add_spill(out, prev_spills[j], spec) for j, out in enumerate(outs)]
    return torch.cat(outs, dim=1)


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


def _attend(q_BSHD, k_BSGD, v_BSGD, group, layout, attention):
    if group is None and not dist.is_initialized():
        return torch.nn.functional.scaled_dot_product_attention(
            q_BSHD.transpose(1, 2), k_BSGD.transpose(1, 2), v_BSGD.transpose(1, 2),
            is_causal=True, enable_gqa=q_BSHD.shape[2] != k_BSGD.shape[2],
        ).transpose(1, 2)  # fmt: skip
    if attention == "allgather":
        return allgather_attention(q_BSHD, k_BSGD, v_BSGD, group=group, layout=layout)
    return ring_attention(q_BSHD, k_BSGD, v_BSGD, group=group, layout=layout, causal=True)


def _tile_chunks(qs, ks, vs, chunk_spec, group, layout, attention) -> list[Tensor]:
    """Tile mode: select, gather and (after the ring) place per chunk; window outputs per chunk."""
    per_chunk = [select_and_gather(q, k, v, chunk_spec) for q, k, v in zip(qs, ks, vs)]
    idxs = [chunk[3] for chunk in per_chunk]
    q_BSHD, k_BSGD, v_BSGD = (
        torch.cat([chunk[i] for chunk in per_chunk], dim=2).transpose(1, 2) for i in range(3)
    )
    o_BHSD = _attend(q_BSHD, k_BSGD, v_BSGD, group, layout, attention).transpose(1, 2)
    N_c = qs[0].shape[1]
    P_c = sum(chunk_spec.level_lengths(N_c))
    o_chunks = o_BHSD.split(idxs[0].shape[-1], dim=2)
    return [place_entries(o, i, P_c) for o, i in zip(o_chunks, idxs)]


def _exchange_scores(local_BGXC: Tensor, group) -> Tensor:
    """Sum over ranks (each candidate is owned, hence non-zero, on exactly one rank)."""
    world = dist.get_world_size(group)
    flat = local_BGXC.reshape(-1)
    pad = (-flat.numel()) % world
    flat = torch.nn.functional.pad(flat, (0, pad))
    summed = all_gather(reduce_scatter(flat, 0, group), 0, group)
    return summed[: local_BGXC.numel()].view(local_BGXC.shape)


def _global_chunks(qs, ks, vs, spec, N, my_chunks, group, layout, attention) -> list[Tensor]:
    """Global mode: one cascade over all chunks, rows moved to the attending rank and back."""
    world = dist.get_world_size(group) if group is not None or dist.is_initialized() else 1
    rank = dist.get_rank(group) if world > 1 else 0
    B, N_c, H, D = qs[0].shape
    G = ks[0].shape[2]
    device = qs[0].device
    chunks = num_chunks(world, layout)
    P_c = sum(spec.level_lengths(N_c))
    n_local = len(my_chunks)

    # --- selection: candidate scores are filled by their owner and exchanged, level by level.
    with torch.no_grad():
        sq_levels = [score_pyramid(group_query_scores(q, G), spec) for q in qs]
        sk_levels = [score_pyramid(key_scores(k), spec) for k in ks]

    def fetch(level: int, cand: Tensor):
        per_chunk = N_c // spec.window(level)
        owner_chunk = cand // per_chunk
        local = torch.zeros(2, *cand.shape, device=device)
        for j, chunk in enumerate(my_chunks):
            mine = owner_chunk == chunk
            at = (cand - chunk * per_chunk).clamp(0, per_chunk - 1).reshape(B, G, -1)
            for which, levels in enumerate((sq_levels[j], sk_levels[j])):
                vals = levels[level - 1].gather(2, at).view(cand.shape)
                local[which] = torch.where(mine, vals, local[which])
        both = _exchange_scores(local, group) if world > 1 else local
        return both[0], both[1]

    idx_BGS = cascade(fetch, B, G, N, spec, device)
    S = idx_BGS.shape[-1]
    S_c = S // chunks

    # --- where every entry lives (owner rank, row of its local pyramid) and is attended.
    offsets, offsets_c = spec.level_offsets(N), spec.level_offsets(N_c)
    level0 = torch.bucketize(idx_BGS, torch.tensor(offsets[1:], device=device), right=True)
    window = idx_BGS - torch.tensor(offsets, device=device)[level0]
    size = spec.pooling_factor**level0  # window size of each entry
    owner_chunk = window * size // N_c
    owner, owner_slot = _chunk_rank_slot(owner_chunk, world, layout)
    pyr_row = (
        owner_slot * P_c
        + torch.tensor(offsets_c, device=device)[level0]
        + window
        - owner_chunk * (N_c // size)
    )
    share_chunk = torch.arange(S, device=device) // S_c
    dest, dest_slot = _chunk_rank_slot(share_chunk, world, layout)
    share_pos = dest_slot * S_c + torch.arange(S, device=device) % S_c  # [S]
    S_loc = n_local * S_c

    flat_b = torch.arange(B, device=device).view(B, 1, 1).expand(B, G, S)
    flat_g = torch.arange(G, device=device).view(1, G, 1).expand(B, G, S)
    dest_BGS = dest.expand(B, G, S)
    flat_id = torch.arange(B * G * S, device=device).view(B, G, S)

    # Send side: my entries, ordered by (destination, flat id); receive side: entries attended
    # here, ordered by (owner, flat id). Both sides derive both orders, so no index travels.
    sent = (owner == rank).reshape(-1)
    send_ids = flat_id.reshape(-1)[sent]
    send_ids = send_ids[torch.argsort(dest_BGS.reshape(-1)[send_ids], stable=True)]
    send_counts = torch.bincount(dest_BGS.reshape(-1)[send_ids], minlength=world).tolist()
    recv = (dest_BGS == rank).reshape(-1)
    recv_ids = flat_id.reshape(-1)[recv]
    recv_ids = recv_ids[torch.argsort(owner.reshape(-1)[recv_ids], stable=True)]
    recv_counts = torch.bincount(owner.reshape(-1)[recv_ids], minlength=world).tolist()

    b_s, g_s = flat_b.reshape(-1)[send_ids], flat_g.reshape(-1)[send_ids]
    pyr_rows = (b_s * n_local * P_c + pyr_row.reshape(-1)[send_ids]) * G + g_s
    b_r, g_r = flat_b.reshape(-1)[recv_ids], flat_g.reshape(-1)[recv_ids]
    share_rows = (b_r * S_loc + share_pos.expand(B, G, S).reshape(-1)[recv_ids]) * G + g_r

    def rows_of(xs, width):  # this rank's chunk pyramids as rows of one kv group each
        pyr = torch.cat([pool_pyramid(x, spec) for x in xs], dim=1)
        return pyr.reshape(B * n_local * P_c * G, width)

    hd = H // G * D
    payload = torch.cat(
        [rows_of(qs, hd)[pyr_rows], rows_of(ks, D)[pyr_rows], rows_of(vs, D)[pyr_rows]], dim=1
    )
    received = all_to_all(payload, send_counts, recv_counts, group) if world > 1 else payload
    share = place_rows(received, share_rows, B * S_loc * G).view(B, S_loc, G, hd + 2 * D)
    q_BSHD = share[..., :hd].reshape(B, S_loc, H, D)
    k_BSGD, v_BSGD = share[..., hd : hd + D], share[..., hd + D :]
    o_BSHD = _attend(q_BSHD, k_BSGD, v_BSGD, group, layout, attention)
    o_rows = o_BSHD.reshape(B * S_loc * G, hd)[share_rows]
    back = all_to_all(o_rows, recv_counts, send_counts, group) if world > 1 else o_rows
    win = place_rows(back, pyr_rows, B * n_local * P_c * G).view(B, n_local * P_c, H, D)
    return list(win.split(P_c, dim=1))
