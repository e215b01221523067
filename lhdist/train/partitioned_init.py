"""The model a run trains, built partitioned from the start under DeepSpeed ZeRO-3.

ZeRO-3 keeps 1/W of every parameter per rank; building the whole model first and letting
`deepspeed.initialize` partition it would hold the whole model on every rank once (an 8B model
does not fit). Under `deepspeed.zero.Init` each module's parameters are partitioned as soon as
its constructor returns, so a rank never holds more than one module whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lhdist.config import Config
from lhdist.model import build_model
from lhdist.train.engine import deepspeed_config, import_deepspeed


def partitions_at_init(cfg: Config) -> bool:
    return cfg.train.engine == "deepspeed" and cfg.train.zero_stage == 3


def build_train_model(cfg: Config, dims: Any, device: torch.device) -> nn.Module:
    """`build_model(cfg.model, seed=cfg.train.seed)`, partitioned over `dims.grad_group` when
    the engine is DeepSpeed ZeRO-3, with the same initial weights either way."""
    if not partitions_at_init(cfg):
        return build_model(cfg.model, seed=cfg.train.seed, device=device)
    deepspeed = import_deepspeed(device.type)
    with deepspeed.zero.Init(
        data_parallel_group=dims.grad_group,
        # dtype stays None: the config (no bf16/fp16 section: fp32 master weights) then gives
        # fp32. DeepSpeed 0.19.8 ignores an explicit dtype where the accelerator reports no fp16
        # support (an operator-precedence slip in Init._set_dtype) and builds bf16 on such CPUs.
        config_dict_or_path=deepspeed_config(cfg, device.type),
        mem_efficient_linear=False,  # it patches F.linear only while the context is open
    ):
        model = build_model(cfg.model, seed=cfg.train.seed, device=device)
    # The model's own init ran on already-partitioned (empty) parameters and drew nothing from
    # the RNG; the submodules' constructors drew exactly what they draw without zero.Init, so
    # the RNG now stands where reset_parameters started. Redo it one gathered parameter at a
    # time, in its order: the same weights as a plain build. Every rank draws the same numbers;
    # rank 0's are kept.
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise RuntimeError(f"deepspeed.zero.Init built {name} in {p.dtype}, not float32")
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            model.init_parameter(name, p)
    return model
