"""Attention on one block that also returns its log-sum-exp: the building block of ring attention.

Legend: B batch, H query heads, G kv heads (G divides H; query head h reads kv head h // (H/G)),
S block length (queries Sq, keys Sk), D head dim.

`attention_with_lse` returns the softmax-normalised block output and the fp32 log-sum-exp of the
scaled scores per query row; two blocks over disjoint keys merge exactly through their LSEs.
`attention_block_backward` takes the *final* (merged) output and LSE of the rows, so each block's
gradient is its exact share of the full attention gradient (the flash-attention identity
dS = P * (dP - rowsum(dO * O)) with P = exp(scale * QK^T - lse)).

Kernels, picked by `select_block_impl` (deterministic for a given device, dtype and head dim):
  cpu:  aten._scaled_dot_product_flash_attention_for_cpu (+ backward), GQA native.
  cuda: cuDNN -> flash -> memory-efficient SDPA ops; a kernel that raises is skipped from then on
        for that dtype and head dim (warned once). Only exercised by the `gpu` tests.
  math: fp32 softmax in plain torch (`attention_with_lse_math`, the test reference).
`LHDIST_BLOCK_IMPL=math|cpu_flash|cudnn|flash|efficient` forces one (debugging, benchmarks).
"""

from __future__ import annotations

import math
import os
import warnings

import torch
from torch import Tensor

aten = torch.ops.aten

CUDA_IMPLS = ("cudnn", "flash", "efficient")
BLOCK_IMPLS = ("math", "cpu_flash", *CUDA_IMPLS)
_CPU_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_failed_cuda_impls: set[tuple[str, torch.dtype, int]] = set()


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of LSEs and merged outputs: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_shapes(q_BHSD: Tensor, k_BGSD: Tensor, v_BGSD: Tensor, causal: bool) -> None:
    if q_BHSD.dim() != 4 or k_BGSD.dim() != 4 or v_BGSD.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-d [B, heads, S, D]; got {tuple(q_BHSD.shape)}, "
            f"{tuple(k_BGSD.shape)}, {tuple(v_BGSD.shape)}"
        )
    B, H, Sq, D = q_BHSD.shape
    if k_BGSD.shape != v_BGSD.shape or k_BGSD.shape[0] != B or k_BGSD.shape[3] != D:
        raise ValueError(
            f"k {tuple(k_BGSD.shape)} and v {tuple(v_BGSD.shape)} must both be "
            f"[B={B}, G, Sk, D={D}]"
        )
    G = k_BGSD.shape[1]
    if H % G != 0:
        raise ValueError(f"query heads H={H} must be a multiple of kv heads G={G}")
    if causal and Sq != k_BGSD.shape[2]:
        raise ValueError(
            f"a causal block must be square (query i sees keys j <= i); got Sq={Sq}, "
            f"Sk={k_BGSD.shape[2]}"
        )


