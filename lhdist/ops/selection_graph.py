"""Selection replayed from a CUDA graph.

The cascade is about a hundred small kernels (top-k, sorts, gathers per level). At N = 512K on
an H200 their GPU time is well under a millisecond, but launching them from Python takes several
milliseconds of CPU, during which the GPU waits. Shapes are the same in every layer and step, so
the cascade is captured once per (shape, spec, device) and replayed: one launch. Global
selection under context parallelism captures its score exchanges (NCCL) along with it.

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
    inputs: tuple[Tensor, ...]  # static inputs: each call copies its tensors in before replay
    output: Tensor  # static output, overwritten by every replay


_captured: dict[tuple, _Captured] = {}


def graph_applies(x: Tensor) -> bool:
    """CUDA tensors, eager mode (torch.compile fuses the cascade itself), not already capturing."""
    return (
        x.is_cuda
        and os.environ.get("LHDIST_SELECTION_GRAPH", "on") != "off"
        and not torch.compiler.is_compiling()
        and not torch.cuda.is_current_stream_capturing()
    )


def _capture(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...]) -> _Captured:
    static = tuple(x.clone() for x in inputs)
    device = inputs[0].device
    # Warm up on a side stream (lazy initialisations must not happen during capture).
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn(*static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn(*static)
    return _Captured(graph, static, output)


def replay_graph(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], key: tuple) -> Tensor:
    """`fn(*inputs)` (a function of the inputs' values only, same shapes for the same `key`),
    run from a CUDA graph captured on first use of `key`: warm-up, capture, then replay.

    fn may call NCCL collectives (every rank of the group must make the same calls)."""
    key = (*key, *((tuple(x.shape), x.stride(), x.dtype, x.device) for x in inputs))
    captured = _captured.get(key)
    if captured is None:
        captured = _captured[key] = _capture(fn, inputs)
    for static, x in zip(captured.inputs, inputs):
        static.copy_(x)
    captured.graph.replay()
    return captured.output.clone()


def replay_selection(
    select: Select, score_q: Tensor, score_k: Tensor, spec: LighthouseSpec
) -> Tensor:
    """`select(score_q, score_k, spec)`, run from a graph captured on first use of this shape."""
    return replay_graph(lambda q, k: select(q, k, spec), (score_q, score_k), ("select", spec))
