"""Selection: fast path vs the reference, and the structural invariants of spec sections 3-4."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_select
from lhdist.ops.reference import reference_select
from tests.ops.cases import GRID, Case, make_qkv


@pytest.mark.parametrize("case", GRID, ids=lambda c: c.id)
def test_select_matches_reference(case: Case):
    q, k, _ = make_qkv(case, seed=1)
    assert torch.equal(lighthouse_select(q, k, case.spec), reference_select(q, k, case.spec))


def test_select_breaks_ties_like_reference():
    # Norms from a 3-value alphabet: nearly every comparison is a tie.
    case = Case(B=1, N=2048, H=2, G=1, D=4, L=3, p=2, k=256, selection="tile")
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(0, 3, (1, case.N, 2, 1), generator=gen).float().expand(-1, -1, -1, 4)
    k = torch.randint(0, 3, (1, case.N, 1, 1), generator=gen).float().expand(-1, -1, -1, 4)
    assert torch.equal(lighthouse_select(q, k, case.spec), reference_select(q, k, case.spec))


def _decode(idx_S: torch.Tensor, spec: LighthouseSpec, N: int) -> list[tuple[int, int]]:
    offsets = spec.level_offsets(N)
    out = []
    for index in idx_S.tolist():
        level = max(lvl for lvl in range(1, spec.num_levels + 1) if index >= offsets[lvl - 1])
        out.append((level, index - offsets[level - 1]))
    return out


@pytest.mark.parametrize("competition", ["topk", "causal"])
@pytest.mark.parametrize("case", GRID[:4], ids=lambda c: c.id)
def test_select_invariants(case: Case, competition: str):
    spec, N = dataclasses.replace(case.spec, competition=competition), case.N
    q, k, _ = make_qkv(case, seed=2)
    idx = lighthouse_select(q, k, spec)
    S = N // spec.coarsest_window + (spec.num_levels - 1) * spec.pooling_factor * spec.topk
    assert idx.shape == (case.B, case.G, S) and idx.dtype == torch.int64
    for b in range(case.B):
        for g in range(case.G):
            entries = _decode(idx[b, g], spec, N)
            emitted = set(entries)
            assert len(emitted) == S, "an entry was emitted twice"
            p = spec.pooling_factor

            def is_summary(level: int, w: int, emitted=emitted, p=p) -> bool:
                return level > 1 and any((level - 1, w * p + j) in emitted for j in range(p))

            # Non-summary windows cover every token exactly once.
            cover = torch.zeros(N, dtype=torch.int64)
            for level, w in entries:
                if not is_summary(level, w):
                    c = spec.window(level)
                    cover[w * c : (w + 1) * c] += 1
            assert torch.equal(cover, torch.ones(N, dtype=torch.int64))
            # Summaries: k per level >= 2.
            for level in range(2, spec.num_levels + 1):
                count = sum(is_summary(lv, w) for lv, w in entries if lv == level)
                assert count == spec.topk
            # Keys (times 2^L, exact) strictly increase along the gathered order.
            scale = 2**spec.num_levels
            keys = []
            for level, w in entries:
                c = spec.window(level)
                if is_summary(level, w):
                    keys.append(c * (w + 1) * scale - 2 ** (spec.num_levels + 1 - level))
                else:
                    keys.append(c * w * scale)
            assert all(a < b for a, b in zip(keys, keys[1:]))


def test_global_with_one_tile_budget_equals_tile():
    case = Case(B=2, N=4096, H=4, G=2, D=8, L=3, p=4, k=128, selection="tile")
    q, k, _ = make_qkv(case, seed=3)
    tile = lighthouse_select(q, k, case.spec)
    glob = lighthouse_select(q, k, LighthouseSpec(3, 4, 128, selection="global"))
    assert torch.equal(tile, glob)


def test_gqa_with_one_head_per_group_equals_mha():
    case = Case(B=1, N=4096, H=2, G=2, D=8, L=3, p=4, k=256, selection="tile")
    q, k, _ = make_qkv(case, seed=4)
    per_head = torch.cat(
        [lighthouse_select(q[:, :, h : h + 1], k[:, :, h : h + 1], case.spec) for h in range(2)],
        dim=1,
    )
    assert torch.equal(lighthouse_select(q, k, case.spec), per_head)


def test_global_concentrates_budget_where_scores_are():
    # All large norms in the first quarter: global mode spends its summaries there, tile cannot.
    case = Case(B=1, N=8192, H=1, G=1, D=8, L=2, p=4, k=512, selection="global")
    q, k, _ = make_qkv(case, seed=6)
    q[:, : case.N // 4] *= 10
    k[:, : case.N // 4] *= 10
    offsets = case.spec.level_offsets(case.N)

    def tokens_in_first_quarter(spec):
        idx = lighthouse_select(q, k, spec)[0, 0]
        level1 = idx[idx < offsets[1]]
        return int((level1 < case.N // 4).sum())

    glob = tokens_in_first_quarter(case.spec)
    tile = tokens_in_first_quarter(LighthouseSpec(2, 4, 512, "tile"))
    assert glob == case.p * case.k  # every selected token
    assert tile == case.p * case.k // 4  # one tile in four