def _expand_kv(x_BGSD: Tensor, num_heads: int) -> Tensor:
    """[B, G, S, D] -> [B, H, S, D] (a copy: the kernels that need this want dense strides)."""
    B, G, S, D = x_BGSD.shape
    if num_heads == G:
        return x_BGSD
    return x_BGSD[:, :, None].expand(B, G, num_heads // G, S, D).reshape(B, num_heads, S, D)


def _reduce_kv_grad(dx_BHSD: Tensor, num_kv_heads: int) -> Tensor:
    """Adjoint of `_expand_kv`: sum the gradients of the H/G query heads that share a kv head."""
    B, H, S, D = dx_BHSD.shape
    if num_kv_heads == H:
        return dx_BHSD
    return dx_BHSD.view(B, num_kv_heads, H // num_kv_heads, S, D).sum(dim=2)


def select_block_impl(q_BHSD: Tensor) -> str:
    """The kernel `attention_with_lse` uses for this device, dtype and head dim."""
    forced = os.environ.get("LHDIST_BLOCK_IMPL")
    if forced:
        if forced not in BLOCK_IMPLS:
            raise ValueError(f"LHDIST_BLOCK_IMPL={forced!r} must be one of {BLOCK_IMPLS}")
        return forced
    if q_BHSD.device.type == "cpu":
        return "cpu_flash" if q_BHSD.dtype in _CPU_FLASH_DTYPES else "math"
    if q_BHSD.device.type == "cuda":
        for impl in _cuda_candidates(q_BHSD.dtype, q_BHSD.shape[-1]):
            if (impl, q_BHSD.dtype, q_BHSD.shape[-1]) not in _failed_cuda_impls:
                return impl
    return "math"


def _cuda_candidates(dtype: torch.dtype, head_dim: int) -> tuple[str, ...]:
    # cuDNN and flash take half precision; memory-efficient serves fp32 (its half-precision
    # backward disagreed with the fp32 reference on an H200, so it is not a fallback there).
    if dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0:
        return ("cudnn", "flash") if head_dim <= 128 else ("flash",)
    return ("efficient",)


# ---------------------------------------------------------------------------------------------
# math reference (fp32 softmax, plain torch, differentiable by autograd)


def _scores(q_BHSD: Tensor, k_BGSD: Tensor, causal: bool, scale: float) -> Tensor:
    H, acc = q_BHSD.shape[1], lse_dtype(q_BHSD.dtype)
    k_BHSD = _expand_kv(k_BGSD, H).to(acc)
    s_BHSS = torch.einsum("bhqd,bhkd->bhqk", q_BHSD.to(acc), k_BHSD) * scale
    if causal:
        Sq, Sk = s_BHSS.shape[-2:]
        visible = torch.ones(Sq, Sk, dtype=torch.bool, device=s_BHSS.device).tril()
        s_BHSS = s_BHSS.masked_fill(~visible, float("-inf"))
    return s_BHSS


def attention_with_lse_math(
    q_BHSD: Tensor, k_BGSD: Tensor, v_BGSD: Tensor, causal: bool, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Reference `attention_with_lse` in fp32 plain torch; autograd gives its gradients."""
    _check_shapes(q_BHSD, k_BGSD, v_BGSD, causal)
    scale = q_BHSD.shape[-1] ** -0.5 if scale is None else scale
    s_BHSS = _scores(q_BHSD, k_BGSD, causal, scale)
    lse_BHS = torch.logsumexp(s_BHSS, dim=-1)
    p_BHSS = torch.exp(s_BHSS - lse_BHS[..., None])
    v_BHSD = _expand_kv(v_BGSD, q_BHSD.shape[1]).to(lse_BHS.dtype)
    out_BHSD = torch.einsum("bhqk,bhkd->bhqd", p_BHSS, v_BHSD)
    return out_BHSD.to(q_BHSD.dtype), lse_BHS


def attention_block_backward_math(
    grad_out_BHSD: Tensor,
    q_BHSD: Tensor,
    k_BGSD: Tensor,
    v_BGSD: Tensor,
    out_BHSD: Tensor,
    lse_BHS: Tensor,
    causal: bool,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form block gradients (fp32 maths) given the rows' final output and LSE (reference)."""
    scale = q_BHSD.shape[-1] ** -0.5 if scale is None else scale
    H, G, acc = q_BHSD.shape[1], k_BGSD.shape[1], lse_dtype(q_BHSD.dtype)
    p_BHSS = torch.exp(_scores(q_BHSD, k_BGSD, causal, scale) - lse_BHS.to(acc)[..., None])
    do_BHSD = grad_out_BHSD.to(acc)
    k_BHSD = _expand_kv(k_BGSD, H).to(acc)
    v_BHSD = _expand_kv(v_BGSD, H).to(acc)
    dv_BHSD = torch.einsum("bhqk,bhqd->bhkd", p_BHSS, do_BHSD)
    dp_BHSS = torch.einsum("bhqd,bhkd->bhqk", do_BHSD, v_BHSD)
    delta_BHS = (do_BHSD * out_BHSD.to(acc)).sum(dim=-1)
    ds_BHSS = p_BHSS * (dp_BHSS - delta_BHS[..., None]) * scale
    dq_BHSD = torch.einsum("bhqk,bhkd->bhqd", ds_BHSS, k_BHSD)
    dk_BHSD = torch.einsum("bhqk,bhqd->bhkd", ds_BHSS, q_BHSD.to(acc))
    return (
        dq_BHSD.to(q_BHSD.dtype),
        _reduce_kv_grad(dk_BHSD, G).to(k_BGSD.dtype),
        _reduce_kv_grad(dv_BHSD, G).to(v_BGSD.dtype),
    )


# ---------------------------------------------------------------------------------------------
# CUDA kernels (run only under the `gpu` tests; every one takes equal q and kv head counts here)


def _cuda_forward(
    impl: str, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    H, S = q.shape[1], q.shape[2]
    k, v = _expand_kv(k, H), _expand_kv(v, H)
    if impl == "cudnn":
        out, lse = aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale
        )[:2]
        lse = lse.reshape(lse.shape[0], lse.shape[1], -1)  # cuDNN: [B, H, S, 1]
    elif impl == "flash":
        out, lse = aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale
        )[:2]
    else:
        out, lse = aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, causal, scale=scale
        )[:2]
        lse = lse[..., :S]  # padded to a multiple of 32 rows
    return out, lse.float()


def _cuda_backward(
    impl: str,
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    causal: bool,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    B, H, S = q.shape[:3]
    G, Sk = k.shape[1], k.shape[2]
    k, v = _expand_kv(k, H), _expand_kv(v, H)
    do, out, lse = do.contiguous(), out.contiguous(), lse.float().contiguous()
    seed = torch.zeros((), dtype=torch.int64, device=q.device)  # unused: dropout_p == 0
    offset = torch.zeros((), dtype=torch.int64, device=q.device)
    if impl == "cudnn":
        dq, dk, dv = aten._scaled_dot_product_cudnn_attention_backward(
            do,
            q,
            k,
            v,
            out,
            lse[..., None],
            seed,
            offset,
            None,  # attn_bias (an empty tensor would count as a bias)
            None,  # cum_seq_q / cum_seq_k: dense batch, not varlen
            None,
            S,
            Sk,
            0.0,
            causal,
            scale=scale,
        )
    elif impl == "flash":
        dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
            do,
            q,
            k,
            v,
            out,
            lse,
            None,  # cum_seq_q / cum_seq_k: dense batch (an empty tensor would mean varlen)
            None,
            S,
            Sk,
            0.0,
            causal,
            seed,
            offset,
            scale=scale,
        )
    else:
        padded = math.ceil(S / 32) * 32
        lse_padded = torch.zeros(B, H, padded, dtype=torch.float32, device=q.device)
        lse_padded[..., :S] = lse
        dq, dk, dv, _ = aten._scaled_dot_product_efficient_attention_backward(
            do,
            q,
            k,
            v,
            None,
            out,
            lse_padded,
            seed,
            offset,
            0.0,
            [True, True, True, False],
            causal,
            scale=scale,
        )
    return dq, _reduce_kv_grad(dk, G), _reduce_kv_grad(dv, G)


def _run_cuda(run, impl: str, q_BHSD: Tensor):
    """`run(impl)`, or, unless LHDIST_BLOCK_IMPL forces `impl`, the first CUDA kernel that works
    for this dtype and head dim; None when none does (the caller then uses the math path)."""
    if os.environ.get("LHDIST_BLOCK_IMPL") == impl:
        return run(impl)
    key_tail = (q_BHSD.dtype, q_BHSD.shape[-1])
    for impl in _cuda_candidates(*key_tail):
        if (impl, *key_tail) in _failed_cuda_impls:
            continue
        try:
            return run(impl)
        except RuntimeError as err:  # unsupported shape/arch/build: remember and try the next
            _failed_cuda_impls.add((impl, *key_tail))
            warnings.warn(
                f"attention block kernel {impl!r} failed, falling back: {err}", stacklevel=3
            )
    return None


# ---------------------------------------------------------------------------------------------
# public API


def attention_with_lse(
    q_BHSD: Tensor, k_BGSD: Tensor, v_BGSD: Tensor, causal: bool, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention of queries [B, H, Sq, D] over one key block [B, G, Sk, D].

    Returns (out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] = logsumexp_j(scale * q.k_j) in fp32,
    fp64 for fp64 inputs).
    causal: query i sees keys j <= i, which needs Sq == Sk (ring blocks are square).
    No autograd: the gradients come from `attention_block_backward`.
    """
    _check_shapes(q_BHSD, k_BGSD, v_BGSD, causal)
    scale = q_BHSD.shape[-1] ** -0.5 if scale is None else scale
    impl = select_block_impl(q_BHSD)
    with torch.no_grad():
        if impl == "cpu_flash":
            out, lse = aten._scaled_dot_product_flash_attention_for_cpu(
                q_BHSD, k_BGSD, v_BGSD, 0.0, causal, scale=scale
            )
            return out, lse.to(lse_dtype(q_BHSD.dtype))
        if impl in CUDA_IMPLS:
            result = _run_cuda(
                lambda i: _cuda_forward(i, q_BHSD, k_BGSD, v_BGSD, causal, scale), impl, q_BHSD
            )
            if result is not None:
                return result
        return attention_with_lse_math(q_BHSD, k_BGSD, v_BGSD, causal, scale)


def attention_block_backward(
    grad_out_BHSD: Tensor,
    q_BHSD: Tensor,
    k_BGSD: Tensor,
    v_BGSD: Tensor,
    out_BHSD: Tensor,
    lse_BHS: Tensor,
    causal: bool,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq [B, H, Sq, D], dk [B, G, Sk, D], dv [B, G, Sk, D]) of one block.

    out and lse are the rows' *final* values (after merging every block), so summing the returned
    gradients over all blocks gives the exact gradient of the full attention. dk/dv are already
    summed over the H/G query heads sharing each kv head.
    """
    _check_shapes(q_BHSD, k_BGSD, v_BGSD, causal)
    scale = q_BHSD.shape[-1] ** -0.5 if scale is None else scale
    impl = select_block_impl(q_BHSD)
    args = (grad_out_BHSD, q_BHSD, k_BGSD, v_BGSD, out_BHSD, lse_BHS)
    with torch.no_grad():
        if impl == "cpu_flash":
            return aten._scaled_dot_product_flash_attention_for_cpu_backward(
                *args[:5], lse_BHS.to(lse_dtype(q_BHSD.dtype)), 0.0, causal, scale=scale
            )
        if impl in CUDA_IMPLS:
            result = _run_cuda(lambda i: _cuda_backward(i, *args, causal, scale), impl, q_BHSD)
            if result is not None:
                return result
        return attention_block_backward_math(*args, causal, scale)
