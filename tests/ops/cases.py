"""Shared shapes and input builders for the ops tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lhdist.ops import LighthouseSpec


@dataclass(frozen=True)
class Case:
    B: int
    N: int
    H: int
    G: int
    D: int
    L: int
    p: int
    k: int
    selection: str

    @property
    def spec(self) -> LighthouseSpec:
        return LighthouseSpec(self.L, self.p, self.k, self.selection)

    @property
    def id(self) -> str:
        heads = "mha" if self.H == self.G else f"gqa{self.H}x{self.G}"
        return f"N{self.N}-L{self.L}-p{self.p}-k{self.k}-{self.selection}-{heads}-B{self.B}"


# Randomised grid: tile and global, MHA and GQA, B > 1, L in 2..5, p in 2/4/8.
GRID = [
    Case(B=2, N=2048, H=2, G=2, D=8, L=2, p=8, k=256, selection="tile"),
    Case(B=2, N=4096, H=4, G=2, D=8, L=3, p=4, k=256, selection="tile"),
    Case(B=1, N=4096, H=6, G=2, D=8, L=4, p=2, k=384, selection="global"),
    Case(B=2, N=2048, H=1, G=1, D=8, L=5, p=2, k=128, selection="tile"),
    Case(B=1, N=8192, H=2, G=1, D=8, L=3, p=8, k=128, selection="global"),
    Case(B=2, N=4096, H=2, G=2, D=8, L=2, p=4, k=512, selection="global"),
    Case(B=1, N=2048, H=4, G=4, D=8, L=4, p=2, k=256, selection="tile"),
    Case(B=2, N=4096, H=4, G=1, D=8, L=3, p=2, k=256, selection="global"),
]


def make_qkv(case: Case, seed: int = 0, dtype=torch.float32):
    """Random q/k/v whose norms vary across tokens (so selection has something to choose)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(heads: int) -> torch.Tensor:
        scale = 0.5 + torch.rand(case.B, case.N, heads, 1, generator=gen)
        return (torch.randn(case.B, case.N, heads, case.D, generator=gen) * scale).to(dtype)

    return rand(case.H), rand(case.G), rand(case.G)
