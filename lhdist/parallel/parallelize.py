"""parallelize_model: inject the attention of each layer (Lighthouse or dense, one rank or CP)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.profiler import record_function

from lhdist.check import recompute_plan
from lhdist.config import Config, lighthouse_spec_of, recompute_mode
from lhdist.model import Transformer, causal_attention
from lhdist.ops import LighthouseSpec, lighthouse_attention
from lhdist.parallel.block_wrappers import checkpoint_blocks, checkpoint_feed_forwards, wrap_blocks

BlockAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

STAGE_SPARSE, STAGE_DENSE = 1, 2
ATTENTION_RANGE = "lhdist.attention"  # profiler range around every eager attention call


def lighthouse_spec(cfg: Config) -> LighthouseSpec:
    return lighthouse_spec_of(cfg)


class AttentionRouter:
    """The model's attention function: Lighthouse in the sparse layers during stage 1, dense
    attention in every other case. Flipping `stage` changes no parameter, so the optimizer, its
    state and the data position carry over untouched."""

    def __init__(
        self, sparse: BlockAttention, dense: BlockAttention, sparse_layers: list[int]
    ) -> None:
        self.sparse, self.dense = sparse, dense
        self.sparse_layers = frozenset(sparse_layers)
        self.stage = STAGE_SPARSE
        self.recompute: list[str] = []  # each block's activation-checkpointing mode

    @contextlib.contextmanager
    def evaluating(self, stage: int, sparse: BlockAttention | None = None):
        """Run as `stage` (and with `sparse` in place of the run's sparse attention, if given)
        inside the block; the training state is restored after it."""
        saved = self.stage, self.sparse
        self.set_stage(stage)
        self.sparse = sparse or self.sparse
        try:
            yield self
        finally:
            self.stage, self.sparse = saved

    def set_stage(self, stage: int) -> None:
        if stage not in (STAGE_SPARSE, STAGE_DENSE):
            raise ValueError(f"stage={stage} must be {STAGE_SPARSE} or {STAGE_DENSE}")
        self.stage = stage

    def is_sparse(self, layer_idx: int) -> bool:
        return self.stage == STAGE_SPARSE and layer_idx in self.sparse_layers

    def for_layer(self, layer_idx: int) -> BlockAttention:
        """The attention `layer_idx` runs now (what a compiled block is handed)."""
        return self.sparse if self.is_sparse(layer_idx) else self.dense

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int
    ) -> torch.Tensor:
        with record_function(ATTENTION_RANGE):  # a profiler trace's attention share
            return self.for_layer(layer_idx)(q, k, v)


def parallelize_model(model: Transformer, dims: Any, cfg: Config) -> AttentionRouter:
    """Give `model` the attention for `dims` (a ParallelDims, or None for one process).

    One CP rank: `lighthouse_attention` / causal SDPA on the whole sequence. CP > 1: the ring
    versions over `dims.cp_group` in `cfg.parallel.layout`; inputs are then local shards.
    Blocks get train.activation_checkpointing (per layer; `auto` from the device's memory) and
    train.compile. Returns the router; `router.set_stage(2)` makes every layer dense.
    """
    spec = lighthouse_spec(cfg) if cfg.sparse_layers() else None
    sparse, dense = attention_functions(spec, dims, cfg)
    router = AttentionRouter(sparse, dense, cfg.sparse_layers())
    model.set_attention(router)
    router.recompute = recompute_plan(cfg, *device_memory(model, cfg))
    cp_degree = 1 if dims is None else dims.cp_degree
    wrap_blocks(model, router.recompute, cfg.train.compile, fullgraph=cp_degree == 1)
    return router


def device_memory(model: Transformer, cfg: Config) -> tuple[str, int | None]:
    """(device type, bytes of memory per device) for the recompute plan: None off CUDA or unless
    `auto` needs it; under a process group the smallest of all ranks, so that every rank picks
    the same plan (a block fully recomputed on one CP rank only would run its collectives
    there alone)."""
    device = next(model.parameters()).device
    if device.type != "cuda" or recompute_mode(cfg) != "auto":
        return device.type, None
    memory = torch.tensor(torch.cuda.get_device_properties(device).total_memory, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(memory, op=dist.ReduceOp.MIN)
    return "cuda", int(memory)


def attention_functions(
    spec: LighthouseSpec | None, dims: Any, cfg: Config
) -> tuple[BlockAttention, BlockAttention]:
    """(sparse, dense) block attentions for `dims`: single device, or rings over the CP group."""
    cp_degree = 1 if dims is None else dims.cp_degree
    if cp_degree == 1:

        def sparse(q, k, v):
            return lighthouse_attention(q, k, v, spec)

        def dense(q, k, v):
            return causal_attention(q, k, v)

        return sparse, dense
    from lhdist.parallel import lighthouse_cp_attention, ring_attention

    group, layout = dims.cp_group, cfg.parallel.layout

    # Collectives stay out of compiled graphs: a compiled block runs these eagerly.
    @torch.compiler.disable
    def sparse_cp(q, k, v):
        return lighthouse_cp_attention(q, k, v, spec, group=group, layout=layout)

    @torch.compiler.disable
    def dense_cp(q, k, v):
        return ring_attention(q, k, v, group=group, layout=layout, causal=True)

    return sparse_cp, dense_cp


def apply_activation_checkpointing(model: Transformer, plan: list[str] | None = None) -> None:
    """Recompute in the backward what `plan` says per block (default: every block whole)."""
    plan = plan or ["full"] * len(model.layers)
    checkpoint_feed_forwards(model, plan)
    checkpoint_blocks(model, plan)
