"""Engines that turn a loss into an optimizer step: DeepSpeed (ZeRO 0-3) or plain PyTorch.

Both reduce gradients over the dp x cp grad group as a SUM: the loop's loss is each rank's share
of one global mean (local token losses / global token count), so the shares add up.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from lhdist.check import reduce_bucket_elements
from lhdist.config import Config, no_grad_norm
from lhdist.train.schedule import lr_factor

ENGINE_STATE = "engine.pt"  # the torch engine's model/optimizer/scheduler file in a checkpoint
DEEPSPEED_TAG = "deepspeed"  # DeepSpeed's sub-directory in a checkpoint


class Engine(Protocol):
    module: nn.Module

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The model's forward."""

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> torch.Tensor | float | None:
        """Reduce gradients, clip, update, advance the lr; returns the global grad norm (a
        device tensor where it is one: reading it is the loop's once-per-interval sync), or None
        where the engine computes none (DeepSpeed ZeRO-1/2 with optim.grad_clip=0)."""

    def lr(self) -> float: ...
    def save(self, directory: Path) -> None:
        """Collective: write model, optimizer and scheduler state under `directory`."""

    def load(self, directory: Path) -> None:
        """Collective: restore what `save` wrote."""


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; matrices decay, norms (1-D) do not."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    # A ZeRO-3 partitioned parameter is an empty 1-D tensor; ds_shape is its real shape.
    matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 for p in params]
    groups = [
        {"params": [p for p, m in zip(params, matrix) if m], "weight_decay": o.weight_decay},
        {"params": [p for p, m in zip(params, matrix) if not m], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Config
) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR's counter is 0 before the first step; optimizer step s uses lr_factor(s).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i + 1, cfg))


def check_engine_available(cfg: Config) -> None:
    """ValueError before any process group starts when the configured engine cannot be built."""
    if cfg.train.engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            "train.engine=deepspeed but DeepSpeed is not installed: `pip install deepspeed` "
            "(DS_BUILD_OPS=0 is enough; nothing is JIT-built), or set train.engine=torch"
        )


def build_engine(model: nn.Module, cfg: Config, dims: Any) -> Engine:
    """The engine named by `cfg.train.engine` around `model` (already on its device)."""
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    if cfg.train.engine == "deepspeed":
        return DeepSpeedEngine(model, optimizer, scheduler, cfg, dims)
    return TorchEngine(model, optimizer, scheduler, cfg, dims)


def grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


# --- plain PyTorch --------------------------------------------------------------------------------


class TorchEngine:
    """DDP-style: one coalesced all-reduce (SUM) of the gradients over the grad group."""

    def __init__(self, model, optimizer, scheduler, cfg: Config, dims: Any) -> None:
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.grad_clip = cfg.optim.grad_clip
        self.skip_bad_updates = cfg.train.max_bad_steps > 0
        self.group = dims.grad_group
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.is_rank0 = dist.get_rank() == 0
        # Every rank starts from rank 0's weights, whatever it initialised.
        for p in model.state_dict().values():
            dist.broadcast(p, src=dist.get_global_rank(self.group, 0), group=self.group)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> torch.Tensor:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if dist.get_world_size(self.group) > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in self.params])
            dist.all_reduce(flat, group=self.group)
            for p, g in zip(self.params, flat.split([p.numel() for p in self.params]), strict=True):
                p.grad.copy_(g.view_as(p))
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.skip_bad_updates:
            # train.max_bad_steps > 0: a non-finite step's update is skipped (optimizer and
            # schedule, as DeepSpeed's overflow check does), which needs the norm on the host.
            if math.isfinite(float(norm)):
                self.optimizer.step()
                self.scheduler.step()
        else:
            # No host sync: a non-finite step stops the run at the next read-back, which comes
            # before any eval or checkpoint, so the bad update is never used.
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path) -> None:
        if self.is_rank0:  # replicated state: one copy is enough
            state = {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
            torch.save(state, directory / ENGINE_STATE)

    def load(self, directory: Path) -> None:
        state = torch.load(directory / ENGINE_STATE, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


# --- DeepSpeed ------------------------------------------------------------------------------------


class GradGroupMPU:
    """DeepSpeed's "model parallel unit" interface, telling it that its data-parallel world is
    our dp x cp grad group (CP ranks hold partial gradients that must be reduced too) and that
    there is no tensor or pipeline parallelism (a group of one per rank)."""

    def __init__(self, grad_group: Any) -> None:
        self.grad_group = grad_group
        # new_subgroups is collective: every rank builds every singleton group.
        self.single_group, _ = dist.new_subgroups(group_size=1)

    def get_data_parallel_group(self):
        return self.grad_group

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size(self.grad_group)

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.grad_group)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self.grad_group)

    def get_model_parallel_group(self):
        return self.single_group

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_rank = get_model_parallel_rank


