"""train.compile's preflight: a one-line ValueError, before training starts, where torch.compile
cannot work (no Dynamo for this Python, no Triton for CUDA, no C++ compiler for CPU inductor)."""

from __future__ import annotations

import torch

from lhdist.config import Config
from lhdist.parallel.block_wrappers import COMPILE_BACKEND_ENV, compile_backend


def compile_problem(device_type: str, backend: str) -> str | None:
    """Why torch.compile with `backend` cannot run on `device_type` here, or None."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (Dynamo) does not support this Python/platform"
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        return f"{COMPILE_BACKEND_ENV}={backend!r} is not a torch.compile backend"
    if backend != "inductor":
        return None
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor on CUDA needs Triton, which is not installed"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:  # another torch layout: leave it to the first compile
        return None
    except Exception as err:  # inductor raises its own InvalidCxxCompiler (not a ValueError)
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"inductor on CPU needs a C++ compiler ({first_line})"
    return None


def check_compile_available(cfg: Config, device_type: str) -> None:
    """ValueError naming the reason when train.compile is on but cannot work on `device_type`."""
    if not cfg.train.compile:
        return
    problem = compile_problem(device_type, compile_backend())
    if problem is not None:
        raise ValueError(
            f"train.compile=true but torch.compile cannot work here (torch {torch.__version__}): "
            f"{problem}; fix that or set train.compile=false"
        )
