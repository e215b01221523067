"""Reading the small JSON files lhdist writes beside data and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(file: Path, remedy: str) -> dict[str, Any]:
    """`file`'s JSON object; a ValueError naming the file (and `remedy`) when it does not parse
    or holds something else."""
    try:
        obj = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}): {remedy}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file} holds a {type(obj).__name__}, expected an object")
    return obj