def skip_cpu_shm_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (40-70 s) the first
    time it initialises; training on gloo never uses it, and there is no setting to skip it."""
    # `import deepspeed.comm.torch as m` would bind the `torch` name deepspeed.comm re-exports.
    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")
    ds_torch_comm.build_shm_op = lambda: None


def deepspeed_config(cfg: Config, device_type: str) -> dict[str, Any]:
    """The DeepSpeed config of `cfg` (also what zero.Init partitions the model with)."""
    t = cfg.train
    ds_config = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {
            "stage": t.zero_stage,
            # DeepSpeed allocates the whole bucket (default 5e8 fp32 elements, 1.9 GiB) at every
            # backward; past the model's size it holds nothing.
            "reduce_bucket_size": reduce_bucket_elements(cfg),
            "compute_grad_norm": not no_grad_norm(cfg),
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.bf16_compute(device_type):
        ds_config["torch_autocast"] = autocast_section()
    return ds_config


def autocast_section() -> dict[str, Any]:
    """DeepSpeed's `torch_autocast` config: its forward runs under bf16 autocast like the torch
    engine's (without it DeepSpeed turns the loop's autocast off and the forward runs in fp32).
    Weights, gradients, master copy and AdamW state stay fp32. No module is marked "lower
    precision safe", so ZeRO reduces gradients (and ZeRO-3 gathers weights) in fp32, as the torch
    engine does; DeepSpeed's default would reduce nn.Linear gradients in bf16."""
    return {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}


def import_deepspeed(device_type: str) -> Any:
    """The deepspeed module, set up for `device_type` (cpu or cuda)."""
    if device_type == "cpu":
        # Name the accelerator instead of letting DeepSpeed warn that it found no GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if device_type == "cpu":
        skip_cpu_shm_build()
    return deepspeed


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0-3 with a torch AdamW (no JIT-built fused Adam)."""

    def __init__(self, model, optimizer, scheduler, cfg: Config, dims: Any) -> None:
        device = next(model.parameters()).device
        deepspeed = import_deepspeed(device.type)
        t = cfg.train
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, device.type),
            mpu=GradGroupMPU(dims.grad_group),
            dist_init_required=False,
        )
        self.module = self.engine.module
        # DeepSpeed averages over its data-parallel world and divides by the accumulation steps;
        # our per-rank, per-micro-batch losses are shares of one global mean and must be summed.
        self.loss_scale = float(dist.get_world_size(dims.grad_group) * t.grad_accum_steps)
        self.pending_micro_steps = 0
        self.zero_stage = t.zero_stage

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        if self.pending_micro_steps:  # DeepSpeed wants step() after every micro-batch backward
            self.engine.step()
        self.engine.backward(loss * self.loss_scale)
        self.pending_micro_steps += 1

    def step(self) -> torch.Tensor | float | None:
        assert self.engine.is_gradient_accumulation_boundary(), "step() before the last micro-batch"
        self.pending_micro_steps = 0
        # ZeRO-0 in fp32 reports no norm; its gradients are already reduced after backward.
        fallback = None if self.zero_stage else grad_norm(self.module.parameters())
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if isinstance(norm, torch.Tensor):  # a copy: the loop reads it back steps later
            norm = norm.detach().clone()
        return norm if norm is not None else fallback

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory),
            tag=DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {directory / DEEPSPEED_TAG}")
