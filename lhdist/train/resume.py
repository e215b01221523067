"""Which checkpoint a run continues from, and which run it is.

A run id names one line of training. `<run_dir>/run.json` holds the id of the run that owns the
run directory (and the checkpoint it started from); every checkpoint's meta.json holds the id of
the run that wrote it. So `checkpoint.resume=auto` continues only this run's checkpoints (never
those an abandoned or other run left in the same folder), and pruning only ever deletes this
run's older checkpoints. An incomplete checkpoint (a file missing or of another size than its
manifest says) is skipped, named, for the previous complete one.

Decided on rank 0 and broadcast (`decide_on_rank0`), so every rank resumes the same step.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhdist.config import Config
from lhdist.train.checkpoint import checkpoint_run_id, list_checkpoints
from lhdist.train.checkpoint_checks import verify_checkpoint

RUN_FILE = "run.json"


@dataclass
class ResumePlan:
    run_id: str
    path: Path | None
    """Checkpoint to load, or None for a fresh start."""
    resumed_from: Path | None = None
    """The checkpoint this line of training branched from (kept in run.json)."""
    notes: list[str] = field(default_factory=list)
    """Checkpoints skipped and why (logged as events)."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def read_run_file(run_dir: Path) -> dict[str, Any] | None:
    file = run_dir / RUN_FILE
    if not file.is_file():
        return None
    try:
        owner = json.loads(file.read_text())
    except (OSError, ValueError):
        return None  # a torn write of a killed start: treated as absent
    return owner if isinstance(owner, dict) and isinstance(owner.get("run_id"), str) else None


def write_run_file(run_dir: Path, run_id: str, resumed_from: Path | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_FILE}.tmp"
    payload = {"run_id": run_id, "resumed_from": str(resumed_from) if resumed_from else None}
    tmp.write_text(json.dumps(payload) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


def plan_resume(cfg: Config) -> ResumePlan:
    """The checkpoint to resume and the run id to write under (rank 0; see module doc)."""
    resume, ckpt_dir = cfg.checkpoint.resume, cfg.checkpoint_dir()
    if resume == "none":
        return ResumePlan(new_run_id(), None)
    if resume != "auto":
        path = Path(resume)
        verify_checkpoint(path)  # an explicit choice: a bad one is an error, not skipped
        return ResumePlan(new_run_id(), path, resumed_from=path)  # a new line from that point

    owner = read_run_file(Path(cfg.train.run_dir))
    notes: list[str] = []
    candidates = list_checkpoints(ckpt_dir)[::-1]  # newest first
    if owner is not None:
        others = [p for _, p in candidates if checkpoint_run_id(p) != owner["run_id"]]
        candidates = [(s, p) for s, p in candidates if p not in others]
        if others:
            notes.append(
                f"ignoring {len(others)} checkpoint(s) of other runs in {ckpt_dir} (this run is "
                f"{owner['run_id']}, {Path(cfg.train.run_dir) / RUN_FILE})"
            )
        if owner.get("resumed_from"):
            candidates.append((-1, Path(owner["resumed_from"])))
    for _, path in candidates:
        try:
            verify_checkpoint(path)
        except ValueError as e:
            notes.append(f"skipping {e}; trying the previous one")
            continue
        run_id = owner["run_id"] if owner else (checkpoint_run_id(path) or new_run_id())
        return ResumePlan(run_id, path, branched_from(owner), notes)
    return ResumePlan(owner["run_id"] if owner else new_run_id(), None, branched_from(owner), notes)


def branched_from(owner: dict[str, Any] | None) -> Path | None:
    return Path(owner["resumed_from"]) if owner and owner.get("resumed_from") else None
