"""attention_with_lse / attention_block_backward: kernels vs the fp32 math reference."""

from __future__ import annotations

import pytest
import torch

from lhdist.ops.attention_block import (
    CUDA_IMPLS,
    attention_block_backward,
    attention_block_backward_math,
    attention_with_lse,
    attention_with_lse_math,
    select_block_impl,
)

CASES = [  # (B, H, G, Sq, Sk, D, causal)
    pytest.param(2, 4, 4, 64, 64, 16, True, id="mha-causal"),
    pytest.param(2, 4, 4, 48, 80, 16, False, id="mha-full-rect"),
    pytest.param(1, 8, 2, 64, 64, 32, True, id="gqa4-causal"),
    pytest.param(1, 6, 3, 32, 96, 8, False, id="gqa2-full-rect"),
    pytest.param(2, 4, 1, 33, 33, 16, True, id="mqa-causal-odd"),
]


def _qkv(B, H, G, Sq, Sk, D, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g)
    k = torch.randn(B, G, Sk, D, generator=g)
    v = torch.randn(B, G, Sk, D, generator=g)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


def _sdpa_with_grads(q, k, v, causal, grad_out, scale=None):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=True
        )
    else:
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=scale, enable_gqa=True
        )
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("B,H,G,Sq,Sk,D,causal", CASES)
def test_attention_with_lse_matches_math_and_sdpa(B, H, G, Sq, Sk, D, causal):
    if causal and Sq != Sk:
        pytest.skip("causal blocks are square")
    q, k, v = _qkv(B, H, G, Sq, Sk, D)
    out, lse = attention_with_lse(q, k, v, causal)
    out_ref, lse_ref = attention_with_lse_math(q, k, v, causal)
    assert out.shape == (B, H, Sq, D) and lse.shape == (B, H, Sq) and lse.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    sdpa_out = _sdpa_with_grads(q, k, v, causal, torch.zeros_like(out))[0]
    torch.testing.assert_close(out, sdpa_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B,H,G,Sq,Sk,D,causal", CASES)
def test_attention_block_backward_matches_autograd(B, H, G, Sq, Sk, D, causal):
    q, k, v = _qkv(B, H, G, Sq, Sk, D, seed=1)
    grad_out = torch.randn(B, H, Sq, D, generator=torch.Generator().manual_seed(2))
    scale = 0.3
    out, lse = attention_with_lse(q, k, v, causal, scale)
    dq, dk, dv = attention_block_backward(grad_out, q, k, v, out, lse, causal, scale)
    _, dq_ref, dk_ref, dv_ref = _sdpa_with_grads(q, k, v, causal, grad_out, scale)
    for got, ref in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref)):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    # the math backward is the same closed form
    for got, ref in zip(
        attention_block_backward_math(grad_out, q, k, v, out, lse, causal, scale),
        (dq, dk, dv),
        strict=True,
    ):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_attention_block_backward_uses_final_lse_of_merged_blocks():
    """Two key blocks merged through their LSEs: each block's backward, given the merged out
    and lse, sums to the gradient of attention over both blocks (what the ring relies on)."""
    q, k, v = _qkv(1, 4, 2, 32, 64, 16, seed=3)
    grad_out = torch.randn(1, 4, 32, 16, generator=torch.Generator().manual_seed(4))
    halves = [(k[:, :, :32], v[:, :, :32]), (k[:, :, 32:], v[:, :, 32:])]
    parts = [attention_with_lse(q, kh, vh, False) for kh, vh in halves]
    lse = torch.logaddexp(parts[0][1], parts[1][1])
    out = sum(o * torch.exp(lse_b - lse)[..., None] for o, lse_b in parts)
    out_ref, dq_ref, dk_ref, dv_ref = _sdpa_with_grads(q, k, v, False, grad_out)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    grads = [attention_block_backward(grad_out, q, kh, vh, out, lse, False) for kh, vh in halves]
    torch.testing.assert_close(grads[0][0] + grads[1][0], dq_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        torch.cat([grads[0][1], grads[1][1]], 2), dk_ref, atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        torch.cat([grads[0][2], grads[1][2]], 2), dv_ref, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float64], ids=["bf16", "fp16", "fp64"]
)
def test_attention_with_lse_low_and_high_precision(dtype):
    q, k, v = _qkv(1, 4, 2, 64, 64, 16, dtype=dtype, seed=5)
    out, lse = attention_with_lse(q, k, v, True)
    out_ref, lse_ref = attention_with_lse_math(q.double(), k.double(), v.double(), True)
    assert out.dtype == dtype
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-10 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(out.double(), out_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), lse_ref, atol=tol, rtol=tol)


def test_attention_with_lse_rejects_bad_shapes():
    q, k, v = _qkv(1, 4, 3, 16, 16, 8)
    with pytest.raises(ValueError, match="H=4 must be a multiple of kv heads G=3"):
        attention_with_lse(q, k, v, False)
    q, k, v = _qkv(1, 4, 2, 16, 32, 8)
    with pytest.raises(ValueError, match="causal block must be square"):
        attention_with_lse(q, k, v, True)


def test_select_block_impl_cpu_and_override(monkeypatch):
    q = torch.zeros(1, 1, 4, 8)
    assert select_block_impl(q) == "cpu_flash"
    monkeypatch.setenv("LHDIST_BLOCK_IMPL", "math")
    assert select_block_impl(q) == "math"
    q, k, v = _qkv(1, 4, 2, 16, 16, 8)
    torch.testing.assert_close(
        attention_with_lse(q, k, v, True)[0], attention_with_lse_math(q, k, v, True)[0]
    )
    monkeypatch.setenv("LHDIST_BLOCK_IMPL", "nope")
    with pytest.raises(ValueError, match="LHDIST_BLOCK_IMPL"):
        select_block_impl(q)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", CUDA_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_attention_block_cuda_kernels_match_math(impl, dtype, causal, monkeypatch):
    if dtype == torch.float32 and impl != "efficient":
        pytest.skip("cuDNN and flash take half precision only")
    if dtype != torch.float32 and impl == "efficient":
        pytest.skip("memory-efficient is the fp32 kernel only (see _cuda_candidates)")
    monkeypatch.setenv("LHDIST_BLOCK_IMPL", impl)
    q, k, v = _qkv(2, 8, 2, 256, 256, 64, dtype=dtype, device="cuda", seed=6)
    grad_out = torch.randn_like(q)
    out, lse = attention_with_lse(q, k, v, causal)
    out_ref, lse_ref = attention_with_lse_math(q, k, v, causal)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out.float(), out_ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, lse_ref, atol=tol, rtol=tol)
    grads = attention_block_backward(grad_out, q, k, v, out, lse, causal)
    refs = attention_block_backward_math(grad_out, q, k, v, out, lse, causal)
    for got, ref in zip(grads, refs, strict=True):
        torch.testing.assert_close(got.float(), ref.float(), atol=5 * tol, rtol=5 * tol)
