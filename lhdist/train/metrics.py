"""Per-step metrics on rank 0: a console line or progress bar, JSONL, and TensorBoard."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

JSONL = "metrics.jsonl"


class ComputeDtypeProbe:
    """The dtype the first nn.Linear of `model` computed in at its first forward (bf16 when
    autocast reached the engine's forward, fp32 when something turned it off); then detaches.

    With compiled blocks (`model.blocks_compiled`) a hook inside them would cost a graph of its
    own; there it records the autocast dtype the model's forward ran (and its blocks were
    traced) under, which is the dtype their linears compute in."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.dtype: str | None = None
        if getattr(model, "blocks_compiled", False):
            self.handle = model.register_forward_pre_hook(self.record_autocast)
            return
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        self.handle = linear.register_forward_hook(self.record)

    def record(self, module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        self.dtype = str(out.dtype).removeprefix("torch.")
        self.handle.remove()

    def record_autocast(self, module: torch.nn.Module, args: Any) -> None:
        device = args[0].device.type
        on = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if on else module.output.weight.dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self.handle.remove()


def memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak, or peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA allocator peak (at the stage switch: each stage reports its own); the
    CPU's peak RSS cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def format_line(record: dict[str, Any], total_steps: int) -> str:
    parts = [
        f"step {record['step']}/{total_steps}",
        f"stage {record['stage']}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        "gnorm -" if record["grad_norm"] is None else f"gnorm {record['grad_norm']:.3f}",
        f"{record['tokens_per_s']:,.0f} tok/s",
        f"{record['tokens_per_s_per_device']:,.0f} tok/s/dev",
    ]
    if record.get("mfu_dense") is not None:
        parts.append(
            f"mfu {100 * record['mfu_dense']:.1f}% dense-eq, "
            f"{100 * record['mfu_executed']:.1f}% executed"
        )
    parts.append(f"mem {record['memory_gib']:.2f} GiB")
    return " | ".join(parts)


class MetricsLogger:
    """Writes on rank 0 only; other ranks get a logger that does nothing."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled, self.total_steps = enabled, total_steps
        self.stream = stream or sys.stdout
        self.jsonl = self.bar = self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / JSONL, "a")  # noqa: SIM115 (lives as long as the run)
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                file=self.stream,
                dynamic_ncols=True,
                unit="step",
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=self.stream, flush=True)

    def event(self, name: str, step: int, **fields: Any) -> None:
        """A one-off event (stage switch, resume, checkpoint): JSONL and console."""
        if not self.enabled:
            return
        record = {"event": name, "step": step, "time": time.time(), **fields}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        self.print(f"[{name}] step {step} {details}".rstrip())

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars `prefix/key` for the numeric values (e.g. an eval's losses)."""
        if not self.enabled or self.tb is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def step(self, record: dict[str, Any], show: bool) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({**record, "time": time.time()}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"train/{key}", value, record["step"])
        if self.bar is not None:
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                stage=record["stage"],
                tok_s=f"{record['tokens_per_s']:,.0f}",
            )
            if show:
                self.bar.write(format_line(record, self.total_steps))
        elif show:
            print(format_line(record, self.total_steps), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
