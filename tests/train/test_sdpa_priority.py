"""train.sdpa_priority: cuDNN first on CUDA for the run, torch's order restored after it."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

from lhdist.config import load_config
from lhdist.train.sdpa_priority import can_set_priority, sdpa_priority


def order() -> list[int]:
    return list(torch._C._get_sdp_priority_order())


@pytest.mark.skipif(not can_set_priority(), reason="torch < 2.6 has no SDPA priority")
def test_cudnn_first_inside_the_run_and_restored_after():
    before = order()
    cfg = load_config()
    assert cfg.train.sdpa_priority == "cudnn"
    with sdpa_priority(cfg, torch.device("cuda")):  # only sets flags: runs without a GPU
        inside = order()
        assert inside[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert sorted(inside) == sorted(before)  # a reordering: no backend added or lost
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert order() == before


def test_cpu_runs_and_default_priority_change_nothing():
    before = order()
    with sdpa_priority(load_config(), torch.device("cpu")):
        assert order() == before
    default = load_config(overrides=["--train.sdpa_priority=default"])
    with sdpa_priority(default, torch.device("cuda")):
        assert order() == before
    with pytest.raises(ValueError, match="train.sdpa_priority='fast' must be one of"):
        load_config(overrides=["--train.sdpa_priority=fast"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(16, 8, 64), (8, 8, 128)])
def test_gpu_dense_attention_under_cudnn_priority_matches_fp32(heads, kv_heads, head_dim):
    """The dense layers' SDPA call (GQA, causal, bf16) under the run's priority picks cuDNN
    where it can and agrees with an fp32 reference, forward and backward."""
    from torch.profiler import ProfilerActivity, profile

    from lhdist.model import causal_attention

    gen = torch.Generator().manual_seed(0)
    n = 8192
    q = torch.randn(1, n, heads, head_dim, generator=gen)
    k, v = (torch.randn(1, n, kv_heads, head_dim, generator=gen) for _ in range(2))
    grad = torch.randn(1, n, heads, head_dim, generator=gen)

    def run(dtype, device):
        xs = [t.to(device, dtype, copy=True).requires_grad_() for t in (q, k, v)]  # new leaves
        out = causal_attention(*xs)
        out.backward(grad.to(device, dtype))
        return [t.float().cpu() for t in (out, *(x.grad for x in xs))]

    reference = run(torch.float32, "cpu")
    cfg = load_config()
    with (
        sdpa_priority(cfg, torch.device("cuda")),
        profile(activities=[ProfilerActivity.CUDA]) as prof,
    ):
        fast = run(torch.bfloat16, "cuda")
        torch.cuda.synchronize()
    kernels = " ".join(e.key for e in prof.key_averages()).lower()
    assert "cudnn" in kernels or "sdpa" in kernels, kernels[:500]
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, reference, strict=True):
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err < 3e-2, f"{name}: bf16 error {err:.3g} of max magnitude"
