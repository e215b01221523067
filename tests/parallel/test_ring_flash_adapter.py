"""ring_flash_adapter on CPU: ring-flash-attn (installed, or a stand-in) over stand-in flash-attn
kernels in bf16, injected into sys.modules of the spawned ranks only."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
import torch.distributed as dist

from lhdist.ops.attention_block import attention_block_backward, attention_with_lse
from lhdist.parallel import ring_flash_adapter
from lhdist.parallel.collectives import CommStats
from lhdist.parallel.ring_attention import ring_attention
from lhdist.parallel.sharding import shard_sequence
from tests.multiprocess import run_ranks

HAVE_RING_FLASH_ATTN = importlib.util.find_spec("ring_flash_attn") is not None


# Stand-ins for flash_attn.flash_attn_interface (flash-attn >= 2.6 signatures, which
# ring-flash-attn 0.1.8 fills by parameter name). Layout [B, S, heads, D]; lse [B, H, S] fp32.
def _flash_attn_forward(
    q,
    k,
    v,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left=-1,
    window_size_right=-1,
    softcap=0.0,
    alibi_slopes=None,
    return_softmax=False,
):
    assert dropout_p == 0 and softcap == 0 and alibi_slopes is None
    assert (window_size_left, window_size_right) == (-1, -1)
    out, lse = attention_with_lse(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, softmax_scale
    )
    return out.transpose(1, 2), lse, None, None


def _flash_attn_backward(
    dout,
    q,
    k,
    v,
    out,
    softmax_lse,
    dq,
    dk,
    dv,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left=-1,
    window_size_right=-1,
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    rng_state=None,
):
    grads = attention_block_backward(
        dout.transpose(1, 2),
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        out.transpose(1, 2),
        softmax_lse,
        causal,
        softmax_scale,
    )
    for buffer, grad in zip((dq, dk, dv), grads, strict=True):
        buffer.copy_(grad.transpose(1, 2))
    return None


def _install_stand_ins(calls: list, real_ring_flash_attn: bool) -> None:
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface._flash_attn_forward = _flash_attn_forward
    interface._flash_attn_backward = _flash_attn_backward
    sys.modules["flash_attn.flash_attn_interface"] = interface
    if not real_ring_flash_attn:
        # Stand-in for ring-flash-attn's two functions: same call shape, our ring inside.
        def make(name, layout):
            def func(
                q,
                k,
                v,
                dropout_p=0.0,
                softmax_scale=None,
                causal=False,
                window_size=(-1, -1),
                alibi_slopes=None,
                deterministic=False,
                return_attn_probs=False,
                group=None,
            ):
                return ring_attention(q, k, v, group, layout, causal, softmax_scale, impl="lhdist")

            func.__name__ = name
            return func

        for sub, name, layout in (
            ("ring_flash_attn", "ring_flash_attn_func", "contiguous"),
            ("zigzag_ring_flash_attn", "zigzag_ring_flash_attn_func", "zigzag"),
        ):
            module = types.ModuleType(f"ring_flash_attn.{sub}")
            setattr(module, name, make(name, layout))
            sys.modules[module.__name__] = module
    ring_flash_adapter._ring_flash_funcs.cache_clear()
    funcs = ring_flash_adapter._ring_flash_funcs()
    assert funcs is not None, "the adapter did not load the stand-ins"
    from_package = funcs[1].__module__ == "ring_flash_attn.zigzag_ring_flash_attn"
    assert from_package == real_ring_flash_attn, funcs

    def recording(func):
        def wrapper(*args, **kwargs):
            calls.append((func.__name__, kwargs))
            return func(*args, **kwargs)

        return wrapper

    ring_flash_adapter._ring_flash_funcs = lambda: tuple(recording(f) for f in funcs)


def _adapter_worker(rank: int, world: int, real_ring_flash_attn: bool) -> None:
    assert not ring_flash_adapter.available()  # no flash-attn on this machine
    calls: list = []
    _install_stand_ins(calls, real_ring_flash_attn)
    assert "flash_attn" not in sys.modules and "ring_flash_attn" not in sys.modules, (
        "package __init__s must not run (nor be left as shells)"
    )
    assert ring_flash_adapter.available()
    q0 = torch.zeros(1, 64, 4, 16, dtype=torch.bfloat16)
    assert not ring_flash_adapter.applies(q0, q0, "zigzag", True)  # CPU: never auto-selected

    B, S, H, G, D = 2, 64, 4, 2, 16
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(B, S * world, h, D, generator=g).to(torch.bfloat16) for h in (H, G, G, H)]
    for layout, causal in (("zigzag", True), ("contiguous", True), ("zigzag", False)):
        q, k, v, grad_out = (shard_sequence(t, rank, world, layout) for t in full)
        results = {}
        for impl in ("ring_flash_attn", "lhdist"):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            with CommStats() as stats:
                out = ring_attention(
                    *leaves, group=dist.group.WORLD, layout=layout, causal=causal, impl=impl
                )
                out.backward(grad_out)
            results[impl] = (out.detach(), *(t.grad for t in leaves))
            assert stats.bytes_sent("ring", "forward") >= (world - 1) * 2 * k.numel() * 2
        expected = (
            "zigzag_ring_flash_attn_func"
            if layout == "zigzag" and causal
            else "ring_flash_attn_func"
        )
        name, kwargs = calls[-1]
        assert name == expected, (layout, causal, name)
        assert kwargs["causal"] is causal and kwargs["group"] is dist.group.WORLD
        assert abs(kwargs["softmax_scale"] - D**-0.5) < 1e-12

        # both agree with fp32 SDPA on the full sequence, to bf16 accuracy
        ref_leaves = [t.float().requires_grad_() for t in full[:3]]
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in ref_leaves), is_causal=causal, enable_gqa=True
        ).transpose(1, 2)
        ref.backward(full[3].float())
        refs = [ref.detach(), *(t.grad for t in ref_leaves)]
        for impl, got in results.items():
            for what, a, b in zip(("out", "dq", "dk", "dv"), got, refs, strict=True):
                b = shard_sequence(b, rank, world, layout)
                assert a.dtype == torch.bfloat16
                err = (a.float() - b).abs().max().item()
                assert err <= 2e-2 * b.abs().max().item(), (impl, layout, causal, what, err)


@pytest.mark.parametrize(
    "real_ring_flash_attn",
    [
        pytest.param(
            True,
            id="ring-flash-attn-0.1.8",
            marks=pytest.mark.skipif(
                not HAVE_RING_FLASH_ATTN, reason="ring-flash-attn not installed"
            ),
        ),
        pytest.param(False, id="ring-flash-attn-stand-in"),
    ],
)
def test_ring_flash_adapter_bf16_with_stand_in_kernels(tmp_path, real_ring_flash_attn):
    run_ranks(_adapter_worker, 2, tmp_path, real_ring_flash_attn, timeout_s=90)
