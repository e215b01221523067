"""lighthouse_attention: forward/backward vs the reference, causality, the scatter's adjoint."""

from __future__ import annotations

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention, lighthouse_select
from lhdist.ops.reference import reference_attention
from lhdist.ops.scatter import scatter_entries
from tests.ops.cases import GRID, Case, make_qkv


def _fwd_bwd(fn, q, k, v, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def _assert_close_scaled(actual, expected, name, tol=1e-5):
    """Within `tol` of the largest magnitude (at least 1)."""
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(
        actual / scale, expected / scale, atol=tol, rtol=0, msg=lambda m: f"{name}: {m}"
    )


@pytest.mark.parametrize("case", GRID, ids=lambda c: c.id)
def test_attention_matches_reference_fwd_bwd(case: Case):
    spec = case.spec
    q, k, v = make_qkv(case, seed=11)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(12))
    idx = lighthouse_select(q, k, spec)
    fast = _fwd_bwd(lambda *x: lighthouse_attention(*x, spec), q, k, v, grad_out)
    ref = _fwd_bwd(lambda *x: reference_attention(*x, spec, idx), q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, ref):
        _assert_close_scaled(a, b, name)


def test_attention_reuses_given_indices():
    case = GRID[1]
    q, k, v = make_qkv(case, seed=13)
    idx = lighthouse_select(q, k, case.spec)
    assert torch.equal(
        lighthouse_attention(q, k, v, case.spec), lighthouse_attention(q, k, v, case.spec, idx)
    )
    # A selection from other inputs is honoured, not recomputed.
    q2, k2, _ = make_qkv(case, seed=14)
    other = lighthouse_select(q2, k2, case.spec)
    assert not torch.equal(other, idx)
    torch.testing.assert_close(
        lighthouse_attention(q, k, v, case.spec, other),
        reference_attention(q, k, v, case.spec, other),
        atol=1e-5,
        rtol=0,
    )


def test_attention_gradcheck_float64():
    case = Case(B=1, N=256, H=2, G=1, D=4, L=2, p=2, k=128, selection="tile")
    q, k, v = make_qkv(case, seed=15, dtype=torch.float64)
    idx = lighthouse_select(q, k, case.spec)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda *x: lighthouse_attention(*x, case.spec, idx),
        inputs,
        eps=1e-6,
        atol=1e-5,
        fast_mode=True,
    )


@pytest.mark.parametrize("case", [GRID[1], GRID[2]], ids=lambda c: c.id)
def test_attention_is_causal_with_frozen_indices(case: Case):
    spec = case.spec
    q, k, v = make_qkv(case, seed=16)
    idx = lighthouse_select(q, k, spec)
    gen = torch.Generator().manual_seed(17)
    # t on a coarsest-window boundary: no pooled window mixes past and future, so gradients of a
    # loss on past outputs cannot see the future either. Outputs are causal at any t.
    t_aligned = spec.coarsest_window * 37
    for t in (t_aligned, t_aligned + 3):
        perturbed = [x.clone() for x in (q, k, v)]
        for x in perturbed:
            x[:, t:] = torch.randn(x[:, t:].shape, generator=gen)
        g = torch.zeros(q.shape)
        g[:, :t] = torch.randn(g[:, :t].shape, generator=gen)
        base = _fwd_bwd(lambda *x: lighthouse_attention(*x, spec, idx), q, k, v, g)
        moved = _fwd_bwd(lambda *x: lighthouse_attention(*x, spec, idx), *perturbed, g)
        assert torch.equal(base[0][:, :t], moved[0][:, :t])
        assert not torch.equal(base[0][:, t:], moved[0][:, t:])
        if t == t_aligned:
            for a, b in zip(base[1:], moved[1:]):
                assert torch.equal(a[:, :t], b[:, :t])


@pytest.mark.parametrize("case", [GRID[1], GRID[2], GRID[3]], ids=lambda c: c.id)
def test_scatter_backward_is_adjoint(case: Case):
    spec = case.spec
    q, k, _ = make_qkv(case, seed=18)
    idx = lighthouse_select(q, k, spec)
    S = idx.shape[-1]
    gen = torch.Generator().manual_seed(19)
    o = torch.randn(case.B, case.H, S, case.D, generator=gen, dtype=torch.float64)
    y = torch.randn(case.B, case.N, case.H, case.D, generator=gen, dtype=torch.float64)
    o.requires_grad_()
    forward = scatter_entries(o, idx, spec, case.N)
    (adjoint_y,) = torch.autograd.grad(forward, o, y)
    torch.testing.assert_close((forward * y).sum(), (o * adjoint_y).sum(), atol=1e-9, rtol=1e-12)


def test_attention_runs_in_bfloat16_close_to_fp32():
    case = GRID[1]
    q, k, v = make_qkv(case, seed=20)
    idx = lighthouse_select(q, k, case.spec)
    ref = lighthouse_attention(q, k, v, case.spec, idx)
    low = lighthouse_attention(*(x.bfloat16() for x in (q, k, v)), case.spec, idx)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=5e-2, rtol=5e-2)


def test_spec_from_golden_shape_is_selected_length():
    spec = LighthouseSpec(3, 4, 256)
    assert spec.selected_length(4096) == 4096 // 16 + 2 * 4 * 256
    assert sum(spec.entries_per_level(4096)) == spec.selected_length(4096)


def test_spill_continues_scatter_across_a_split():
    """Two halves, each selecting and scattering alone (the CP tile path), with the first half's
    spill added to the second, equal the whole sequence's scatter, forward and backward."""
    from lhdist.ops.scatter import add_halo_, scatter_entries_with_spill

    case = GRID[1]  # tile mode, 2 tiles: one per half
    spec, N = case.spec, case.N
    half_spec = LighthouseSpec(spec.num_levels, spec.pooling_factor, spec.topk // 2, "tile")
    q, k, _ = make_qkv(case, seed=21)
    S = spec.selected_length(N)
    o = torch.randn(case.B, case.H, S, case.D, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(case.B, N, case.H, case.D, dtype=torch.float64)

    whole = scatter_entries(o, lighthouse_select(q, k, spec), spec, N)
    (o_grad_whole,) = torch.autograd.grad(whole, o, grad)

    half = N // 2
    halves = [
        scatter_entries_with_spill(
            o[:, :, part * S // 2 : (part + 1) * S // 2],
            lighthouse_select(q[:, part * half : (part + 1) * half],
                              k[:, part * half : (part + 1) * half], half_spec),
            half_spec,
            half,
        )
        for part in range(2)
    ]  # fmt: skip
    second = add_halo_(halves[1][0].clone(), halves[0][1], spec)
    split = torch.cat([halves[0][0], second], dim=1)
    torch.testing.assert_close(split, whole, atol=1e-12, rtol=0)
    (o_grad_split,) = torch.autograd.grad(split, o, grad)
    torch.testing.assert_close(o_grad_split, o_grad_whole, atol=1e-12, rtol=0)
