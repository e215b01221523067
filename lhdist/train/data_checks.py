"""Checks of a dataset's files that name the file and the field: index.json and lhdist.json
schemas, token ids against the vocabulary, `prepare`'s output apart from its inputs, and the
temporary folders of killed prepares."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lhdist.train.json_file import read_json_object
from lhdist.train.watchdog import pid_alive

# field -> (type, what it means): what _check_index reads from each shard of index.json.
SHARD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "column_names": list,
    "column_encodings": list,
    "samples": int,
    "raw_data": dict,
}
RAW_FIELDS: dict[str, type | tuple[type, ...]] = {"basename": str, "bytes": int}
# lhdist.json fields the loader relies on when present.
META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "vocab_size": int,
    "tokenizer": str,
    "seq_len": int,
    "sample_len": int,
    "num_samples": int,
}


def _type_names(tp: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,)))


def _check_fields(obj: dict[str, Any], fields: dict, where: str, required: bool) -> None:
    for name, tp in fields.items():
        if name not in obj:
            if required:
                raise ValueError(f"{where} lacks the field {name!r}: prepare the dataset again")
            continue
        value = obj[name]
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ValueError(
                f"{where} has {name}={value!r}, expected {_type_names(tp)}: prepare the dataset "
                "again"
            )
        if isinstance(value, int) and value < 0:
            raise ValueError(f"{where} has {name}={value}, expected >= 0")


def check_index_schema(obj: Any, index: Path) -> None:
    """ValueError naming index.json, the shard and the field that _check_index would trip on."""
    if not isinstance(obj, dict):
        raise ValueError(f"{index} holds a {type(obj).__name__}, expected an MDS index object")
    _check_fields(obj, {"version": int, "shards": list}, str(index), required=True)
    for i, shard in enumerate(obj["shards"]):
        if not isinstance(shard, dict):
            raise ValueError(f"{index}: shard {i} is a {type(shard).__name__}, expected an object")
        _check_fields(shard, SHARD_FIELDS, f"{index}: shard {i}", required=True)
        name = shard["raw_data"].get("basename", "?")
        _check_fields(shard["raw_data"], RAW_FIELDS, f"{index}: shard {i} ({name}) raw_data",
                      required=True)  # fmt: skip
        hashes = shard["raw_data"].get("hashes")
        if hashes is not None and not isinstance(hashes, dict):
            raise ValueError(f"{index}: shard {i} ({name}) has hashes={hashes!r}, expected {{}}")


def read_dataset_meta(meta_file: Path) -> dict[str, Any]:
    """lhdist.json, checked: an object whose known fields have their types."""
    meta = read_json_object(meta_file, "prepare the dataset again")
    _check_fields(meta, META_FIELDS, str(meta_file), required=False)
    if meta.get("vocab_size") == 0:
        raise ValueError(f"{meta_file} has vocab_size=0, expected >= 1")
    return meta


def check_token_ids(tokens: np.ndarray, max_id: int, sample_id: int, path: Path) -> None:
    """One max (and min) per sample: ids past the embedding would fail deep in the model."""
    high = int(tokens.max())
    low = int(tokens.min()) if tokens.dtype.kind == "i" else 0
    if high > max_id or low < 0:
        bad = high if high > max_id else low
        raise ValueError(
            f"sample {sample_id} of dataset {path} holds token id {bad}, outside [0, "
            f"model.vocab_size={max_id + 1}): a shard is corrupt or was tokenized for a larger "
            f"vocabulary; `lhdist data validate {path}` verifies the shard hashes"
        )


def check_out_apart(out: Path, inputs: Sequence[str | Path]) -> None:
    """`prepare --out` replaces its directory: it must not be, hold or sit inside an input."""
    target = out.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if target == source:
            raise ValueError(f"--out {out} is the input {item}; write the dataset elsewhere")
        if source.is_dir() and target.is_relative_to(source):
            raise ValueError(
                f"--out {out} is inside the input directory {item}: its shards would be read "
                "as text next time; write the dataset elsewhere"
            )
        if source.is_relative_to(target):
            raise ValueError(
                f"--out {out} contains the input {item}, which writing it would delete; write the "
                "dataset elsewhere"
            )


def temp_owner() -> str:
    """'host-pid': who writes a temporary folder, so a later run can tell a dead writer's."""
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete `.OUT.tmp-HOST-PID-XXXX` folders beside `out` whose writer on this host is gone
    (a killed prepare); returns them. Folders of live or remote writers stay."""
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix, host = f".{out.name}.tmp-", socket.gethostname()
    for entry in out.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        parts = entry.name[len(prefix) :].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not pid_alive(int(parts[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
