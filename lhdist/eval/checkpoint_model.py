"""A training checkpoint as one single-process model: its config, its weights, loaded strictly.

A checkpoint (lhdist/train/checkpoint.py) holds `meta.json`, `config.yaml` (the run's resolved
config) and the engine's files: `engine.pt` (torch engine: {"model", "optimizer", "scheduler"})
or `deepspeed/` (DeepSpeed: the module state in `mp_rank_00_model_states.pt` for ZeRO 0-2,
partitioned fp32 shards for ZeRO-3, gathered by DeepSpeed's zero_to_fp32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from lhdist.config import Config, config_from_dict
from lhdist.model import Transformer, build_model
from lhdist.train.checkpoint import META, find_latest
from lhdist.train.engine import DEEPSPEED_TAG, ENGINE_STATE

CONFIG_FILE = "config.yaml"
DEEPSPEED_MODULE_STATE = "mp_rank_00_model_states.pt"


def read_checkpoint_config(path: str | Path) -> tuple[Config, dict[str, Any]]:
    """(single-process config, meta) of checkpoint `path`, without touching the weights.

    The run's config is resolved on its own world (dp x cp from meta), then copied with
    dp = cp = 1: the model is the same, the attention runs on one device."""
    path = Path(path)
    if not (path / META).is_file():
        hint = ""
        for inner in (path, path / "checkpoints"):
            latest = find_latest(inner) if inner.is_dir() else None
            if latest is not None:
                hint = f"; the latest checkpoint inside is {latest}"
                break
        raise ValueError(f"{path} is not a checkpoint directory: {META} is missing{hint}")
    meta = json.loads((path / META).read_text())
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ValueError(f"checkpoint {path} has no {CONFIG_FILE}: its model cannot be rebuilt")
    mapping = yaml.safe_load(config_file.read_text()) or {}
    world = int(meta.get("dp_degree", 1)) * int(meta.get("cp_degree", 1))
    run_cfg = config_from_dict(mapping, world_size=world)
    return single_process_config(run_cfg), meta


def single_process_config(cfg: Config) -> Config:
    """A copy of `cfg` for one process (dp = cp = 1), revalidated."""
    one = dataclasses.replace(cfg.parallel, dp_degree=1, cp_degree=1)
    return config_from_dict({**cfg.to_dict(), "parallel": dataclasses.asdict(one)}, world_size=1)


def load_checkpoint_model(
    path: str | Path, device: torch.device | str
) -> tuple[Transformer, Config]:
    """(model on `device` in eval mode with the checkpoint's weights, single-process config).

    ValueError (one line) for a directory that is not a checkpoint, a missing weights file, or
    weights of another model shape (the first mismatching tensor and both shapes)."""
    path = Path(path)
    cfg, meta = read_checkpoint_config(path)
    state = read_model_state(path, meta)
    check_state_matches(build_model(cfg.model, device="meta"), state, path)  # before allocating
    model = build_model(cfg.model, device=device)
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg


def read_model_state(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from whichever engine wrote `path`, on CPU."""
    engine_file, ds_dir = path / ENGINE_STATE, path / DEEPSPEED_TAG
    if engine_file.is_file():
        # mmap: the optimizer state beside the weights is never read into memory.
        state = torch.load(engine_file, map_location="cpu", weights_only=True, mmap=True)
        if "model" not in state:
            raise ValueError(f"{engine_file} has no 'model' entry (keys: {sorted(state)})")
        return state["model"]
    if ds_dir.is_dir():
        return read_deepspeed_state(path, ds_dir, int(meta.get("zero_stage", 0)))
    raise ValueError(
        f"checkpoint {path} has no weights: neither {ENGINE_STATE} (torch engine) nor "
        f"{DEEPSPEED_TAG}/ (DeepSpeed engine)"
    )


def read_deepspeed_state(path: Path, ds_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    module_file = ds_dir / DEEPSPEED_MODULE_STATE
    if zero_stage < 3 and module_file.is_file():
        state = torch.load(module_file, map_location="cpu", weights_only=False)
        return state["module"]
    # ZeRO-3 saves only partitions of the fp32 weights; zero_to_fp32 stitches them together.
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # instead of a warning that it found none
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise ValueError(
            f"checkpoint {path} was written by DeepSpeed ZeRO-{zero_stage}; reading it needs "
            "deepspeed installed"
        ) from None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress, not our report on stdout
            return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG)
    except (FileNotFoundError, ValueError) as e:
        message = " ".join(str(e).split())
        raise ValueError(f"checkpoint {path}: cannot read its DeepSpeed weights: {message}") from e


def check_state_matches(model: Transformer, state: dict[str, torch.Tensor], path: Path) -> None:
    """ValueError naming the first tensor that is missing, extra or of another shape."""
    mine = model.state_dict()
    where = f"checkpoint {path} holds weights of another model than its {CONFIG_FILE} describes"
    for name, tensor in mine.items():
        if name not in state:
            raise ValueError(f"{where}: {name} is missing from the checkpoint")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{where}: {name} has shape {tuple(state[name].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )
    extra = [name for name in state if name not in mine]
    if extra:
        raise ValueError(f"{where}: {extra[0]} is in the checkpoint but not in the model")
