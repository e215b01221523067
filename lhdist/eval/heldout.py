"""Held-out loss during training: the same batches at every eval, each token counted once.

The val set's first `eval.batches` micro-batches (stored order, no shuffle) are read once. Under
dp x cp the dp ranks take them round-robin and every CP rank keeps its shard, so each token is
counted once and the loss equals one process's loss on the same batches. A dp rank short of a
batch runs a padding forward whose labels are all ignored: every rank runs the same number of
forwards, as ZeRO-3's parameter gathers and CP's collectives need.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lhdist.train.data import DatasetInfo, TokenLoader
from lhdist.train.loss import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels), [B, N] int64


def check_heldout_size(info: DatasetInfo, seq_len: int, micro_batch_size: int, batches: int):
    """ValueError unless the val set holds `batches` micro-batches."""
    need = batches * micro_batch_size
    if info.num_samples < need:
        raise ValueError(
            f"held-out set {info.path} has {info.num_samples} samples of seq_len={seq_len}, "
            f"fewer than eval.batches x train.micro_batch_size = {batches} x {micro_batch_size} "
            f"= {need}: lower eval.batches or hold out more text"
        )


def read_heldout(info: DatasetInfo, seq_len: int, micro_batch_size: int, batches: int):
    """The first `batches` micro-batches of the val set, in stored order (ValueError if short)."""
    check_heldout_size(info, seq_len, micro_batch_size, batches)
    loader = TokenLoader(
        info, seq_len=seq_len, micro_batch_size=micro_batch_size, dp_rank=0, dp_degree=1,
        seed=0, shuffle=False,
    )  # fmt: skip
    return [next(loader) for _ in range(batches)]


def rank_share(batches: list[Batch], dp_rank: int, dp_degree: int) -> list[Batch]:
    """dp rank r's micro-batches r, r + dp, ...; padded (all labels ignored) to the same count
    on every rank."""
    rounds = -(-len(batches) // dp_degree)
    mine = batches[dp_rank::dp_degree]
    padding = (batches[0][0], torch.full_like(batches[0][1], IGNORE_INDEX))
    return mine + [padding] * (rounds - len(mine))


@torch.no_grad()
def mean_loss(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    micro_batches: list[Batch],
    group: Any,
    device: torch.device,
) -> tuple[float, int]:
    """(mean token loss, tokens) over every rank of `group`; `forward` returns a loss sum."""
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for input_ids, labels in micro_batches:
        totals[0] += forward(input_ids, labels).double()
        totals[1] += (labels != IGNORE_INDEX).sum()
    dist.all_reduce(totals, group=group)
    return float(totals[0] / totals[1]), int(totals[1])


@dataclass
class EvalMode:
    """One way of running the model for an eval: the router's stage, and optionally another
    sparse attention (e.g. causal re-selection) in place of the run's."""

    name: str
    stage: int
    sparse: Callable | None = None


class HeldOutEval:
    """Held-out loss of the model in each `EvalMode`, on this rank's share of the val batches."""

    def __init__(
        self,
        micro_batches: list[Batch],
        modes: list[EvalMode],
        group: Any,
        device: torch.device,
        every: int,
        total_steps: int,
    ) -> None:
        self.micro_batches, self.modes = micro_batches, modes
        self.group, self.device = group, device
        self.every, self.total_steps = every, total_steps

    def due(self, step: int) -> bool:
        return step == self.total_steps or (self.every > 0 and step % self.every == 0)

    def run(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], router: Any):
        """{"val_loss_<mode>": loss, ..., "val_tokens", "eval_time_s"}; collective over group.
        `forward(input_ids, labels)` is the engine's forward returning the loss sum; `router`
        the model's AttentionRouter, switched to each mode and back."""
        start, record = time.perf_counter(), {}
        for mode in self.modes:
            with router.evaluating(mode.stage, mode.sparse):
                loss, tokens = mean_loss(forward, self.micro_batches, self.group, self.device)
            record[f"val_loss_{mode.name}"] = loss
            record["val_tokens"] = tokens
        record["eval_time_s"] = time.perf_counter() - start
        return record


def eval_modes(cfg: Any, dims: Any) -> list[EvalMode]:
    """dense (stage 2) always; with Lighthouse, the run's sparse attention (stage 1) and, for
    the paper's top-k competition, causal re-selection: the same weights without look-ahead."""
    from lhdist.parallel.parallelize import attention_functions, lighthouse_spec

    modes = [EvalMode("dense", 2)]
    if not cfg.sparse_layers():
        return modes
    modes.append(EvalMode("lighthouse", 1))
    spec = lighthouse_spec(cfg)
    if cfg.eval.causal_reselection and spec.competition == "topk":
        try:
            causal = dataclasses.replace(spec, competition="causal")
        except ValueError:  # a layout the causal rule does not take: no such column
            return modes
        modes.append(EvalMode("lighthouse_causal", 1, attention_functions(causal, dims, cfg)[0]))
    return modes


def build_heldout_eval(
    cfg: Any, dims: Any, info: DatasetInfo, shard: Callable[[Batch], Batch], device
) -> HeldOutEval:
    """The run's held-out eval: its val batches read, shared over dp and sharded over cp."""
    t = cfg.train
    batches = read_heldout(info, t.seq_len, t.micro_batch_size, cfg.eval.batches)
    mine = [shard(b) for b in rank_share(batches, dims.dp_rank, dims.dp_degree)]
    return HeldOutEval(
        mine, eval_modes(cfg, dims), dims.grad_group, device, cfg.eval.every, t.steps
    )
