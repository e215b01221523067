"""scatter="mean": each position averages its 1..L entry outputs (an experiment switch)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lhdist.ops import lighthouse_attention, lighthouse_select
from lhdist.ops.lighthouse import scatter_counts
from lhdist.ops.reference import reference_attention
from tests.ops.cases import GRID, Case, make_qkv


def _slow_counts(idx: torch.Tensor, spec, n: int) -> torch.Tensor:
    """[B, N, G] entries covering each position, by decoding every index in Python."""
    offsets = spec.level_offsets(n)
    B, G, _ = idx.shape
    counts = torch.zeros(B, n, G, dtype=torch.int64)
    for b in range(B):
        for g in range(G):
            for index in idx[b, g].tolist():
                level = max(
                    lvl for lvl in range(1, spec.num_levels + 1) if index >= offsets[lvl - 1]
                )
                c, w = spec.window(level), index - offsets[level - 1]
                counts[b, w * c + c - 1 : min(w * c + 2 * c - 1, n), g] += 1
    return counts


@pytest.mark.parametrize("case", GRID[:3], ids=lambda c: c.id)
def test_counts_and_mean_match_the_reference_fwd_bwd(case: Case):
    spec = dataclasses.replace(case.spec, scatter="mean")
    q, k, v = make_qkv(case, seed=21)
    n, heads_per_group = q.shape[1], q.shape[2] // k.shape[2]
    idx = lighthouse_select(q, k, spec)
    counts = _slow_counts(idx, spec, n)
    assert torch.equal(scatter_counts(idx, spec, n).long(), counts)
    assert int(counts.max()) <= spec.num_levels and int(counts[:, -1].min()) >= 1
    divisor = counts.clamp(min=1).repeat_interleave(heads_per_group, dim=2).unsqueeze(-1)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(22))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = lighthouse_attention(*leaves, spec)
    out.backward(grad_out)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*ref_leaves, spec, idx) / divisor
    ref.backward(grad_out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    # Where a position has more than one entry, mean and sum differ.
    summed = lighthouse_attention(q, k, v, case.spec)
    several = (counts > 1).repeat_interleave(heads_per_group, dim=2)
    assert not torch.allclose(summed[several], out.detach()[several])


def test_cp_refuses_mean_scatter():
    from lhdist.config import load_config

    with pytest.raises(ValueError, match="scatter=mean runs on one process"):
        load_config(
            overrides=[
                "--lighthouse.scatter=mean",
                "--parallel.cp_degree=2",
                "--lighthouse.selection=global",
                "--parallel.layout=contiguous",
            ],
            world_size=2,
        )
