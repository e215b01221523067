"""metrics.jsonl at the start of a run: a torn last line (disk full, a kill mid-write) is cut,
and the records after the step the run starts from (those of an interrupted or abandoned run,
which this run is about to redo) move to metrics.abandoned.jsonl. Each step then appears once
in metrics.jsonl, and nothing is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

ABANDONED = "metrics.abandoned.jsonl"


def repair_metrics(path: Path, start_step: int) -> tuple[int, int]:
    """Rewrite `path` (atomically) keeping the whole records of steps <= start_step; returns
    (torn lines dropped, records moved to the abandoned file)."""
    if not path.is_file():
        return 0, 0
    lines = path.read_bytes().split(b"\n")
    kept, moved, torn = [], [], 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            torn += 1  # not a record: the tail of a write cut short
            continue
        (kept if step <= start_step else moved).append(raw)
    if not torn and not moved:
        return 0, 0
    if moved:
        with open(path.parent / ABANDONED, "ab") as f:
            f.write(b"".join(line + b"\n" for line in moved))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in kept))
    os.replace(tmp, path)
    return torn, len(moved)
