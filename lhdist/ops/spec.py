"""LighthouseSpec: the knobs of the op and every shape rule they impose, checked before any kernel.

Legend: B batch, N sequence, H query heads, G kv heads, D head dim, L levels, p pooling factor,
k top-k budget, T tiles, S selected (gathered) length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE_BUDGET = 128  # windows kept per tile and level in tile mode (64 by score_q + 64 by score_k)
SELECTIONS = ("tile", "global")
SCORERS = ("norm",)
COMPETITIONS = ("topk", "causal")
SCATTERS = ("sum", "mean")


@dataclass(frozen=True)
class LighthouseSpec:
    """Configuration of one Lighthouse attention op (spec sections 2-3, 7)."""

    num_levels: int = 3
    """Pyramid levels L >= 2; level 1 is the raw sequence."""
    pooling_factor: int = 4
    """Window growth p per level (power of two, 2..64)."""
    topk: int = 2048
    """Selection budget k per level (multiple of 128)."""
    selection: str = "tile"
    """'tile' (the paper's, reference-exact) or 'global' (one cascade over the whole sequence)."""
    scorer: str = "norm"
    """Parameter-free scorer; only 'norm' (L2 norm of q and k) exists."""
    competition: str = "topk"
    """'topk' (the paper's: a window competes with every candidate of its region) or 'causal'
    (a window competes only with the candidates that end before it: no look-ahead)."""
    scatter: str = "sum"
    """'sum' (the paper's: a position adds its 1..L entry outputs) or 'mean' (their average)."""

    def __post_init__(self) -> None:
        L, p, k = self.num_levels, self.pooling_factor, self.topk
        if not isinstance(L, int) or L < 2:
            raise ValueError(f"num_levels={L!r} must be an integer >= 2")
        if not isinstance(p, int) or p < 2 or p > 64 or p & (p - 1):
            raise ValueError(f"pooling_factor={p!r} must be a power of two in [2, 64]")
        if not isinstance(k, int) or k <= 0 or k % TILE_BUDGET:
            raise ValueError(f"topk={k!r} must be a positive multiple of {TILE_BUDGET}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection={self.selection!r} must be one of {SELECTIONS}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer={self.scorer!r} must be one of {SCORERS}")
        if self.competition not in COMPETITIONS:
            raise ValueError(f"competition={self.competition!r} must be one of {COMPETITIONS}")
        if self.scatter not in SCATTERS:
            raise ValueError(f"scatter={self.scatter!r} must be one of {SCATTERS}")

    # --- derived sizes -------------------------------------------------------------------------

    def window(self, level: int) -> int:
        """Window size c_l = p^(l-1) of 1-based `level`."""
        return self.pooling_factor ** (level - 1)

    @property
    def coarsest_window(self) -> int:
        return self.window(self.num_levels)

    @property
    def num_tiles(self) -> int:
        """Independent selection regions T: k/128 in tile mode, 1 in global mode."""
        return self.topk // TILE_BUDGET if self.selection == "tile" else 1

    @property
    def half_budget(self) -> int:
        """Windows picked per half (by score_q, then by score_k) per region and level."""
        return TILE_BUDGET // 2 if self.selection == "tile" else self.topk // 2

    def level_lengths(self, seq_len: int) -> list[int]:
        """Entries per level of the pyramid: [N, N/p, ..., N/c_L]."""
        return [seq_len // self.window(lvl) for lvl in range(1, self.num_levels + 1)]

    def level_offsets(self, seq_len: int) -> list[int]:
        """Start of each level in the level-concatenated pyramid (level 1 first)."""
        offsets, acc = [], 0
        for n in self.level_lengths(seq_len):
            offsets.append(acc)
            acc += n
        return offsets

    def selected_length(self, seq_len: int) -> int:
        """S = N/c_L + (L-1)*p*k, the gathered length of every (batch, kv head)."""
        return (
            seq_len // self.coarsest_window
            + (self.num_levels - 1) * self.pooling_factor * self.topk
        )

    def entries_per_level(self, seq_len: int) -> list[int]:
        """Emitted entries of each level (level 1 first); they sum to `selected_length`."""
        p, k, L = self.pooling_factor, self.topk, self.num_levels
        return [p * k] * (L - 1) + [seq_len // self.coarsest_window]

    # --- validation ----------------------------------------------------------------------------

    def check_seq_len(self, seq_len: int) -> None:
        """Raise ValueError unless a sequence of `seq_len` tokens can be selected from."""
        c_L, T = self.coarsest_window, self.num_tiles
        if seq_len <= 0 or seq_len % c_L:
            raise ValueError(
                f"seq_len={seq_len} must be a positive multiple of pooling_factor**(num_levels-1)"
                f"={c_L}"
            )
        if seq_len % (T * c_L):
            raise ValueError(
                f"seq_len={seq_len} must be divisible by num_tiles*pooling_factor**(num_levels-1)"
                f"={T}*{c_L}={T * c_L} (num_tiles = topk/{TILE_BUDGET} = {T} in tile mode)"
            )
        windows = seq_len // (T * c_L)
        need = 2 * self.half_budget
        if windows < need:
            where = f"each of the {T} tiles" if self.selection == "tile" else "the sequence"
            raise ValueError(
                f"seq_len={seq_len} gives {where} {windows} level-{self.num_levels} windows of "
                f"{c_L} tokens, fewer than the {need} it must select; use a longer sequence, a "
                f"smaller topk={self.topk} or fewer levels"
            )


def check_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: LighthouseSpec,
    seq_len: int | None = None,
) -> None:
    """Raise ValueError unless q [B,N,H,D], k/v [B,N,G,D] fit each other and `spec`.

    `seq_len`: the global length the selection runs over when q/k/v are one shard of it."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, N, heads, D], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    B, N, H, D = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, N, D):
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, sequence and head dim"
        )
    G = k.shape[2]
    if H % G:
        raise ValueError(f"query heads H={H} must be a multiple of kv heads G={G}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    spec.check_seq_len(N if seq_len is None else seq_len)
