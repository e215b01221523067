"""Run under TRITON_INTERPRET=1: every Triton row kernel equals the torch path on CPU tensors.

Invoked by tests/ops/test_kernels.py in a subprocess (the interpreter must be chosen before
triton is imported); exits non-zero with a message on the first mismatch.
"""

from __future__ import annotations

import os
import sys

import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention, lighthouse_select
from lhdist.ops.kernels import rows


def both(fn):
    """(triton result, torch result) of fn()."""
    os.environ["LHDIST_TRITON"] = "interpret"
    a = fn()
    os.environ["LHDIST_TRITON"] = "off"
    b = fn()
    return a, b


def check(name, a, b, atol=1e-5):
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    for x, y in zip(a, b, strict=True):
        if x.numel() and not torch.allclose(x.float(), y.float(), atol=atol, rtol=1e-5):
            sys.exit(f"{name}: max diff {(x.float() - y.float()).abs().max().item():.3g}")
    print(f"ok {name}")


def main() -> None:
    torch.manual_seed(0)
    B, N, H, G, D, p = 2, 256, 4, 2, 16, 4
    x = torch.randn(B, N, H, D)
    # levels=3: levels 2 and 3 read and write row slices of one buffer (batch stride != rows).
    for shift, scale, norms, levels in [
        (0, 0.25, True, 3),
        (p - 1, 1.0, False, 3),
        (1, 0.5, True, 1),
    ]:

        def reduce(s=shift, c=scale, n=norms, lv=levels):
            return rows.window_reduce(x, N // p, p, s, c, n, lv)

        check(f"window_reduce shift={shift} levels={levels}", *both(reduce))
    c = torch.randn(B, N // p, H, D)
    for shift, offset, with_a in [(0, 0, True), (1, 1, False), (1, 1, True)]:
        a = x if with_a else None
        check(f"spread shift={shift} a={with_a}", *both(
            lambda s=shift, o=offset, a=a: rows.spread(a, c, N, p, s, o, 0.5)))  # fmt: skip
    # Row slices of larger multi-batch buffers (pyramid levels of CP chunks): batch strides.
    c_level = torch.randn(B, N // p + 7, H, D)[:, 3 : 3 + N // p]
    a_level = torch.randn(B, N + 5, H, D)[:, 5:]
    check("spread of row slices", *both(lambda: rows.spread(a_level, c_level, N, p, 1, 1, 0.5)))
    spec, M = LighthouseSpec(3, p, 128, "global"), 2048
    B, H, G = 1, 2, 1  # the interpreter runs every program in Python: keep the op small
    q, k = torch.randn(B, M, H, D), torch.randn(B, M, G, D)
    idx = lighthouse_select(q, k, spec)
    coarse = torch.randn(B, sum(spec.level_lengths(M)[1:]), H, D)
    check("take_rows", *both(lambda: rows.take_rows(q, coarse, idx)))
    vals = torch.randn(B, H, idx.shape[-1], D)

    def put(accumulate, into_fine, into_coarse):
        fine, crs = q.clone(), torch.zeros_like(coarse)
        rows.put_rows_(vals, idx, fine, crs, M, accumulate, into_fine, into_coarse)
        return fine, crs

    for flags in [(False, True, True), (True, True, False), (False, False, True)]:
        check(f"put_rows_ {flags}", *both(lambda f=flags: put(*f)))

    # Two chunks of one sequence as batch rows: gathered side by side [1, H, 2*S, D].
    q2, k2 = torch.randn(2, M, H, D), torch.randn(2, M, G, D)
    idx2 = lighthouse_select(q2, k2, spec)
    coarse2 = torch.randn(2, coarse.shape[1], H, D)
    check("take_rows chunks=2", *both(lambda: rows.take_rows(q2, coarse2, idx2, 2)))
    vals2 = torch.randn(1, H, 2 * idx2.shape[-1], D)

    def put2():
        fine, crs = q2.clone(), torch.zeros_like(coarse2)
        rows.put_rows_(vals2, idx2, fine, crs, M, True, True, True, 2)
        return fine, crs

    check("put_rows_ chunks=2", *both(put2))

    # Flat rows: R entries, each from the token buffer or the coarse one; the other index is a
    # stand-in that may coincide with another entry's real row there (it must stay unchanged).
    hd, R = 24, 300
    fine_buf, coarse_buf = torch.randn(500, hd), torch.randn(400, hd)
    is_fine = torch.rand(R) < 0.6
    fine_rows = torch.where(is_fine, torch.randperm(500)[:R], torch.arange(R) % 500)
    coarse_rows = torch.where(is_fine, torch.arange(R) % 400, torch.randperm(400)[:R])
    flat = (is_fine, fine_rows, coarse_rows)

    def take():  # into a column block of a wider buffer (rows apart)
        out = torch.zeros(R, hd + 8)
        rows.take_flat_(out[:, 8:], fine_buf, coarse_buf, *flat)
        return out

    check("take_flat_", *both(take))
    flat_vals = torch.randn(R, hd + 5)[:, 5:]  # a column block too

    def add(into_fine, into_coarse):
        fine, crs = fine_buf.clone(), coarse_buf.clone()
        rows.add_flat_(flat_vals, *flat, fine, crs, into_fine, into_coarse)
        return fine, crs

    for flags in [(True, False), (False, True), (True, True)]:
        check(f"add_flat_ {flags}", *both(lambda f=flags: add(*f)))

    # The rows a rank attends: a permutation into SDPA's layout and back (column blocks of a
    # wider received buffer, hx heads per group).
    Bs, Ss, Gs, hx = 2, 24, 3, 2
    T = Bs * Ss * Gs
    order = torch.randperm(T)
    received = torch.randn(T, hx * D + 2 * D)
    check("rows_to_heads_first", *both(
        lambda: rows.rows_to_heads_first(received[:, hx * D : hx * D + D], order, Bs, Gs, 1, D)
    ))  # fmt: skip
    check("rows_to_heads_first hx=2", *both(
        lambda: rows.rows_to_heads_first(received[:, : hx * D], order, Bs, Gs, hx, D)
    ))  # fmt: skip
    share = torch.randn(Bs, Gs * hx, Ss, D)

    def to_rows():
        dst = torch.zeros(T, hx * D + 5)
        rows.heads_first_to_rows_(dst[:, 5:], share, order, Gs)
        return dst

    check("heads_first_to_rows_", *both(to_rows))

    v = torch.randn(B, M, G, D)

    def op():
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = lighthouse_attention(*xs, spec)
        out.backward(torch.ones_like(out))
        return [out.detach()] + [t.grad for t in xs]

    check("lighthouse_attention fwd+bwd", *both(op), atol=1e-4)


if __name__ == "__main__":
    main()
