"""Triton kernels for the memory-bound parts of Lighthouse attention.

Every tensor is a stack of rows of width W = heads*D (contiguous). Eight kernels:
  window_reduce: out[i] = scale * sum_{r<p} x[i*p + shift + r] (rows past N skipped), and, when
                 asked, fp32 L2 norms of every D-slice of the rows read (pooling + scores in one
                 read of the input);
  spread:        out[j] = a[j] + alpha * c[(j + shift) // p - offset] (where that row exists),
                 `a` optional (write-only broadcast);
  take_rows:     rows of the gathered sequence from (tokens, coarse pyramid) by pyramid index;
  put_rows:      the adjoint: write (or add) gathered rows back at their pyramid rows;
  take_flat, add_flat: the same for rows addressed one by one in flat [rows, HD] views (the
                 entries a rank owns under global CP selection, which vary per head);
  rows_to_heads_first, heads_first_to_rows: a permutation of such rows to and from the
                 [B, heads, S, D] layout of SDPA in one pass (the rows a rank attends).
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
    a_ptr, c_ptr, out_ptr, n_out, n_c, a_batch_stride, c_batch_stride, shift, offset, alpha,
    W: tl.constexpr, P: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
    HAS_A: tl.constexpr,
):  # fmt: skip
    # Batch strides are free, so a and c may be row slices of larger buffers (pyramid levels).
    pid = tl.program_id(0)
    wb = tl.program_id(1)
    b = pid // tl.cdiv(n_out, ROWS)
    j = (pid % tl.cdiv(n_out, ROWS)) * ROWS + tl.arange(0, ROWS)
    cols = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    in_range = j < n_out
    src = (j + shift) // P - offset
    has_c = in_range & (src >= 0) & (src < n_c)
    c_rows = b.to(tl.int64) * c_batch_stride + src.to(tl.int64) * W
    val = tl.load(c_ptr + c_rows[:, None] + cols[None, :], mask=has_c[:, None], other=0.0)
    val = val.to(tl.float32) * alpha
    rows = (b * n_out + j)[:, None].to(tl.int64) * W + cols[None, :]
    if HAS_A:
        a_rows = b.to(tl.int64) * a_batch_stride + j.to(tl.int64) * W
        a_ptrs = a_ptr + a_rows[:, None] + cols[None, :]
        val += tl.load(a_ptrs, mask=in_range[:, None], other=0.0).to(tl.float32)
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
def _gathered_row(b, h, s, S, chunks, H: tl.constexpr):
    """Row of entry s of batch row b, head h in the gathered [B/chunks, H, chunks*S, D] tensor:
    batch rows b = i*chunks + j are chunk j of sequence i, side by side (chunks=1: [B, H, S])."""
    i = b // chunks
    j = b % chunks
    return (((i * H + h) * chunks + j) * S + s).to(tl.int64)


@triton.jit
def take_rows_kernel(
    fine_ptr, coarse_ptr, idx_ptr, out_ptr, N, Pc, S, chunks,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    b, h, s, ok, idx = _entries_of_program(idx_ptr, S, H, G, ROWS)
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
    out_rows = _gathered_row(b, h, s, S, chunks, H)
    tl.store(out_ptr + out_rows[:, None] * D + d[None, :], a + c, mask=ok[:, None])


@triton.jit
def put_rows_kernel(
    rows_ptr, idx_ptr, fine_ptr, coarse_ptr, N, Pc, S, chunks,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr,
    ACCUMULATE: tl.constexpr, FINE: tl.constexpr, COARSE: tl.constexpr,
):  # fmt: skip
    b, h, s, ok, idx = _entries_of_program(idx_ptr, S, H, G, ROWS)
    is_fine = idx < N
    d = tl.arange(0, D)
    rows = _gathered_row(b, h, s, S, chunks, H)
    vals = tl.load(rows_ptr + rows[:, None] * D + d[None, :], mask=ok[:, None])
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


@triton.jit
def _flat_program(is_fine_ptr, R, HD: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's flat entries r, columns, in-range masks (entries, [1, BLOCK_C] columns)
    and which entries are token rows."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = r < R
    is_fine = tl.load(is_fine_ptr + r, mask=ok, other=0) != 0
    return r, cols, ok, (cols < HD)[None, :], is_fine


@triton.jit
def take_flat_kernel(
    fine_ptr, coarse_ptr, is_fine_ptr, fine_rows_ptr, coarse_rows_ptr, out_ptr, R, out_stride,
    HD: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Rows of width HD addressed one by one: out[r] = fine[fine_rows[r]] if is_fine[r] else
    # coarse[coarse_rows[r]]. The row not used may be anything (it is never read). out's rows
    # are out_stride apart: it may be a column block of a wider buffer.
    r, cols, ok, m, is_fine = _flat_program(is_fine_ptr, R, HD, ROWS, BLOCK_C)
    f_rows = tl.load(fine_rows_ptr + r, mask=ok & is_fine, other=0).to(tl.int64)
    c_rows = tl.load(coarse_rows_ptr + r, mask=ok & ~is_fine, other=0).to(tl.int64)
    f_mask = (ok & is_fine)[:, None] & m
    c_mask = (ok & ~is_fine)[:, None] & m
    a = tl.load(fine_ptr + f_rows[:, None] * HD + cols[None, :], mask=f_mask)
    c = tl.load(coarse_ptr + c_rows[:, None] * HD + cols[None, :], mask=c_mask)
    val = tl.where(is_fine[:, None], a, c)
    out_ptrs = out_ptr + r.to(tl.int64)[:, None] * out_stride + cols[None, :]
    tl.store(out_ptrs, val, mask=ok[:, None] & m)


@triton.jit
def add_flat_kernel(
    rows_ptr, is_fine_ptr, fine_rows_ptr, coarse_rows_ptr, fine_ptr, coarse_ptr, R, rows_stride,
    HD: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    FINE: tl.constexpr, COARSE: tl.constexpr,
):  # fmt: skip
    # The adjoint: add row r into fine[fine_rows[r]] (is_fine) or coarse[coarse_rows[r]]. Real
    # target rows are distinct, so no two programs touch one row: no atomics.
    r, cols, ok, m, is_fine = _flat_program(is_fine_ptr, R, HD, ROWS, BLOCK_C)
    v_ptrs = rows_ptr + r.to(tl.int64)[:, None] * rows_stride + cols[None, :]
    vals = tl.load(v_ptrs, mask=ok[:, None] & m).to(tl.float32)
    if FINE:
        f_rows = tl.load(fine_rows_ptr + r, mask=ok & is_fine, other=0).to(tl.int64)
        f_ptrs = fine_ptr + f_rows[:, None] * HD + cols[None, :]
        f_mask = (ok & is_fine)[:, None] & m
        old = tl.load(f_ptrs, mask=f_mask, other=0.0).to(tl.float32)
        tl.store(f_ptrs, (old + vals).to(fine_ptr.dtype.element_ty), mask=f_mask)
    if COARSE:
        c_rows = tl.load(coarse_rows_ptr + r, mask=ok & ~is_fine, other=0).to(tl.int64)
        c_ptrs = coarse_ptr + c_rows[:, None] * HD + cols[None, :]
        c_mask = (ok & ~is_fine)[:, None] & m
        old = tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(c_ptrs, (old + vals).to(coarse_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _share_program(
    perm_ptr, T, S_loc,
    G: tl.constexpr, HX: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """This program's share rows t = (b*S_loc + s)*G + g and columns c: their rows perm[t] in
    the flat buffer (int64), the element offsets in x [B, G*HX, S_loc, D] (head g*HX + c // D,
    dim c % D), and the in-range mask."""
    t = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (t < T)[:, None] & (c < HX * D)[None, :]
    rows = tl.load(perm_ptr + t, mask=t < T, other=0).to(tl.int64)
    g = t % G
    s = (t // G) % S_loc
    b = t // (G * S_loc)
    head = (b * (G * HX) + g * HX)[:, None] + (c // D)[None, :]
    offsets = (head.to(tl.int64) * S_loc + s[:, None]) * D + (c % D)[None, :]
    return rows, c, offsets, ok


@triton.jit
def rows_to_heads_first_kernel(
    src_ptr, perm_ptr, x_ptr, T, S_loc, src_stride,
    G: tl.constexpr, HX: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # x[b, g*HX + j, s, :] = src[perm[t], j*D : (j+1)*D] for share row t = (b*S_loc + s)*G + g:
    # a permutation of rows and the heads-first layout of SDPA in one pass.
    rows, c, offsets, ok = _share_program(perm_ptr, T, S_loc, G, HX, D, ROWS, BLOCK_C)
    vals = tl.load(src_ptr + rows[:, None] * src_stride + c[None, :], mask=ok)
    tl.store(x_ptr + offsets, vals, mask=ok)


@triton.jit
def heads_first_to_rows_kernel(
    x_ptr, perm_ptr, dst_ptr, T, S_loc, dst_stride,
    G: tl.constexpr, HX: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # The inverse: dst[perm[t], j*D : (j+1)*D] = x[b, g*HX + j, s, :]; every row written once.
    rows, c, offsets, ok = _share_program(perm_ptr, T, S_loc, G, HX, D, ROWS, BLOCK_C)
    vals = tl.load(x_ptr + offsets, mask=ok)
    tl.store(dst_ptr + rows[:, None] * dst_stride + c[None, :], vals, mask=ok)
