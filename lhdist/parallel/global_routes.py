"""Where every entry of a global CP selection lives, where it is attended, and the orders in
which ranks send and receive it.

Global selection gives every rank the same indices [B, G, S] into the pyramid of the whole
sequence. An entry is *owned* by the rank holding its window's tokens (its q/k/v rows are
gathered there) and *attended* by the rank holding its share of the gathered sequence: share
chunk `s // S_c` in the ring's layout, so each rank attends n * S_c entries per (batch, group).

Every rank derives both orders from the indices alone, so no index travels: its sends sorted
by (destination, entry), its receives by (owner, entry). All of it is fixed-shape tensor work
(sorts, not boolean masks), so it needs no host sync and is captured in the selection's CUDA
graph; only the all-to-all's split sizes (`Routes.counts`) must reach the host.

Legend: B batch, G kv heads, S selected length, S_c its share per chunk, n chunks per rank,
N_c chunk length, Pc coarse pyramid length of a chunk, W group size, E = B * G * S entries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from lhdist.ops.spec import LighthouseSpec
from lhdist.parallel.sharding import num_chunks


@dataclass(frozen=True)
class Routes:
    """A rank's routes for one selection; the first sum(counts[:W]) entries of the send-side
    tensors are its sends (the rest is padding), all receive-side tensors are used in full."""

    counts: Tensor  # [2W]: entries sent to each rank, then received from each rank
    is_fine: Tensor  # [E] bool, send order: the entry is a token row (else a coarse row)
    fine_rows: Tensor  # [E] flat row in the token tensor [Bn * N_c * G, hd] (or a stand-in)
    coarse_rows: Tensor  # [E] flat row in the coarse pyramid [Bn * Pc * G, hd] (or a stand-in)
    received_row: Tensor  # [B * n * S_c * G]: row (b, s, g) of the share -> received position

    def tensors(self) -> tuple[Tensor, ...]:
        # Not dataclasses.astuple: it deep-copies every tensor.
        return tuple(getattr(self, f.name) for f in fields(self))


def chunk_rank_slot(chunk: Tensor, world: int, layout: str) -> tuple[Tensor, Tensor]:
    """(rank holding each global chunk id, its slot in that rank's local order)."""
    if layout == "contiguous":
        return chunk, torch.zeros_like(chunk)
    upper = chunk >= world  # zigzag: rank r holds chunks r (slot 0) and 2W-1-r (slot 1)
    return torch.where(upper, 2 * world - 1 - chunk, chunk), upper.long()


def route_entries(
    idx_BGS: Tensor, spec: LighthouseSpec, N: int, n: int, rank: int, world: int, layout: str
) -> Routes:
    """This rank's `Routes` for the global selection `idx_BGS` of a sequence of length N."""
    B, G, S = idx_BGS.shape
    device = idx_BGS.device
    chunks = num_chunks(world, layout)
    N_c, S_c = N // chunks, S // chunks
    S_loc = n * S_c

    # Owner side: the entry's level, window, chunk, and its flat row in the owner's buffers.
    offsets = spec.level_offsets(N)
    level0 = torch.bucketize(idx_BGS, on_device(offsets[1:], device), right=True)
    window = idx_BGS - on_device(offsets, device)[level0]
    size = spec.pooling_factor**level0  # window size of each entry
    owner_chunk = window * size // N_c
    owner, owner_slot = chunk_rank_slot(owner_chunk, world, layout)
    local_window = window - owner_chunk * (N_c // size)
    coarse_offsets = [max(o - N_c, 0) for o in spec.level_offsets(N_c)]  # in the coarse pyramid
    Pc = sum(spec.level_lengths(N_c)[1:])
    b_idx = torch.arange(B, device=device).view(B, 1, 1)
    g_idx = torch.arange(G, device=device).view(1, G, 1)
    chunk_row = b_idx * n + owner_slot  # row of the chunk batch
    is_fine = level0 == 0
    flat_row = torch.where(
        is_fine,
        (chunk_row * N_c + local_window) * G + g_idx,
        (chunk_row * Pc + on_device(coarse_offsets, device)[level0] + local_window) * G + g_idx,
    ).reshape(-1)

    # Attending side: share chunk of each selected position, and the row in that share.
    pos = torch.arange(S, device=device)
    dest, dest_slot = chunk_rank_slot(pos // S_c, world, layout)
    share_pos = dest_slot * S_c + pos % S_c  # [S]
    E = B * G * S
    entry = torch.arange(E, device=device)
    dest_all, owner_all = dest.expand(B, G, S).reshape(-1), owner.reshape(-1)

    # Sorting keys (entries that are not ours last) instead of masking keeps the host out.
    send_peer = torch.where(owner_all == rank, dest_all, world)  # `world`: not sent from here
    recv_peer = torch.where(dest_all == rank, owner_all, world)
    send_keys, send_order = torch.sort(send_peer * E + entry)
    recv_keys, recv_order = torch.sort(recv_peer * E + entry)
    # Entries per peer from where each peer's run starts in the sorted keys (a scatter-add of
    # ones would serialise on the atomics of W + 1 counters).
    peer_starts = on_device([peer * E for peer in range(world + 1)], device)
    counts = torch.cat(
        [torch.searchsorted(keys, peer_starts).diff() for keys in (send_keys, recv_keys)]
    )

    fine_sent, rows_sent = is_fine.reshape(-1)[send_order], flat_row[send_order]
    # Where the other kind of row applies, a stand-in row (distinct per entry: the CPU path's
    # index adds to one shared row would serialise) receives exact zeros.
    Bn = B * n
    fine_rows = torch.where(fine_sent, rows_sent, entry % (Bn * N_c * G))
    coarse_rows = torch.where(fine_sent, entry % (Bn * Pc * G), rows_sent)

    # Every rank attends exactly S_loc entries per (batch, group): the first B*G*S_loc of the
    # receive order, landing on every row of the share exactly once (a permutation).
    here = recv_order[: B * G * S_loc]
    b_r, g_r = here // (G * S), here // S % G
    share_rows = (b_r * S_loc + share_pos[here % S]) * G + g_r
    received_row = torch.empty_like(share_rows).scatter_(
        0, share_rows, torch.arange(len(share_rows), device=device)
    )
    return Routes(counts, fine_sent, fine_rows, coarse_rows, received_row)


@functools.lru_cache(maxsize=64)
def _on_device_cached(values: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def on_device(values: list[int], device: torch.device) -> Tensor:
    """A small int64 constant on `device`, copied once (each host-to-device copy syncs, and a
    captured graph may not make one)."""
    return _on_device_cached(tuple(values), device)
