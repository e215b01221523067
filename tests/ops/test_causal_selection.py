"""Causal competition: fast path vs the reference, exact counts, and no look-ahead in the op."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention, lighthouse_select
from lhdist.ops.reference import reference_attention, reference_select
from lhdist.ops.selection import _causal_pick, _earlier_greater
from tests.ops.cases import Case, make_qkv


def _causal(case: Case) -> LighthouseSpec:
    return dataclasses.replace(case.spec, competition="causal")


# Small enough for the O(C^2) Python reference; 1 and several tiles, L=2/3, p=2/4, GQA, global.
CASES = [
    Case(B=1, N=512, H=2, G=1, D=4, L=2, p=2, k=128, selection="tile"),
    Case(B=2, N=1024, H=4, G=2, D=8, L=3, p=2, k=256, selection="tile"),
    Case(B=1, N=3072, H=2, G=2, D=8, L=2, p=4, k=384, selection="tile"),
    Case(B=1, N=2048, H=4, G=2, D=8, L=3, p=4, k=128, selection="tile"),
    Case(B=1, N=2048, H=2, G=1, D=8, L=2, p=4, k=256, selection="global"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_causal_select_matches_reference(case: Case):
    q, k, _ = make_qkv(case, seed=1)
    spec = _causal(case)
    causal = lighthouse_select(q, k, spec)
    assert torch.equal(causal, reference_select(q, k, spec))
    assert not torch.equal(causal, lighthouse_select(q, k, case.spec)), "rule had no effect"
    assert spec != case.spec  # the CUDA graph cache keys on the whole spec


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=lambda c: c.id)
def test_causal_select_breaks_ties_like_reference(case: Case):
    # Norms from a 3-value alphabet (exact in fp32 and fp64): nearly every comparison is a tie.
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(0, 3, (case.B, case.N, case.H, 1), generator=gen).float()
    k = torch.randint(0, 3, (case.B, case.N, case.G, 1), generator=gen).float()
    q, k = q.expand(-1, -1, -1, case.D), k.expand(-1, -1, -1, case.D)
    spec = _causal(case)
    assert torch.equal(lighthouse_select(q, k, spec), reference_select(q, k, spec))


@pytest.mark.parametrize("C", [1, 2, 5, 8, 9, 64, 100, 257, 1100])
def test_earlier_greater_matches_full_comparison(C: int):
    # Few distinct scores: ties are resolved by the low (reversed position) bits, as in the op.
    gen = torch.Generator().manual_seed(C)
    keys = (torch.randint(0, 20, (2, 3, C), generator=gen) << 32) | (C - 1 - torch.arange(C))
    full = (keys.unsqueeze(-1) < keys.unsqueeze(-2)).tril(-1).sum(-1)
    assert torch.equal(_earlier_greater(keys), full)


def test_causal_pick_count_exact_and_prefix_only():
    gen = torch.Generator().manual_seed(7)
    C = 300
    pos = C - 1 - torch.arange(C)
    rows = torch.stack(
        [
            torch.rand(C, generator=gen),  # random
            torch.arange(C).float(),  # every candidate beats the earlier ones: the cap binds
            -torch.arange(C).float(),  # every candidate loses to the earlier ones: forced fill
            torch.zeros(C),  # all tied
        ]
    ).abs()
    keys = (rows.view(torch.int32).long() << 32) | pos
    for quota in (1, 7, 64, 150, 299, 300):
        picked = _causal_pick(keys, quota)
        assert picked.sum(-1).tolist() == [quota] * len(rows)
        # Changing candidates >= t leaves every decision before t alone.
        for t in (1, 37, 150, 299):
            future = keys.clone()
            future[:, t:] = torch.randint(0, 1 << 62, future[:, t:].shape, generator=gen)
            assert torch.equal(_causal_pick(future, quota)[:, :t], picked[:, :t])


def test_causal_attention_has_no_look_ahead():
    """Re-selecting after perturbing the future leaves the past bitwise unchanged under causal
    competition (t0 on coarsest-window boundaries: a pooled window holding t0 would mix both);
    under top-k some t0 changes an earlier output, so the test can tell the two apart."""
    case = Case(B=1, N=2048, H=4, G=2, D=8, L=3, p=2, k=256, selection="tile")  # 2 tiles
    q, k, v = make_qkv(case, seed=8)
    gen = torch.Generator().manual_seed(9)
    grad = torch.randn(q.shape, generator=gen)
    c_L = case.spec.coarsest_window
    leaked = []
    for t0 in (c_L * 40, case.N // 2, case.N // 2 + c_L * 61):
        moved = [x.clone() for x in (q, k, v)]
        for x in moved:  # larger norms: the future wins the top-k contests it takes part in
            x[:, t0:] = 3 * torch.randn(x[:, t0:].shape, generator=gen)
        past = torch.zeros_like(grad)
        past[:, :t0] = grad[:, :t0]
        runs = []
        for inputs in ((q, k, v), moved):
            leaves = [x.clone().requires_grad_() for x in inputs]
            out = lighthouse_attention(*leaves, _causal(case))
            out.backward(past)
            runs.append([out.detach(), *(x.grad for x in leaves)])
        same = [torch.equal(a[:, :t0], b[:, :t0]) for a, b in zip(*runs)]
        assert all(same), f"t0={t0}: (out, dq, dk, dv) before t0 unchanged: {same}"
        before = lighthouse_attention(q, k, v, case.spec)[:, :t0]
        if not torch.equal(before, lighthouse_attention(*moved, case.spec)[:, :t0]):
            leaked.append(t0)
    # Top-k looks ahead inside t0's tile only: not at the tile boundary N/2.
    assert leaked == [c_L * 40, case.N // 2 + c_L * 61]


def test_causal_attention_matches_reference_fwd_bwd():
    case = Case(B=1, N=1024, H=4, G=2, D=8, L=3, p=2, k=128, selection="tile")
    spec = _causal(case)
    q, k, v = make_qkv(case, seed=11)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(12))
    idx = reference_select(q, k, spec)
    runs = []
    for fn in (
        lambda *x: lighthouse_attention(*x, spec),
        lambda *x: reference_attention(*x, spec, idx),
    ):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad_out)
        runs.append([out.detach(), *(t.grad for t in leaves)])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *runs):
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a / scale, b / scale, atol=1e-5, rtol=0, msg=name)
