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
from lhdist.train.agreement import agree, decide_on_rank0
from lhdist.train.checkpoint_checks import check_model_shape, model_shape, parse_meta
from lhdist.train.disk import DiskError, as_disk_error, check_free_space, tree_bytes
from lhdist.train.tokenizer_files import copy_tokenizer_folder

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"
META = "meta.json"  # the same name as checkpoint_checks.META


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
    cfg: Config,
    engine: Any,
    step: int,
    stage: int,
    rank_state: dict[str, Any],
    run_id: str | None = None,
) -> Path:
    """Collective over the world: write checkpoint `step` atomically, prune this run's
    checkpoints (`run_id`) to `keep_last`.

    `rank_state` is this rank's own state (data loader position, ...); RNG states are added here.
    Free space is checked first; a failed write on any rank (disk full, read-only) removes the
    partial folder and raises the same DiskError on every rank.
    """
    ckpt_dir, rank = cfg.checkpoint_dir(), dist.get_rank()
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f"{TMP_PREFIX}{final.name}"

    def prepare() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        how = "free space there, lower checkpoint.keep_last, or set checkpoint.dir elsewhere"
        check_free_space(
            ckpt_dir, expected_checkpoint_bytes(cfg, ckpt_dir), f"checkpoint {final.name}", how
        )
        tmp.mkdir(parents=True)

    decide_on_rank0(lambda: guard_disk(prepare, ckpt_dir))

    def write_rank_files() -> None:
        engine.save(tmp)
        torch.save({**rank_state, "rng": rng_state()}, tmp / rank_file(rank))

    try:
        agree(lambda: guard_disk(write_rank_files, tmp))
    except BaseException:  # a partial checkpoint would only fill the disk further
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    def publish() -> None:
        try:
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
                "run_id": run_id,
                "model": model_shape(cfg),
                "files": file_sizes(tmp),
            }
            (tmp / META).write_text(json.dumps(meta, indent=2))
            fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
        prune(ckpt_dir, run_id, cfg.checkpoint.keep_last, keep=final)

    decide_on_rank0(lambda: guard_disk(publish, tmp))
    return final


def guard_disk(fn: Any, where: Path) -> Any:
    """`fn()`, with a refused write turned into a DiskError that says so."""
    try:
        return fn()
    except DiskError:
        raise
    except Exception as e:
        disk = as_disk_error(e, where)
        if disk is None:
            raise
        raise disk from e


def expected_checkpoint_bytes(cfg: Config, ckpt_dir: Path) -> int:
    """The size of the newest complete checkpoint, else an estimate from the parameter count
    (fp32 weights + AdamW's m and v, + DeepSpeed's fp32 master copy)."""
    existing = list_checkpoints(ckpt_dir)
    if existing:
        return tree_bytes(existing[-1][1])
    from lhdist.check import param_count

    per_param = 16 if cfg.train.engine == "deepspeed" else 12
    return per_param * param_count(cfg)


def file_sizes(root: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under `root`: meta.json's manifest, which tells a
    complete checkpoint from one truncated after its rename."""
    sizes = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            sizes[path.relative_to(root).as_posix()] = path.stat().st_size
    return dict(sorted(sizes.items()))


def prune(ckpt_dir: Path, run_id: str | None, keep_last: int, keep: Path) -> None:
    """Delete this run's checkpoints beyond the newest `keep_last` (by step), never `keep` (the
    one just written) and never another run's."""
    ours = [(s, p) for s, p in list_checkpoints(ckpt_dir) if checkpoint_run_id(p) == run_id]
    for _, old in ours[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_run_id(path: Path) -> str | None:
    try:
        return json.loads((path / META).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of checkpoint `path`, schema-checked (ValueError naming the file)."""
    return parse_meta(path)


def check_compatible(meta: dict[str, Any], cfg: Config, path: Path) -> None:
    """ValueError unless the run's layout can load a checkpoint written with `meta`."""
    now = {
        "world_size": cfg.parallel.dp_degree * cfg.parallel.cp_degree,
        "dp_degree": cfg.parallel.dp_degree,
        "cp_degree": cfg.parallel.cp_degree,
        "engine": cfg.train.engine,
        "zero_stage": cfg.train.zero_stage,
    }
    check_model_shape(path, meta, cfg)
    differ = {k: (meta.get(k), v) for k, v in now.items() if meta.get(k) != v}
    if differ:
        details = ", ".join(f"{k}: checkpoint {a} vs run {b}" for k, (a, b) in differ.items())
        raise ValueError(
            f"checkpoint {path} was written with another layout ({details}); resume with the "
            f"same layout or set checkpoint.resume=none"
        )


def load_checkpoint(path: Path, engine: Any) -> dict[str, Any]:
    """Collective: restore engine state and RNG from `path`; returns this rank's rank_state."""
    try:
        engine.load(path)
        state = torch.load(
            path / rank_file(dist.get_rank()), map_location="cpu", weights_only=False
        )
        set_rng_state(state.pop("rng"))
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # torch's zip reader, unpickling, a state dict of other keys
        text = " ".join(str(e).split())[:300]
        raise ValueError(
            f"checkpoint {path} is corrupt: loading it failed ({type(e).__name__}: {text}); "
            "resume from an earlier one (checkpoint.resume=PATH) or start over "
            "(checkpoint.resume=none)"
        ) from None
    return state
