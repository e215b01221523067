"""Selection replayed from a CUDA graph.

The cascade is about a hundred small kernels (top-k, sorts, gathers per level). At N = 512K on
an H200 their GPU time is well under a millisecond, but launching them from Python takes several
milliseconds of CPU, during which the GPU waits. Shapes are the same in every layer and step, so
the cascade is captured once per (shape, spec, device) and replayed: one launch. Global
selection under context parallelism captures its score exchanges (NCCL) along with it.

Every capture is verified once: its first replay must give exactly the eager warm-up's indices
(on every rank, when collectives are captured). A capture that does not is dropped with a
warning and that key runs eager from then on, so a graph can cost speed, never correctness.
`LHDIST_SELECTION_GRAPH=off` turns graphs off (the eager path gives identical indices).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lhdist.ops.spec import LighthouseSpec

Select = Callable[[Tensor, Tensor, LighthouseSpec], Tensor]
# Reduces "this rank's replay matched" over the ranks whose collectives the graph holds.
AllAgree = Callable[[bool], bool]


# What a captured function returns: a tensor or a tuple of tensors.
Outputs = Tensor | tuple[Tensor, ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]  # static inputs: each call copies its tensors in before replay
    output: Outputs  # static output(s), overwritten by every replay


def _each(outputs: Outputs) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _same(a: Outputs, b: Outputs) -> bool:
    pairs = list(zip(_each(a), _each(b)))
    return len(pairs) == len(_each(a)) == len(_each(b)) and all(
        x.shape == y.shape and x.dtype == y.dtype and bool(torch.equal(x, y)) for x, y in pairs
    )


def _clone(outputs: Outputs) -> Outputs:
    cloned = tuple(x.clone() for x in _each(outputs))
    return cloned if isinstance(outputs, tuple) else cloned[0]


# A key maps to its graph, or to None once its capture failed verification (runs eager).
_captured: dict[tuple, _Captured | None] = {}


def graph_applies(x: Tensor) -> bool:
    """CUDA tensors, eager mode (torch.compile fuses the cascade itself), not already capturing."""
    return (
        x.is_cuda
        and os.environ.get("LHDIST_SELECTION_GRAPH", "on") != "off"
        and not torch.compiler.is_compiling()
        and not torch.cuda.is_current_stream_capturing()
    )


def _capture(
    fn: Callable[..., Outputs], inputs: tuple[Tensor, ...], collectives: bool
) -> tuple[_Captured, Outputs]:
    """The captured graph and the eager warm-up's output."""
    static = tuple(x.clone() for x in inputs)
    device = inputs[0].device
    # Warm up on a side stream (lazy initialisations must not happen during capture).
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        eager = fn(*static)
    torch.cuda.current_stream(device).wait_stream(side)
    for x in _each(eager):
        x.record_stream(torch.cuda.current_stream(device))  # read on this stream later
    graph = torch.cuda.CUDAGraph()
    # NCCL's own threads make CUDA calls while a collective is captured: NCCL asks for
    # thread-local capture so that those calls do not invalidate it.
    mode = "thread_local" if collectives else "global"
    with torch.cuda.graph(graph, capture_error_mode=mode):
        output = fn(*static)
    return _Captured(graph, static, output), eager


def _full_key(key: tuple, inputs: tuple[Tensor, ...]) -> tuple:
    return (*key, *((tuple(x.shape), x.stride(), x.dtype, x.device) for x in inputs))


def graph_dropped(key: tuple, inputs: tuple[Tensor, ...]) -> bool:
    """Whether `key`'s capture (for inputs of these shapes) failed verification."""
    full = _full_key(key, inputs)
    return full in _captured and _captured[full] is None


def replay_graph(
    fn: Callable[..., Outputs],
    inputs: tuple[Tensor, ...],
    key: tuple,
    all_agree: AllAgree | None = None,
) -> Outputs:
    """`fn(*inputs)` (a function of the inputs' values only, returning a tensor or a tuple of
    tensors of the same shapes for the same `key`),
    run from a CUDA graph captured on first use of `key`: warm-up, capture, verified replay.

    fn may call collectives (every rank of the group must make the same calls); then pass
    `all_agree`, which every rank calls once per key to agree on keeping the graph."""
    if graph_dropped(key, inputs):
        return fn(*inputs)
    key = _full_key(key, inputs)
    captured = _captured.get(key)
    eager = None
    if captured is None:
        captured, eager = _capture(fn, inputs, collectives=all_agree is not None)
    for static, x in zip(captured.inputs, inputs):
        static.copy_(x)
    captured.graph.replay()
    output = _clone(captured.output)
    if eager is not None:  # first replay: the capture must reproduce the eager warm-up
        same = _same(output, eager)
        if all_agree is not None:
            same = all_agree(same)
        if not same:
            warnings.warn(
                f"lhdist: the CUDA graph of {key[0]!r} did not reproduce its eager run; "
                "running it eager from now on (slower, same results)",
                RuntimeWarning,
                stacklevel=2,
            )
            _captured[key] = None
            return eager
        _captured[key] = captured
    return output


def replay_selection(
    select: Select, score_q: Tensor, score_k: Tensor, spec: LighthouseSpec
) -> Tensor:
    """`select(score_q, score_k, spec)`, run from a graph captured on first use of this shape."""
    return replay_graph(lambda q, k: select(q, k, spec), (score_q, score_k), ("select", spec))
