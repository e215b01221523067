"""Selection replayed from a CUDA graph.

The cascade is about a hundred small kernels (top-k, sorts, gathers per level). At N = 512K on
an H200 their GPU time is well under a millisecond, but launching them from Python takes several
milliseconds of CPU, during which the GPU waits. Shapes are the same in every layer and step, so
the cascade is captured once per (shape, spec, device) and replayed: one launch.

`LHDIST_SELECTION_GRAPH=off` turns it off (the eager path gives identical indices).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lhdist.ops.spec import LighthouseSpec

Select = Callable[[Tensor, Tensor, LighthouseSpec], Tensor]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    score_q: Tensor  # static inputs: each call copies its scores in before the replay
    score_k: Tensor
    indices: Tensor  # static output, overwritten by every replay


_captured: dict[tuple, _Captured] = {}


def graph_applies(score_q: Tensor) -> bool:
    """CUDA tensors, eager mode (torch.compile fuses the cascade itself), not already capturing."""
    return (
        score_q.is_cuda
        and os.environ.get("LHDIST_SELECTION_GRAPH", "on") != "off"
        and not torch.compiler.is_compiling()
        and not torch.cuda.is_current_stream_capturing()
    )


def _capture(select: Select, score_q: Tensor, score_k: Tensor, spec: LighthouseSpec):
    static_q, static_k = score_q.clone(), score_k.clone()
    # Warm up on a side stream (lazy initialisations must not happen during capture).
    side = torch.cuda.Stream(device=score_q.device)
    side.wait_stream(torch.cuda.current_stream(score_q.device))
    with torch.cuda.stream(side):
        select(static_q, static_k, spec)
    torch.cuda.current_stream(score_q.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        indices = select(static_q, static_k, spec)
    return _Captured(graph, static_q, static_k, indices)


def replay_selection(
    select: Select, score_q: Tensor, score_k: Tensor, spec: LighthouseSpec
) -> Tensor:
    """`select(score_q, score_k, spec)`, run from a graph captured on first use of this shape."""
    key = (
        tuple(score_q.shape), score_q.stride(), tuple(score_k.shape), score_k.stride(),
        score_q.dtype, score_k.dtype, score_q.device, spec,
    )  # fmt: skip
    captured = _captured.get(key)
    if captured is None:
        captured = _captured[key] = _capture(select, score_q, score_k, spec)
    captured.score_q.copy_(score_q)
    captured.score_k.copy_(score_k)
    captured.graph.replay()
    return captured.indices.clone()
