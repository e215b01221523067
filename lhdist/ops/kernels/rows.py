"""Row movers of the op as `torch.library` custom ops: Triton on CUDA, plain torch elsewhere.

Registered with fake implementations, so `torch.compile` traces a model through them without
graph breaks. Set LHDIST_TRITON=interpret (with TRITON_INTERPRET=1) to run the Triton kernels on
CPU tensors in tests; LHDIST_TRITON=off forces the torch path on CUDA.

Legend: B batch, N token rows, Pc coarse rows, S selected length, H heads of the tensor, G kv
heads, D head dim.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton

    from lhdist.ops.kernels import triton_rows as _tk
except ImportError:  # CPU-only installs
    triton = None


def _triton_on(t: Tensor) -> bool:
    mode = os.environ.get("LHDIST_TRITON", "auto")
    if triton is None or mode == "off":
        return False
    return t.is_cuda or mode == "interpret"


def _acc_dtype(x: Tensor) -> torch.dtype:
    """fp32 for low-precision inputs, the input's own dtype for fp32/fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def _block_w(W: int, D: int) -> int:
    block = D
    while block * 2 <= min(W, 1024) and W % (block * 2) == 0:
        block *= 2
    return block


# --- window_reduce --------------------------------------------------------------------------


def _reduced_lengths(n_out: int, p: int, levels: int) -> list[int]:
    """Rows of each reduced level: n_out, n_out // p, ..."""
    return [n_out // p**j for j in range(levels)]


def _reduce_level_torch(x: Tensor, out: Tensor, p: int, shift: int, scale: float) -> None:
    """out [B, n, H, D] (a view, written in place) = scale * sums of x's row windows."""
    B, N, H, D = x.shape
    n_out = out.shape[1]
    pad = max(0, n_out * p + shift - N)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
    windows = padded[:, shift : shift + n_out * p].reshape(B, n_out, p, H, D)
    out.copy_(windows.sum(2, dtype=_acc_dtype(x)).mul_(scale))


def _reduce_level_triton(
    x: Tensor, out: Tensor, norms: Tensor, p: int, shift: int, scale: float, with_norms: bool
) -> None:
    """The same with the Triton kernel; x and out: row slices (contiguous within a batch)."""
    B, N, H, D = x.shape
    n_out, W = out.shape[1], H * D
    block = _block_w(W, D)
    _tk.window_reduce_kernel[(B * n_out, W // block)](
        x, out, norms, N, n_out, x.stride(0), out.stride(0), shift, scale,
        W=W, D=D, P=p, BLOCK_W=block, WITH_NORMS=with_norms,
    )  # fmt: skip
    if with_norms:  # rows no window reads (none, as used here)
        for lo, hi in ((0, min(shift, N)), (n_out * p + shift, N)):
            if lo < hi:
                norms[:, lo:hi] = torch.linalg.vector_norm(x[:, lo:hi], dim=-1, dtype=torch.float32)


@torch.library.custom_op("lhdist::window_reduce", mutates_args=())
def window_reduce(
    x: Tensor, n_out: int, p: int, shift: int, scale: float, with_norms: bool, levels: int = 1
) -> tuple[Tensor, Tensor]:
    """out [B, n_out, H, D] = scale * sum of rows [i*p + shift, i*p + shift + p) of x (clipped);
    and fp32 norms [B, N, H] of x's D-vectors when `with_norms` (else an empty tensor).

    `levels` > 1 reduces each result again the same way (n_out // p rows, then n_out // p^2...):
    the levels follow each other in one out [B, sum of their rows, H, D], each written in place,
    so a pyramid costs no concatenation copy."""
    B, N, H, D = x.shape
    x = x.contiguous()
    lengths = _reduced_lengths(n_out, p, levels)
    out = x.new_empty(B, sum(lengths), H, D)
    norms = x.new_empty((B, N, H) if with_norms else (0,), dtype=torch.float32)
    use_triton = _triton_on(x)
    src, row0 = x, 0
    for j, n in enumerate(lengths):
        dst = out[:, row0 : row0 + n]  # never overlaps src, the previous level
        if use_triton:
            _reduce_level_triton(src, dst, norms, p, shift, scale, with_norms and j == 0)
        else:
            _reduce_level_torch(src, dst, p, shift, scale)
        src, row0 = dst, row0 + n
    if with_norms and not use_triton:
        dtype = None if x.dtype == torch.float64 else torch.float32
        norms.copy_(torch.linalg.vector_norm(x, dim=-1, dtype=dtype))
    return out, norms


@window_reduce.register_fake
def _(x, n_out, p, shift, scale, with_norms, levels=1):
    B, N, H, D = x.shape
    norms = x.new_empty((B, N, H) if with_norms else (0,), dtype=torch.float32)
    return x.new_empty(B, sum(_reduced_lengths(n_out, p, levels)), H, D), norms


def _batch_rows_contiguous(x: Tensor) -> Tensor:
    """x [B, n, H, D] whose every batch is one contiguous block of rows (a row slice of a
    larger buffer is: a pyramid level of chunks side by side), else a contiguous copy."""
    B, n, H, D = x.shape
    if x.stride(3) == 1 and x.stride(2) == D and x.stride(1) == H * D:
        return x
    return x.contiguous()


# --- spread ---------------------------------------------------------------------------------


@torch.library.custom_op("lhdist::spread", mutates_args=())
def spread(
    a: Tensor | None, c: Tensor, n_out: int, p: int, shift: int, offset: int, alpha: float
) -> Tensor:
    """out [B, n_out, H, D]: out[j] = a[j] + alpha * c[(j + shift) // p - offset] where that row
    of c exists (a: optional, [B, n_out, H, D])."""
    B, n_c, H, D = c.shape
    out = c.new_empty(B, n_out, H, D)
    if _triton_on(c):
        W, rows = H * D, 8
        block = _block_w(W, D)
        c = _batch_rows_contiguous(c)
        a_arg = _batch_rows_contiguous(a) if a is not None else c
        _tk.spread_kernel[(B * triton.cdiv(n_out, rows), W // block)](
            a_arg, c, out, n_out, n_c, a_arg.stride(0), c.stride(0), shift, offset, alpha,
            W=W, P=p, ROWS=rows, BLOCK_W=block, HAS_A=a is not None,
        )  # fmt: skip
        return out
    src = (torch.arange(n_out, device=c.device) + shift) // p - offset
    valid = ((src >= 0) & (src < n_c)).view(1, n_out, 1, 1)
    picked = c[:, src.clamp(0, n_c - 1)] * valid
    acc = _acc_dtype(c)
    out.copy_(picked.to(acc).mul_(alpha) + (a.to(acc) if a is not None else 0.0))
    return out


@spread.register_fake
def _(a, c, n_out, p, shift, offset, alpha):
    B, _, H, D = c.shape
    return c.new_empty(B, n_out, H, D)


# --- take_rows / put_rows -------------------------------------------------------------------


def entry_rows(idx_BGS: Tensor, length: int, num_heads: int) -> Tensor:
    """Flat row of every (batch, head, entry) in a [B, length, H, D] tensor: int64 [B, H, S]."""
    B, G, S = idx_BGS.shape
    device = idx_BGS.device
    batch_base = (torch.arange(B, device=device) * length).view(B, 1, 1)
    rows_BGS = (idx_BGS + batch_base) * num_heads
    heads = torch.arange(num_heads, device=device).view(1, num_heads, 1)
    return rows_BGS.repeat_interleave(num_heads // G, dim=1) + heads


def _split_rows(idx_BGS: Tensor, N: int, Pc: int, H: int):
    """Flat rows into the token and the coarse buffer (each valid where it applies), and which."""
    fine = entry_rows(idx_BGS.clamp(max=N - 1), N, H).view(-1)
    coarse = entry_rows((idx_BGS - N).clamp(min=0, max=max(Pc - 1, 0)), Pc, H).view(-1)
    is_fine = (idx_BGS < N).repeat_interleave(H // idx_BGS.shape[1], dim=1).view(-1)
    return fine, coarse, is_fine


def _chunks_to_sequences(x_BnHSD: Tensor, chunks: int) -> Tensor:
    """[Bn, H, S, D] -> [Bn/chunks, H, chunks*S, D]: batch rows i*chunks + j side by side."""
    Bn, H, S, D = x_BnHSD.shape
    if chunks == 1:
        return x_BnHSD
    x = x_BnHSD.view(Bn // chunks, chunks, H, S, D).transpose(1, 2)
    return x.reshape(Bn // chunks, H, chunks * S, D)


def _sequences_to_chunks(x_BHSD: Tensor, chunks: int) -> Tensor:
    """Inverse of `_chunks_to_sequences`."""
    B, H, S, D = x_BHSD.shape
    if chunks == 1:
        return x_BHSD
    x = x_BHSD.view(B, H, chunks, S // chunks, D).transpose(1, 2)
    return x.reshape(B * chunks, H, S // chunks, D)


@torch.library.custom_op("lhdist::take_rows", mutates_args=())
def take_rows(fine: Tensor, coarse: Tensor, idx: Tensor, chunks: int = 1) -> Tensor:
    """Gathered rows [B, H, S, D]: fine[b, idx, h] where idx < N, else coarse[b, idx - N, h]
    (head h reads the indices of its kv group).

    chunks > 1: the batch rows are consecutive chunks of longer sequences (context
    parallelism), and the result is [B/chunks, H, chunks*S, D], each sequence's chunks' entries
    side by side, written there directly."""
    B, N, H, D = fine.shape
    G, S, Pc = idx.shape[1], idx.shape[2], coarse.shape[1]
    fine, coarse = fine.contiguous(), coarse.contiguous()
    if _triton_on(fine):
        out = fine.new_empty(B // chunks, H, chunks * S, D)
        rows = 32
        _tk.take_rows_kernel[(B * H, triton.cdiv(S, rows))](
            fine, coarse, idx.contiguous(), out, N, Pc, S, chunks, H=H, G=G, D=D, ROWS=rows
        )
        return out
    f_rows, c_rows, is_fine = _split_rows(idx, N, Pc, H)
    a = fine.reshape(-1, D).index_select(0, f_rows)
    b = coarse.reshape(-1, D).index_select(0, c_rows)
    gathered = torch.where(is_fine[:, None], a, b).view(B, H, S, D)
    return _chunks_to_sequences(gathered, chunks).contiguous()


@take_rows.register_fake
def _(fine, coarse, idx, chunks=1):
    B, _, H, D = fine.shape
    return fine.new_empty(B // chunks, H, chunks * idx.shape[2], D)


@torch.library.custom_op("lhdist::put_rows_", mutates_args=("fine", "coarse"))
def put_rows_(
    rows: Tensor,
    idx: Tensor,
    fine: Tensor,
    coarse: Tensor,
    seq_len: int,
    accumulate: bool,
    into_fine: bool,
    into_coarse: bool,
    chunks: int = 1,
) -> None:
    """Adjoint of take_rows, in place: write each row of `rows` [B, H, S, D] (chunks > 1:
    [B/chunks, H, chunks*S, D], as take_rows returns it) at its entry, into `fine` [B, N, H, D]
    (added when `accumulate`) and/or `coarse` [B, Pc, H, D]; a buffer not written may be an
    empty placeholder. Rows are unique per head: no atomics."""
    B, G, S = idx.shape
    H, D, N = rows.shape[1], rows.shape[3], seq_len
    Pc = coarse.shape[1] if into_coarse else 0
    if _triton_on(rows):
        r = 32
        _tk.put_rows_kernel[(B * H, triton.cdiv(S, r))](
            rows.contiguous(), idx.contiguous(), fine, coarse, N, Pc, S, chunks,
            H=H, G=G, D=D, ROWS=r, ACCUMULATE=accumulate, FINE=into_fine, COARSE=into_coarse,
        )  # fmt: skip
        return
    f_rows, c_rows, is_fine = _split_rows(idx, N, max(Pc, 1), H)
    values = _sequences_to_chunks(rows, chunks).reshape(-1, D)
    if into_fine:
        sel = is_fine.nonzero().squeeze(1)
        flat = fine.view(-1, D)
        if accumulate:
            flat.index_add_(0, f_rows[sel], values[sel].to(fine.dtype))
        else:
            flat.index_copy_(0, f_rows[sel], values[sel].to(fine.dtype))
    if into_coarse:
        sel = (~is_fine).nonzero().squeeze(1)
        coarse.view(-1, D).index_copy_(0, c_rows[sel], values[sel].to(coarse.dtype))


@put_rows_.register_fake
def _(rows, idx, fine, coarse, seq_len, accumulate, into_fine, into_coarse, chunks=1):
    return None


# --- take_flat_ / add_flat_ ------------------------------------------------------------------


def _flat_grid(R: int, hd: int) -> tuple[tuple[int, int], int, int]:
    rows, block = 16, min(triton.next_power_of_2(hd), 1024)
    return (triton.cdiv(R, rows), triton.cdiv(hd, block)), rows, block


def _row_major(x: Tensor) -> Tensor:
    """x [R, hd] itself when its columns are adjacent (rows may be apart: a column block of a
    wider buffer), else a contiguous copy."""
    return x if x.stride(1) == 1 else x.contiguous()


@torch.library.custom_op("lhdist::take_flat_", mutates_args=("out",))
def take_flat_(
    out: Tensor,
    fine: Tensor,
    coarse: Tensor,
    is_fine: Tensor,
    fine_rows: Tensor,
    coarse_rows: Tensor,
) -> None:
    """out [R, hd] (adjacent columns, rows any distance apart) = rows of two flat row buffers
    fine [*, hd] / coarse [*, hd]: row r is fine[fine_rows[r]] where is_fine[r], else
    coarse[coarse_rows[r]] (the other index of a row must be in range: the torch path reads it)."""
    R, hd = out.shape
    fine, coarse = fine.contiguous(), coarse.contiguous()
    if _triton_on(fine) and out.stride(1) == 1:
        grid, rows, block = _flat_grid(R, hd)
        _tk.take_flat_kernel[grid](
            fine, coarse, is_fine.contiguous().view(torch.uint8), fine_rows.contiguous(),
            coarse_rows.contiguous(), out, R, out.stride(0), HD=hd, ROWS=rows, BLOCK_C=block,
        )  # fmt: skip
        return
    a = fine.index_select(0, fine_rows)
    b = coarse.index_select(0, coarse_rows)
    out.copy_(torch.where(is_fine[:, None], a, b))


@take_flat_.register_fake
def _(out, fine, coarse, is_fine, fine_rows, coarse_rows):
    return None


@torch.library.custom_op("lhdist::add_flat_", mutates_args=("fine", "coarse"))
def add_flat_(
    rows: Tensor,
    is_fine: Tensor,
    fine_rows: Tensor,
    coarse_rows: Tensor,
    fine: Tensor,
    coarse: Tensor,
    into_fine: bool,
    into_coarse: bool,
) -> None:
    """Adjoint of take_flat_, in place: rows [R, hd] (a column block of a wider buffer is fine)
    where is_fine added into fine[fine_rows] (`into_fine`), the others into coarse[coarse_rows]
    (`into_coarse`); contiguous flat buffers, a buffer not written may be an empty
    placeholder. Real target rows are distinct."""
    R, hd = rows.shape
    if _triton_on(rows):
        grid, r, block = _flat_grid(R, hd)
        rows = _row_major(rows)
        _tk.add_flat_kernel[grid](
            rows, is_fine.contiguous().view(torch.uint8), fine_rows.contiguous(),
            coarse_rows.contiguous(), fine, coarse, R, rows.stride(0),
            HD=hd, ROWS=r, BLOCK_C=block, FINE=into_fine, COARSE=into_coarse,
        )  # fmt: skip
        return
    # The index of the other buffer is a valid stand-in row there; adding exact zeros to it
    # changes nothing, so a real row shared with a stand-in keeps its value in any order.
    mask = is_fine[:, None]
    if into_fine:
        fine.index_add_(0, fine_rows, rows.masked_fill(~mask, 0).to(fine.dtype))
    if into_coarse:
        coarse.index_add_(0, coarse_rows, rows.masked_fill(mask, 0).to(coarse.dtype))


@add_flat_.register_fake
def _(rows, is_fine, fine_rows, coarse_rows, fine, coarse, into_fine, into_coarse):
    return None


# --- rows_to_heads_first / heads_first_to_rows_ ---------------------------------------------


def _share_grid(T: int, width: int) -> tuple[tuple[int, int], int, int]:
    block = min(triton.next_power_of_2(width), 1024)
    rows = max(1, 8192 // block)
    return (triton.cdiv(T, rows), triton.cdiv(width, block)), rows, block


@torch.library.custom_op("lhdist::rows_to_heads_first", mutates_args=())
def rows_to_heads_first(
    src: Tensor, perm: Tensor, batch: int, groups: int, heads_per_group: int, head_dim: int
) -> Tensor:
    """x [B, G*hx, S, D] (B=batch, G=groups, hx=heads_per_group, D=head_dim) of permuted rows:
    x[b, g*hx + j, s] = src[perm[(b*S + s)*G + g], j*D : (j+1)*D]. src [R, >= hx*D] with
    adjacent columns (a column block of a wider buffer is fine); perm [B*S*G]."""
    T, width = perm.shape[0], heads_per_group * head_dim
    S = T // (batch * groups)
    x = src.new_empty(batch, groups * heads_per_group, S, head_dim)
    if _triton_on(src):
        src = _row_major(src)
        grid, rows, block = _share_grid(T, width)
        _tk.rows_to_heads_first_kernel[grid](
            src, perm.contiguous(), x, T, S, src.stride(0),
            G=groups, HX=heads_per_group, D=head_dim, ROWS=rows, BLOCK_C=block,
        )  # fmt: skip
        return x
    picked = src.index_select(0, perm)[:, :width]
    x.copy_(picked.reshape(batch, S, groups * heads_per_group, head_dim).transpose(1, 2))
    return x


@rows_to_heads_first.register_fake
def _(src, perm, batch, groups, heads_per_group, head_dim):
    S = perm.shape[0] // (batch * groups)
    return src.new_empty(batch, groups * heads_per_group, S, head_dim)


@torch.library.custom_op("lhdist::heads_first_to_rows_", mutates_args=("dst",))
def heads_first_to_rows_(dst: Tensor, x: Tensor, perm: Tensor, groups: int) -> None:
    """The inverse of rows_to_heads_first, in place: dst[perm[t], :hx*D] = row t of x
    [B, G*hx, S, D]; every row of perm written once (a permutation: no atomics)."""
    B, heads, S, D = x.shape
    T, width = perm.shape[0], heads // groups * D
    x = x.contiguous()
    if _triton_on(x) and dst.stride(1) == 1:
        grid, rows, block = _share_grid(T, width)
        _tk.heads_first_to_rows_kernel[grid](
            x, perm.contiguous(), dst, T, S, dst.stride(0),
            G=groups, HX=heads // groups, D=D, ROWS=rows, BLOCK_C=block,
        )  # fmt: skip
        return
    dst[:, :width].index_copy_(0, perm, x.transpose(1, 2).reshape(T, width))


@heads_first_to_rows_.register_fake
def _(dst, x, perm, groups):
    return None
