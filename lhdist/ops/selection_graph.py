"""Selection replayed from a CUDA graph.

The cascade is about a hundred small kernels (top-k, sorts, gathers per level). At N = 512K on
an H200 their GPU time is well under a millisecond, but launching them from Python takes several
milliseconds of CPU, during which the GPU waits. Shapes are the same in every layer and step, so
the cascade is captured once per (shape, spec, device) and replayed: one launch.

Global selection under context parallelism exchanges scores between levels. Those collectives
stay out of the graphs: the function hands each tensor to exchange to `between` (an in-place
op), the capture is cut there into segments, and a replay runs segment, op, segment, ... on
the current stream. NCCL never runs inside a graph (no graph/eager mixing on a communicator,
no capture-mode constraints), and every rank decides about its own graphs alone, since the
collectives are the same calls either way.

Every capture is verified once: its first replay must give exactly the eager warm-up's outputs.
A capture that does not is dropped with a warning and that key runs eager from then on, so a
graph can cost speed, never correctness. `LHDIST_SELECTION_GRAPH=off` turns graphs off (the
eager path gives identical indices).
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
# An in-place op on one tensor that a graph must not hold (a collective); returns the tensor.
Between = Callable[[Tensor], Tensor]


# What a captured function returns: a tensor or a tuple of tensors.
Outputs = Tensor | tuple[Tensor, ...]


@dataclass
class _Captured:
    segments: list[torch.cuda.CUDAGraph]  # replayed in order, `between` after all but the last
    boundaries: list[Tensor]  # the tensor `between` works on after each segment but the last
    inputs: tuple[Tensor, ...]  # static inputs: each call copies its tensors in before replay
    output: Outputs  # static output(s), overwritten by every replay

    def replay(self, between: Between | None) -> None:
        for segment, boundary in zip(self.segments, [*self.boundaries, None]):
            segment.replay()
            if boundary is not None:
                between(boundary)


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


# Only this thread's CUDA calls are checked during capture: others (NCCL's watchdog, data
# loader threads) may query events meanwhile without invalidating it.
_MODE = "thread_local"

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
    fn: Callable[..., Outputs], inputs: tuple[Tensor, ...], between: Between | None
) -> tuple[_Captured, Outputs]:
    """The captured segments and the eager warm-up's output."""
    static = tuple(x.clone() for x in inputs)
    device = inputs[0].device
    call = (lambda op: fn(*static, op)) if between is not None else (lambda op: fn(*static))
    current = torch.cuda.current_stream(device)
    # Warm up on a side stream (lazy initialisations must not happen during capture).
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        eager = call(between)
    current.wait_stream(side)
    for x in _each(eager):
        x.record_stream(current)  # read on this stream later

    pool = torch.cuda.graph_pool_handle()  # the segments share memory, in replay order
    segments: list[torch.cuda.CUDAGraph] = []
    boundaries: list[Tensor] = []

    def cut(x: Tensor) -> Tensor:  # end this segment at x; `between` runs there on replay
        segments[-1].capture_end()
        boundaries.append(x)
        segments.append(torch.cuda.CUDAGraph())
        segments[-1].capture_begin(pool=pool, capture_error_mode=_MODE)
        return x

    capture = torch.cuda.Stream(device=device)
    capture.wait_stream(current)
    with torch.cuda.stream(capture):
        segments.append(torch.cuda.CUDAGraph())
        segments[-1].capture_begin(pool=pool, capture_error_mode=_MODE)
        try:
            output = call(cut)
        finally:
            segments[-1].capture_end()
    current.wait_stream(capture)
    return _Captured(segments, boundaries, static, output), eager


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
    between: Between | None = None,
    verify_between: Between | None = None,
) -> Outputs:
    """`fn(*inputs)` (a function of the inputs' values only, returning a tensor or a tuple of
    tensors of the same shapes for the same `key`), run from CUDA graphs captured on first use
    of `key`: warm-up, capture, verified replay.

    With `between`, fn is called as fn(*inputs, between) and hands the tensors that need a
    non-capturable in-place op (a collective) to it; that op runs eagerly between the graph
    segments. The first replay, which only verifies the capture, runs `verify_between` instead
    if given (the same op, say, without counting its traffic twice)."""
    if graph_dropped(key, inputs):
        return fn(*inputs, between) if between is not None else fn(*inputs)
    key = _full_key(key, inputs)
    captured = _captured.get(key)
    eager = None
    if captured is None:
        captured, eager = _capture(fn, inputs, between)
    for static, x in zip(captured.inputs, inputs):
        static.copy_(x)
    captured.replay((verify_between or between) if eager is not None else between)
    output = _clone(captured.output)
    if eager is not None:  # first replay: the capture must reproduce the eager warm-up
        if not _same(output, eager):
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
