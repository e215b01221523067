"""Triton kernels for the memory-bound parts of Lighthouse attention.

Every tensor is a stack of rows of width W = heads*D (contiguous). Four kernels:
  window_reduce: out[i] = scale * sum_{r<p} x[i*p + shift + r] (rows past N skipped), and, when
                 asked, fp32 L2 norms of every D-slice of the rows read (pooling + scores in one
                 read of the input);
  spread:        out[j] = a[j] + alpha * c[(j + shift) // p - offset] (where that row exists),
                 `a` optional (write-only broadcast);
  take_rows:     rows of the gathered sequence from (tokens, coarse pyramid) by pyramid index;
  put_rows:      the adjoint: write (or add) gathered rows back at their pyramid rows.
Each program moves whole D-wide vectors with vectorised loads, which the generic PyTorch
broadcast/index kernels do not, and none needs atomics (selected rows are unique per head).

Legend: B batch, N rows of the token level, Pc coarse rows, S selected length, H heads of the
tensor, G kv heads, D head dim, W = H*D.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def window_reduce_kernel(
    x_ptr, out_ptr, norm_ptr, n_in, n_out, x_batch_stride, out_batch_stride, shift, scale,
    W: tl.constexpr, D: tl.constexpr, P: tl.constexpr, BLOCK_W: tl.constexpr,
    WITH_NORMS: tl.constexpr,
):  # fmt: skip
    # Batch strides are free, so x and out may be row slices of larger buffers (pyramid levels).
    row = tl.program_id(0)  # b * n_out + i
    wb = tl.program_id(1)
    b = row // n_out
    i = row % n_out
    r = tl.arange(0, P)
    cols = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    src = i * P + shift + r  # [P] input rows of this window
    valid = src < n_in
    x_rows = b.to(tl.int64) * x_batch_stride + src.to(tl.int64) * W
    tile = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=valid[:, None], other=0.0)
    tile = tile.to(tl.float32)  # [P, BLOCK_W]
    total = tl.sum(tile, axis=0) * scale
    out_ptrs = out_ptr + b.to(tl.int64) * out_batch_stride + i.to(tl.int64) * W + cols
    tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty))
    if WITH_NORMS:
        heads: tl.constexpr = BLOCK_W // D
        sq = tl.reshape(tile * tile, (P, heads, D))
        norms = tl.sqrt(tl.sum(sq, axis=2))  # [P, heads]
        h = wb * heads + tl.arange(0, heads)
        n_ptrs = norm_ptr + (b * n_in + src)[:, None].to(tl.int64) * (W // D) + h[None, :]
        tl.store(n_ptrs, norms, mask=valid[:, None])


@triton.jit
def spread_kernel(
    a_ptr, c_ptr, out_ptr, n_out, n_c, shift, offset, alpha,
    W: tl.constexpr, P: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
    HAS_A: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    wb = tl.program_id(1)
    b = pid // tl.cdiv(n_out, ROWS)
    j = (pid % tl.cdiv(n_out, ROWS)) * ROWS + tl.arange(0, ROWS)
    cols = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    in_range = j < n_out
    src = (j + shift) // P - offset
    has_c = in_range & (src >= 0) & (src < n_c)
    c_ptrs = c_ptr + (b * n_c + src)[:, None].to(tl.int64) * W + cols[None, :]
    val = tl.load(c_ptrs, mask=has_c[:, None], other=0.0).to(tl.float32) * alpha
    rows = (b * n_out + j)[:, None].to(tl.int64) * W + cols[None, :]
    if HAS_A:
        val += tl.load(a_ptr + rows, mask=in_range[:, None], other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, val.to(out_ptr.dtype.element_ty), mask=in_range[:, None])


@triton.jit
def _entries_of_program(idx_ptr, S, H: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr):
    """This program's (batch b, head h, entry block s, in-range mask, pyramid indices)."""
    bh = tl.program_id(0)  # b * H + h
    b = bh // H
    h = bh % H
    s = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    ok = s < S
    idx = tl.load(idx_ptr + (b * G + h // (H // G)) * S + s, mask=ok, other=0)
    return b, h, s, ok, idx


@triton.jit
def take_rows_kernel(
    fine_ptr, coarse_ptr, idx_ptr, out_ptr, N, Pc, S,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    b, h, s, ok, idx = _entries_of_program(idx_ptr, S, H, G, ROWS)
    bh = b * H + h
    is_fine = idx < N
    d = tl.arange(0, D)
    f_rows = ((b * N + idx) * H + h).to(tl.int64)
    c_rows = ((b * Pc + idx - N) * H + h).to(tl.int64)
    a = tl.load(
        fine_ptr + f_rows[:, None] * D + d[None, :], mask=(ok & is_fine)[:, None], other=0.0
    )
    c = tl.load(
        coarse_ptr + c_rows[:, None] * D + d[None, :], mask=(ok & ~is_fine)[:, None], other=0.0
    )
    out_rows = (bh * S + s).to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] * D + d[None, :], a + c, mask=ok[:, None])


@triton.jit
def put_rows_kernel(
    rows_ptr, idx_ptr, fine_ptr, coarse_ptr, N, Pc, S,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
    ACCUMULATE: tl.constexpr, FINE: tl.constexpr, COARSE: tl.constexpr,
):  # fmt: skip
    b, h, s, ok, idx = _entries_of_program(idx_ptr, S, H, G, ROWS)
    bh = b * H + h
    is_fine = idx < N
    d = tl.arange(0, D)
    vals = tl.load(rows_ptr + (bh * S + s).to(tl.int64)[:, None] * D + d[None, :], mask=ok[:, None])
    if FINE:
        f_ptrs = fine_ptr + ((b * N + idx) * H + h).to(tl.int64)[:, None] * D + d[None, :]
        f_mask = (ok & is_fine)[:, None]
        if ACCUMULATE:
            old = tl.load(f_ptrs, mask=f_mask, other=0.0).to(tl.float32)
            tl.store(f_ptrs, (vals.to(tl.float32) + old).to(fine_ptr.dtype.element_ty), mask=f_mask)
        else:
            tl.store(f_ptrs, vals, mask=f_mask)
    if COARSE:
        c_ptrs = coarse_ptr + ((b * Pc + idx - N) * H + h).to(tl.int64)[:, None] * D + d[None, :]
        tl.store(c_ptrs, vals, mask=(ok & ~is_fine)[:, None])
