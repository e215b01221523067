"""What a checkpoint must be before a run loads it: a meta.json of the right shape, every file
of its manifest at its recorded size (a truncated copy is named, not unpickled), and a model
of this run's shape (one line instead of a screen of `size mismatch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lhdist.train.json_file import read_json_object

META = "meta.json"
# The dims that fix every weight's shape.
MODEL_SHAPE_KEYS = (
    "dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size", "tie_embeddings",
)  # fmt: skip
META_FIELDS = {"step": int, "stage": int, "world_size": int, "dp_degree": int, "cp_degree": int}


def model_shape(cfg: Any) -> dict[str, Any]:
    return {key: getattr(cfg.model, key) for key in MODEL_SHAPE_KEYS}


def parse_meta(path: Path) -> dict[str, Any]:
    """meta.json of checkpoint `path`, checked; ValueError naming the file otherwise."""
    meta_file = Path(path) / META
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a checkpoint: {META} is missing")
    meta = read_json_object(meta_file, "the checkpoint is corrupt")
    for name, tp in META_FIELDS.items():
        if not isinstance(meta.get(name), tp) or isinstance(meta.get(name), bool):
            raise ValueError(
                f"{meta_file} has {name}={meta.get(name)!r}, expected an integer: the checkpoint "
                "is corrupt or not written by lhdist"
            )
    files = meta.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, int) for v in files.values()):
        raise ValueError(f"{meta_file} has a malformed 'files' manifest")
    return meta


def incomplete_file(path: Path, meta: dict[str, Any]) -> str | None:
    """The first file of the manifest that is missing or of another size, described; None when
    all match (or the checkpoint predates manifests)."""
    for name, size in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, {META} records {size}"
    return None


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint whose files are all there at their sizes; ValueError naming
    the checkpoint and the file otherwise."""
    meta = parse_meta(path)
    problem = incomplete_file(path, meta)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is truncated or incomplete: {problem}")
    return meta


def stored_model_shape(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The model dims a checkpoint was written with: meta.json's, else its config.yaml's."""
    if isinstance(meta.get("model"), dict):
        return meta["model"]
    try:
        model = yaml.safe_load((path / "config.yaml").read_text())["model"]
        return {key: model.get(key) for key in MODEL_SHAPE_KEYS}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def check_model_shape(path: Path, meta: dict[str, Any], cfg: Any) -> None:
    """ValueError (one line, every differing dim) unless the checkpoint's model is this run's."""
    stored = stored_model_shape(path, meta)
    if stored is None:
        return
    now = model_shape(cfg)
    differ = [
        f"{k}={stored.get(k)} vs {now[k]}" for k in MODEL_SHAPE_KEYS if stored.get(k) != now[k]
    ]
    if differ:
        raise ValueError(
            f"checkpoint {path} holds another model (checkpoint vs run: {', '.join(differ)}); "
            "resume with the same model.* settings or set checkpoint.resume=none"
        )
