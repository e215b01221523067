"""Atomic checkpoints (temp dir, fsync, rename), keep-last-K, and finding the latest to resume.

A checkpoint `step_00000100/` holds: `meta.json` (step, stage, layout), `config.yaml` (the
resolved config), the engine's model/optimizer/scheduler files, and `rank_XXXXX.pt` per rank (data
loader position and RNG states). Its name appears only once everything is on disk.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lhdist.config import Config
from lhdist.train.tokenizer_files import copy_tokenizer_folder

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"
META = "meta.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `ckpt_dir`, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for entry in ckpt_dir.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and (entry / META).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def find_latest(ckpt_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(ckpt_dir)
    return checkpoints[-1][1] if checkpoints else None


def remove_partial(ckpt_dir: Path) -> None:
    """Delete temp dirs a killed run left behind (rank 0, before anyone reads)."""
    if ckpt_dir.is_dir():
        for entry in ckpt_dir.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    cfg: Config, engine: Any, step: int, stage: int, rank_state: dict[str, Any]
) -> Path:
    """Collective over the world: write checkpoint `step` atomically, prune to `keep_last`.

    `rank_state` is this rank's own state (data loader position, ...); RNG states are added here.
    """
    ckpt_dir, rank = cfg.checkpoint_dir(), dist.get_rank()
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f"{TMP_PREFIX}{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save(tmp)
    torch.save({**rank_state, "rng": rng_state()}, tmp / rank_file(rank))
    dist.barrier()
    if rank == 0:
        (tmp / "config.yaml").write_text(cfg.to_yaml())
        copy_tokenizer_folder(Path(cfg.train.run_dir), tmp)  # what `lhdist export` ships
        meta = {
            "step": step,
            "stage": stage,
            "world_size": dist.get_world_size(),
            "dp_degree": cfg.parallel.dp_degree,
            "cp_degree": cfg.parallel.cp_degree,
            "engine": cfg.train.engine,
            "zero_stage": cfg.train.zero_stage,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
        fsync_tree(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
        for _, old in list_checkpoints(ckpt_dir)[: -cfg.checkpoint.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_meta(path: Path) -> dict[str, Any]:
    meta_file = Path(path) / META
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a checkpoint: {META} is missing")
    return json.loads(meta_file.read_text())


def check_compatible(meta: dict[str, Any], cfg: Config, path: Path) -> None:
    """ValueError unless the run's layout can load a checkpoint written with `meta`."""
    now = {
        "world_size": cfg.parallel.dp_degree * cfg.parallel.cp_degree,
        "dp_degree": cfg.parallel.dp_degree,
        "cp_degree": cfg.parallel.cp_degree,
        "engine": cfg.train.engine,
        "zero_stage": cfg.train.zero_stage,
    }
    differ = {k: (meta.get(k), v) for k, v in now.items() if meta.get(k) != v}
    if differ:
        details = ", ".join(f"{k}: checkpoint {a} vs run {b}" for k, (a, b) in differ.items())
        raise ValueError(
            f"checkpoint {path} was written with another layout ({details}); resume with the "
            f"same layout or set checkpoint.resume=none"
        )


def load_checkpoint(path: Path, engine: Any) -> dict[str, Any]:
    """Collective: restore engine state and RNG from `path`; returns this rank's rank_state."""
    engine.load(path)
    state = torch.load(path / rank_file(dist.get_rank()), map_location="cpu", weights_only=False)
    set_rng_state(state.pop("rng"))
    return state
