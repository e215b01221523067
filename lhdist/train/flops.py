"""Training FLOPs per token (dense-equivalent and as executed) and per-device peak FLOP/s."""

from __future__ import annotations

import time

import torch

from lhdist.config import Config


def matmul_params(cfg: Config) -> int:
    """Weights that take part in a matmul per token: every block linear plus the output head."""
    m = cfg.model
    head_dim = m.dim // m.num_heads
    attn = m.dim * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    ffn = 3 * m.dim * m.ffn_dim
    return m.num_layers * (attn + ffn) + m.dim * m.vocab_size


def attention_flops_per_token(cfg: Config, attended: int) -> float:
    """fwd+bwd FLOPs per token of one causal attention layer over `attended` entries.

    Causal attention over S entries costs 2*S^2*H*D in the forward (QK^T and PV, half masked),
    3x with the backward; spread over the N tokens of the sequence.
    """
    m, n = cfg.model, cfg.train.seq_len
    return 6.0 * m.num_heads * (m.dim // m.num_heads) * attended * attended / n


def flops_per_token(cfg: Config, stage: int, selected_len: int | None) -> tuple[float, float]:
    """(dense-equivalent, executed) training FLOPs per token at `stage`.

    Executed counts Lighthouse layers of stage 1 as attention over S = `selected_len` entries
    (pyramid, selection and scatter are not counted).
    """
    n = cfg.train.seq_len
    base = 6.0 * matmul_params(cfg)
    dense_layer = attention_flops_per_token(cfg, n)
    dense = base + cfg.model.num_layers * dense_layer
    sparse_layers = len(cfg.sparse_layers()) if stage == 1 and selected_len else 0
    saved_per_layer = dense_layer - attention_flops_per_token(cfg, selected_len or n)
    executed = dense - sparse_layers * saved_per_layer
    return dense, executed


# bf16 dense tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "GB200": 2500e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
}


def peak_flops_per_device(cfg: Config, device: torch.device) -> float | None:
    """Peak FLOP/s of a device: configured, a known GPU, or a CPU matmul probe; None if unknown.

    On CPU the "peak" is what a large fp32 GEMM reaches with this process's threads: MFU there
    says how close the model's step comes to the best matmul this machine does.
    """
    if cfg.train.peak_tflops > 0:
        return cfg.train.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)
    return probe_cpu_matmul_flops()


def probe_cpu_matmul_flops(size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of an fp32 GEMM with this process's threads: the CPU 'peak' that MFU refers to."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2.0 * size**3 * runs / (time.perf_counter() - start)
