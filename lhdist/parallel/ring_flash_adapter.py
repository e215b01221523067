"""Optional: run ring attention through ring-flash-attn (flash-attn kernels) on CUDA.

Legend: B batch, S local length, H query heads, G kv heads, D head dim, W CP group size.

Used by `ring_attention(impl="auto")` only where it is right: CUDA tensors in bf16 (both
layouts) or fp16 (zigzag only: ring-flash-attn 0.1.8's contiguous backward returns dq in bf16),
head dim a multiple of 8 up to 256. flash-attn's fp32 backward is wrong, so fp32 never comes
here. Neither package is a dependency; without them `available()` is False.

flash-attn's package `__init__` (and ring-flash-attn's, which imports transformers) can fail on
import, so only the submodules needed are loaded, without running those `__init__`s.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from lhdist.parallel.collectives import active_comm_stats, record_comm

_DTYPES = {"zigzag": (torch.bfloat16, torch.float16), "contiguous": (torch.bfloat16,)}


def _import_submodule(package: str, submodule: str) -> types.ModuleType:
    """import package.submodule without executing package/__init__.py (if not yet imported)."""
    name = f"{package}.{submodule}"
    if name in sys.modules:
        return sys.modules[name]
    if package in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"no package {package!r}")
    shell = types.ModuleType(package)
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules[package] = shell
    try:
        return importlib.import_module(name)
    finally:
        # Drop the shell: a later plain `import package` runs the real __init__, which finds
        # the submodule already loaded.
        if sys.modules.get(package) is shell:
            del sys.modules[package]


@functools.cache
def _ring_flash_funcs() -> tuple[Callable, Callable] | None:
    """(ring_flash_attn_func, zigzag_ring_flash_attn_func), or None if unavailable."""
    try:
        _import_submodule("flash_attn", "flash_attn_interface")
        ring = _import_submodule("ring_flash_attn", "ring_flash_attn")
        zigzag = _import_submodule("ring_flash_attn", "zigzag_ring_flash_attn")
    except Exception:  # missing packages, or a broken build failing at import: use our ring
        return None
    return ring.ring_flash_attn_func, zigzag.zigzag_ring_flash_attn_func


def available() -> bool:
    """True when ring-flash-attn and flash-attn's interface module import."""
    return _ring_flash_funcs() is not None


def applies(q: Tensor, k: Tensor, layout: str, causal: bool) -> bool:
    """Whether `ring_attention(impl="auto")` should dispatch here for these inputs."""
    head_dim = q.shape[-1]
    if not (q.is_cuda and q.dim() == 4 and head_dim % 8 == 0 and head_dim <= 256):
        return False
    dtypes = _DTYPES["zigzag" if layout == "zigzag" and causal else "contiguous"]
    return q.dtype in dtypes and k.dtype == q.dtype and available()


class _RecordRingTraffic(torch.autograd.Function):
    """Identity that books ring-flash-attn's ring traffic (which we cannot hook) in CommStats:
    forward W-1 k/v blocks; backward W-1 k/v blocks and W fp32 dk/dv accumulators."""

    @staticmethod
    def forward(ctx, out: Tensor, k: Tensor, world: int) -> Tensor:
        ctx.stats = active_comm_stats()
        ctx.kv_numel, ctx.kv_bytes = 2 * k.numel(), 2 * k.numel() * k.element_size()
        ctx.world = world
        for _ in range(world - 1):
            record_comm("ring", ctx.kv_bytes, "forward", ctx.stats)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        for _ in range(ctx.world - 1):
            record_comm("ring", ctx.kv_bytes, "backward", ctx.stats)
        for _ in range(ctx.world):
            record_comm("ring", ctx.kv_numel * 4, "backward", ctx.stats)
        return grad, None, None


def ring_flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    group: dist.ProcessGroup | None,
    layout: str,
    causal: bool,
    scale: float,
) -> Tensor:
    """ring_attention's contract (q [B, S, H, D], k/v [B, S, G, D] -> [B, S, H, D]) computed by
    ring-flash-attn. Zigzag needs causal=True there; non-causal attention ignores token order,
    so it runs the plain ring for either layout."""
    funcs = _ring_flash_funcs()
    if funcs is None:
        raise RuntimeError("ring-flash-attn (with flash-attn) is not importable")
    ring_func, zigzag_func = funcs
    func = zigzag_func if layout == "zigzag" and causal else ring_func
    out = func(q, k, v, softmax_scale=scale, causal=causal, group=group)
    return _RecordRingTraffic.apply(out, k, dist.get_world_size(group))
