"""What wraps each transformer block from outside: activation checkpointing and torch.compile.

Order (see `wrap_blocks`): the selective `ffn` checkpoint sits inside the compiled block (the
compiler traces through it), the `full` checkpoint outside it (its recompute replays the
compiled block). The stage is read at forward time in every case, so a block recomputes with
the attention it ran.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from lhdist.model.llama import Block, Transformer

# torch.compile's backend; LHDIST_COMPILE_BACKEND=aot_eager (or eager) runs the same tracing
# without code generation: the CPU tests use it, since inductor on CPU needs minutes to build.
COMPILE_BACKEND_ENV = "LHDIST_COMPILE_BACKEND"


def compile_backend() -> str:
    return os.environ.get(COMPILE_BACKEND_ENV, "inductor")


def checkpointed(fn: Callable) -> Callable:
    """`fn` recomputed in the backward (non-reentrant: works under torch.compile and keeps the
    autograd graph of the inputs)."""

    def run(*args):
        return checkpoint(fn, *args, use_reentrant=False)

    return run


def checkpoint_feed_forwards(model: Transformer, plan: list[str]) -> None:
    """Blocks whose plan says `ffn` recompute their ffn_norm + SwiGLU branch in the backward."""
    for block, mode in zip(model.layers, plan, strict=True):
        if mode == "ffn":
            block.feed_forward_branch = checkpointed(block.feed_forward_branch)


def checkpoint_blocks(model: Transformer, plan: list[str]) -> None:
    """Blocks whose plan says `full` recompute their whole forward (attention collectives
    included, in the same order on every rank) in the backward."""
    for block, mode in zip(model.layers, plan, strict=True):
        if mode == "full":
            block.forward = checkpointed(block.forward)


def _block_with(block: Block, x, cos, sin, attend):
    # The attention function is chosen outside (per layer and stage) and handed in, so the
    # graph reads no layer index: all blocks share one graph per attention function instead of
    # recompiling for each layer index. (No profiler range in here: Dynamo drops them.)
    return Block.forward(block, x, cos, sin, lambda q, k, v, layer_idx: attend(q, k, v))


def compile_blocks(model: Transformer, fullgraph: bool = True) -> None:
    """torch.compile every block through one compiled function (static shapes). The model's
    attention must offer `for_layer(layer_idx)` (the router does); any other attention, and any
    forward without gradients (evals, whose few calls would not repay their own graphs), runs
    the block eagerly. `fullgraph=False` lets attention that is excluded from compilation (CP
    collectives, `torch.compiler.disable`) run eagerly between the compiled parts."""
    compiled = torch.compile(
        _block_with, backend=compile_backend(), fullgraph=fullgraph, dynamic=False
    )
    for block in model.layers:

        def forward(x, cos, sin, attn, _block=block):
            pick = getattr(attn, "for_layer", None)
            if pick is None or not torch.is_grad_enabled():  # evals run eagerly: no graphs
                return Block.forward(_block, x, cos, sin, attn)
            return compiled(_block, x, cos, sin, pick(_block.attention.layer_idx))

        block.forward = forward
    model.blocks_compiled = True  # hooks that would run inside a block must go elsewhere


def wrap_blocks(model: Transformer, plan: list[str], compile: bool, fullgraph: bool) -> None:
    """Selective checkpoints, then compile, then full checkpoints (see the module docstring)."""
    checkpoint_feed_forwards(model, plan)
    if compile:
        compile_blocks(model, fullgraph)
    checkpoint_blocks(model, plan)
