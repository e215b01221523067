"""Hugging Face weight files: write `model.safetensors` (sharded with an index past a size), and
read a folder's tensors lazily, one at a time, whether it holds one file or an indexed set."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 << 30  # transformers' own default shard size


def safetensors_module():
    try:
        import safetensors.torch
    except ImportError:
        raise ValueError(
            "reading or writing Hugging Face weights needs the safetensors package: "
            "pip install safetensors (or `pip install -e .[hf]`)"
        ) from None
    return safetensors


def shard_plan(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Names in order, cut into consecutive groups of at most `max_shard_bytes` (a tensor
    larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_safetensors(
    state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> list[str]:
    """Write `state` into `folder` as transformers names it; returns the files written."""
    st = safetensors_module()
    sizes = {name: t.numel() * t.element_size() for name, t in state.items()}
    shards = shard_plan(sizes, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        st.torch.save_file(contiguous(state, shards[0]), str(folder / SINGLE_FILE), metadata)
        return [SINGLE_FILE]
    files, weight_map = [], {}
    for i, names in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        st.torch.save_file(contiguous(state, names), str(folder / file), metadata)
        weight_map.update(dict.fromkeys(names, file))
        files.append(file)
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [*files, INDEX_FILE]


def contiguous(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    return {name: state[name].detach().contiguous() for name in names}


class SafetensorsFolder:
    """The tensors of a Hugging Face folder by name, read on access (memory-mapped by
    safetensors). ValueError for a folder with no weights or an index naming missing files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.st = safetensors_module()
        index, single = self.folder / INDEX_FILE, self.folder / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{index} is not a safetensors index ({e!r})") from None
        elif single.is_file():
            weight_map = None
        else:
            raise ValueError(
                f"Hugging Face folder {self.folder} has no weights: neither {SINGLE_FILE} nor "
                f"{INDEX_FILE} (only safetensors are read)"
            )
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.file_of: dict[str, Path] = {}
        for file in files:
            path = self.folder / file
            if not path.is_file():
                raise ValueError(f"{index} lists {file}, which is missing from {self.folder}")
            with self.st.safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    self.shapes[name] = tuple(f.get_slice(name).get_shape())
                    self.file_of[name] = path

    def __contains__(self, name: object) -> bool:
        return name in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __getitem__(self, name: str) -> torch.Tensor:
        with self.st.safe_open(str(self.file_of[name]), framework="pt") as f:
            return f.get_tensor(name)
