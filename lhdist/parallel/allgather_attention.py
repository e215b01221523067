"""Causal attention over a sharded sequence by all-gathering k/v: for short gathered sequences.

Legend: B batch, S local length (this rank's chunks), S_c chunk length, N_g global length of the
gathered sequence, H query heads, G kv heads, D head dim, W group size.

Lighthouse's gathered sequence is short (S = N/c_L + (L-1)*p*k entries), so moving all of its
k/v to every rank (O(S*G*D)) costs less than a ring's W steps of small blocks, each with its own
kernel launches and log-sum-exp merges. Each local query chunk j then attends its prefix in two
kernel calls: a full block over chunks [0, j) and the causal diagonal block, merged by their
LSEs. The gradient of the all-gather is a reduce-scatter-sum of dk/dv back to their owners.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lhdist.ops.attention_block import attention_block_backward, attention_with_lse, lse_dtype
from lhdist.parallel.collectives import all_gather
from lhdist.parallel.ring_attention import _check_inputs
from lhdist.parallel.sharding import local_chunk_ids


class _PrefixCausalAttention(torch.autograd.Function):
    """q [B, H, S_c, D] attends k/v [B, G, (j+1)*S_c, D]: fully to all but the last S_c keys,
    causally to those."""

    @staticmethod
    def forward(ctx, q_BHSD, k_BGSD, v_BGSD, scale):
        S_c = q_BHSD.shape[2]
        prefix = k_BGSD.shape[2] - S_c
        out, lse = attention_with_lse(
            q_BHSD, k_BGSD[:, :, prefix:], v_BGSD[:, :, prefix:], True, scale
        )
        if prefix:
            out_p, lse_p = attention_with_lse(
                q_BHSD, k_BGSD[:, :, :prefix], v_BGSD[:, :, :prefix], False, scale
            )
            lse_new = torch.logaddexp(lse, lse_p)
            acc = lse_dtype(q_BHSD.dtype)
            out = (
                out.to(acc) * torch.exp(lse - lse_new).unsqueeze(-1)
                + out_p.to(acc) * torch.exp(lse_p - lse_new).unsqueeze(-1)
            ).to(q_BHSD.dtype)
            lse = lse_new
        ctx.save_for_backward(q_BHSD, k_BGSD, v_BGSD, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_BHSD):
        q, k, v, out, lse = ctx.saved_tensors
        S_c = q.shape[2]
        prefix = k.shape[2] - S_c
        grad_BHSD = grad_BHSD.contiguous()
        dq, dk_d, dv_d = attention_block_backward(
            grad_BHSD, q, k[:, :, prefix:], v[:, :, prefix:], out, lse, True, ctx.scale
        )
        if not prefix:
            return dq, dk_d, dv_d, None
        dq_p, dk_p, dv_p = attention_block_backward(
            grad_BHSD, q, k[:, :, :prefix], v[:, :, :prefix], out, lse, False, ctx.scale
        )
        dk = torch.cat([dk_p, dk_d], dim=2)
        dv = torch.cat([dv_p, dv_d], dim=2)
        return (dq.to(q.dtype) + dq_p.to(q.dtype)), dk, dv, None


def allgather_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    group: dist.ProcessGroup | None,
    layout: str = "zigzag",
    scale: float | None = None,
) -> Tensor:
    """This rank's shard of causal attention over the whole sharded sequence.

    q [B, S, H, D], k/v [B, S, G, D]: this rank's chunks in `layout` (as `ring_attention`).
    Returns [B, S, H, D], differentiable; the same result as `ring_attention` (to rounding).
    """
    _check_inputs(q, k, v, layout)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mine = local_chunk_ids(rank, world, layout)
    S_c = q.shape[1] // len(mine)
    # Every rank's chunks, rank-major, then in global chunk order: [B, G, N_g, D] each.
    kv_local = torch.stack([k, v])  # [2, B, S, G, D]
    kv_all = all_gather(kv_local, dim=0, group=group) if world > 1 else kv_local
    owners = [c for r in range(world) for c in local_chunk_ids(r, world, layout)]
    per_rank = kv_all.view(world, 2, *k.shape).transpose(0, 1)  # [2, W, B, S, G, D]
    chunks = per_rank.reshape(2, world, k.shape[0], len(mine), S_c, *k.shape[2:])
    chunks = chunks.transpose(2, 3).reshape(2, world * len(mine), k.shape[0], S_c, *k.shape[2:])
    order = torch.tensor([owners.index(c) for c in range(len(owners))], device=q.device)
    kv_BGND = chunks.index_select(1, order).permute(0, 2, 4, 1, 3, 5).flatten(3, 4)
    k_BGND, v_BGND = kv_BGND[0], kv_BGND[1]
    outs = []
    for j, chunk in enumerate(mine):
        q_BHSD = q[:, j * S_c : (j + 1) * S_c].transpose(1, 2)
        end = (chunk + 1) * S_c
        o = _PrefixCausalAttention.apply(q_BHSD, k_BGND[:, :, :end], v_BGND[:, :, :end], scale)
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=1)
