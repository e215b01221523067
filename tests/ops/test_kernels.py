"""The row kernels: multi-level window_reduce equals its levels one by one; the Triton kernels,
run by Triton's CPU interpreter, equal the torch path (CI-safe)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lhdist.ops.kernels import rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shift, scale", [(0, 0.25), (3, 1.0)])
def test_window_reduce_levels_equal_chained_single_levels(dtype, shift, scale):
    B, N, H, D, p = 3, 512, 2, 8, 4
    x = torch.randn(B, N, H, D, generator=torch.Generator().manual_seed(5)).to(dtype)
    out, norms = rows.window_reduce(x, N // p, p, shift, scale, True, 3)
    levels, prev = [], x
    for n in (N // p, N // p**2, N // p**3):
        prev, _ = rows.window_reduce(prev, n, p, shift, scale, False)
        levels.append(prev)
    assert out.shape == (B, N // p + N // p**2 + N // p**3, H, D)
    assert torch.equal(out, torch.cat(levels, dim=1))
    assert torch.equal(norms, torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32))


def test_triton_kernels_match_torch_path_in_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.ops.kernel_parity"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 21, result.stdout
