"""Token data: text -> MDS shards (`prepare_dataset`), the built-in corpus, checks, the dp loader.

Shards are written with mosaicml-streaming's `MDSWriter` (one column `tokens`: a fixed-length
ndarray of seq_len+1 ids) and read back with streaming's own `LocalDataset` (its MDS shard
readers) under a sampler of our own, not with `StreamingDataset`. `StreamingDataset` takes its
rank view from RANK/WORLD_SIZE/LOCAL_WORLD_SIZE and the default process group (it calls
`dist.barrier()` on the whole world while it is built), coordinates the ranks of a node through
/dev/shm and file locks, and replicates samples over CP only if the CP ranks are consecutive
global ranks (`replication=`). Here a batch is a pure function of (seed, epoch, position, dp_rank,
dp_degree): the CP ranks of a dp group read the same sample whatever the rank layout, ranks can be
simulated in one process, resume is exact, and no shared memory outlives a killed job.

The built-in corpus is the Python standard library's own source (`sysconfig` "stdlib", *.py, tests
and vendored packages left out): real text present on every machine that runs lhdist, adding
nothing to the repository. The same Python build gives the same shards; the cache directory's name
carries a hash of the content, so a different Python never reuses stale shards.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from lhdist.train.data_checks import (
    check_index_schema,
    check_out_apart,
    check_token_ids,
    read_dataset_meta,
    remove_stale_temps,
    temp_owner,
)
from lhdist.train.tokenizer import Tokenizer, load_tokenizer
from lhdist.train.tokenizer_files import TOKENIZER_DIR, save_tokenizer_folder

DEFAULT_EXTENSIONS = (".txt", ".md", ".rst", ".py")
META_FILE = "lhdist.json"
INDEX_FILE = "index.json"
VAL_DIR = "val"  # the held-out split inside a prepared dataset
BUILTIN_VAL_EVERY = 10  # the built-in corpus holds out every 10th file of its sorted list
READ_CHUNK_BYTES = 16 << 20
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "tkinter",
     "lib2to3", "ensurepip", "encodings", "__pycache__"}
)  # fmt: skip


# ---------------------------------------------------------------- mosaicml-streaming, lean import


@cache
def streaming_modules() -> SimpleNamespace:
    """`MDSWriter`, `LocalDataset` and `get_hash` from mosaicml-streaming.

    `import streaming` (and `import streaming.base`) import torchvision and transformers, which a
    CPU machine does not have and does not need: the package modules are registered without
    running their `__init__`, then only the writer, local reader and hashing submodules load.
    A later `import streaming` in the same process gets those bare package modules.
    """
    if "streaming" not in sys.modules:
        if importlib.util.find_spec("streaming") is None:
            raise ImportError("mosaicml-streaming is not installed: run `bash scripts/install.sh`")
        for name in ("streaming", "streaming.base"):
            spec = importlib.util.find_spec(name)
            assert spec is not None, name
            sys.modules[name] = importlib.util.module_from_spec(spec)
    writer = importlib.import_module("streaming.base.format.mds.writer")
    local = importlib.import_module("streaming.base.local")
    hashing = importlib.import_module("streaming.base.hashing")
    return SimpleNamespace(
        MDSWriter=writer.MDSWriter, LocalDataset=local.LocalDataset, get_hash=hashing.get_hash
    )


# ---------------------------------------------------------------- text -> shards


@dataclass(frozen=True)
class DatasetInfo:
    """A validated dataset directory."""

    path: Path
    num_samples: int
    sample_len: int | None
    """Tokens per sample (seq_len + 1); None when the shards do not fix it."""
    vocab_size: int | None
    """From lhdist.json (written by `prepare_dataset`); None for foreign MDS datasets."""
    tokenizer: str | None
    shards: tuple[str, ...]


def find_text_files(
    inputs: Sequence[str | Path], extensions: Sequence[str] = DEFAULT_EXTENSIONS
) -> list[Path]:
    """Files named in `inputs`, plus those under its folders (recursive, sorted, no hidden)."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            files.append(item)
        elif item.is_dir():
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith(".") and Path(name).suffix.lower() in exts:
                        files.append(Path(root) / name)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    return files


def _read_chunks(path: Path) -> Iterator[bytes]:
    # Cut at newlines so a subword tokenizer never sees half a line or half a UTF-8 character.
    carry = b""
    with open(path, "rb") as f:
        while block := f.read(READ_CHUNK_BYTES):
            block = carry + block
            cut = block.rfind(b"\n") + 1 or len(block)
            carry = block[cut:]
            yield block[:cut]
    if carry:
        yield carry


def held_out_files(files: Sequence[Path], fraction: float) -> list[Path]:
    """The files `--val-fraction` sets aside: spread evenly over the sorted list (file i when
    floor((i+1)*f) > floor(i*f)), so a fraction f of the files, never a contiguous block."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction={fraction} must be in (0, 1)")
    return [f for i, f in enumerate(files) if int((i + 1) * fraction) > int(i * fraction)]


def prepare_dataset(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    seq_len: int,
    tokenizer: str | Path | Tokenizer | None = None,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    shard_size_limit: int = 1 << 26,
    overwrite: bool = False,
    progress: bool = True,
    val_fraction: float = 0.0,
    val_inputs: Sequence[str | Path] = (),
) -> DatasetInfo:
    """Tokenize text files into MDS shards of seq_len+1-token samples; returns the dataset.

    Documents are concatenated, each followed by EOS, and cut into consecutive samples of
    seq_len+1 tokens (inputs = sample[:-1], labels = sample[1:]); the tail is dropped. The
    directory appears atomically (written beside it, then renamed).

    A held-out split goes to `<out>/val/` (training never reads it): the files of `val_inputs`,
    or a `val_fraction` of the input files (`held_out_files`); its lhdist.json lists them.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    if val_fraction and val_inputs:
        raise ValueError("give a val fraction or val inputs, not both")
    tok = load_tokenizer(tokenizer)
    out = Path(out_dir)
    check_out_apart(out, [*inputs, *val_inputs])
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"output {out} exists and is not empty; pass --overwrite (overwrite=True) to replace it"
        )
    files = find_text_files(inputs, extensions)
    if not files:
        raise ValueError(
            f"no files with extensions {sorted(extensions)} in inputs {[str(i) for i in inputs]}"
        )
    val_files = find_text_files(val_inputs, extensions) if val_inputs else []
    if val_fraction:
        val_files = held_out_files(files, val_fraction)
        if not val_files or len(val_files) == len(files):
            raise ValueError(
                f"val fraction {val_fraction} of {len(files)} files holds out {len(val_files)}; "
                "need at least one file on each side (or name the held-out files with --val)"
            )
        held = set(val_files)
        files = [f for f in files if f not in held]
    elif val_inputs and not val_files:
        raise ValueError(f"no files with extensions {sorted(extensions)} in val inputs")
    overlap = set(map(Path.absolute, files)) & set(map(Path.absolute, val_files))
    if overlap:
        raise ValueError(f"{len(overlap)} files are both training and held-out: {min(overlap)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{temp_owner()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_split(files, tmp, tok, seq_len, shard_size_limit, progress, "tokenize")
        if val_files:
            _write_split(val_files, tmp / VAL_DIR, tok, seq_len, shard_size_limit, progress,
                         "tokenize held-out", record_files=True)  # fmt: skip
        # The tokenizer travels with the data, then into runs and checkpoints (and exports).
        files = getattr(tok, "files", None)
        if files is not None or tok.name == "bytes":
            save_tokenizer_folder(files, tmp / TOKENIZER_DIR)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return validate_dataset(out, seq_len=seq_len, verify_hashes=False)


def _write_split(
    files: Sequence[Path],
    out: Path,
    tok: Tokenizer,
    seq_len: int,
    shard_size_limit: int,
    progress: bool,
    desc: str,
    record_files: bool = False,
) -> None:
    total_bytes = sum(f.stat().st_size for f in files)
    if total_bytes == 0:
        which = "held-out" if record_files else "input"
        raise ValueError(f"all {len(files)} {which} files are empty: no text to tokenize")

    from tqdm import tqdm

    sample_len = seq_len + 1
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    num_tokens = num_samples = 0
    writer = streaming_modules().MDSWriter(
        out=str(out),
        columns={"tokens": f"ndarray:{np.dtype(dtype).name}:{sample_len}"},
        compression=None,
        hashes=["xxh64"],
        size_limit=shard_size_limit,
    )
    buf = np.empty(0, dtype=np.int64)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not progress)
    with writer, bar:
        for f in files:
            pieces = [buf]
            for chunk in _read_chunks(f):
                pieces.append(tok.encode(chunk))
                bar.update(len(chunk))
            pieces.append(np.array([tok.eos_id], dtype=np.int64))
            buf = np.concatenate(pieces)
            num_tokens += len(buf) - len(pieces[0])
            n = len(buf) // sample_len
            for row in buf[: n * sample_len].reshape(n, sample_len).astype(dtype):
                writer.write({"tokens": row})
            num_samples += n
            buf = buf[n * sample_len :]
    if num_samples == 0:
        raise ValueError(
            f"the {'held-out ' if record_files else ''}corpus has {num_tokens} tokens "
            f"({len(files)} files, one EOS each), fewer than one sample of seq_len+1={sample_len}"
            " tokens: add text or lower seq_len"
        )
    meta = {
        "format": "lhdist-tokens", "version": 1, "seq_len": seq_len, "sample_len": sample_len,
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
        "tokenizer": tok.name, "num_samples": num_samples, "num_tokens": num_tokens,
        "dropped_tokens": int(len(buf)), "num_files": len(files),
    }  # fmt: skip
    if record_files:
        meta["files"] = [str(f) for f in files]
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------- the built-in corpus


def default_cache_dir() -> Path:
    """$LHDIST_CACHE_DIR, else $XDG_CACHE_HOME/lhdist, else ~/.cache/lhdist."""
    if env := os.environ.get("LHDIST_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "lhdist"


def stdlib_corpus_files() -> list[Path]:
    """The standard library's *.py sources, in a fixed order (tests and vendored code left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in STDLIB_SKIP_DIRS and not d.startswith((".", "config-"))
        )
        files += [Path(dirpath) / n for n in sorted(names) if n.endswith(".py")]
    if not files:
        raise FileNotFoundError(
            f"no Python sources under {root} for the built-in corpus: set data.path to a "
            "dataset made by `lhdist data prepare`"
        )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def builtin_split(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(training, held-out) files of the built-in corpus: file i of the sorted list is held out
    when i % 10 == 9 (10%, spread over the whole library). The held-out dataset's lhdist.json
    lists them."""
    train = [f for i, f in enumerate(files) if i % BUILTIN_VAL_EVERY != BUILTIN_VAL_EVERY - 1]
    val = [f for i, f in enumerate(files) if i % BUILTIN_VAL_EVERY == BUILTIN_VAL_EVERY - 1]
    return train, val


def builtin_dataset(
    seq_len: int, cache_dir: str | Path | None = None, progress: bool = True, split: str = "train"
) -> Path:
    """The built-in corpus prepared for seq_len, built once per machine into the cache dir;
    `split="val"`: its held-out part (`builtin_split`), which training never reads.

    Safe to call from every rank at once: a file lock serialises the build, and the directory
    appears by rename only when complete.
    """
    from filelock import FileLock

    if split not in ("train", "val"):
        raise ValueError(f"split={split!r} must be 'train' or 'val'")
    files = stdlib_corpus_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    h = hashlib.sha256(f"lhdist-builtin-v2 bytes seq_len={seq_len} val=1/10\n".encode())
    for f in files:
        data = f.read_bytes()
        h.update(f"{f.relative_to(root).as_posix()} {len(data)}\n".encode())
        h.update(data)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    v = sys.version_info
    out = cache / f"stdlib-py{v.major}.{v.minor}-L{seq_len}-{h.hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{out.name}.lock")):
        if not (out / VAL_DIR / META_FILE).is_file():
            train, val = builtin_split(files)
            prepare_dataset(
                train, out, seq_len=seq_len, overwrite=True, progress=progress, val_inputs=val
            )
    return out / VAL_DIR if split == "val" else out


def val_dataset_path(data_path: str, val_path: str, seq_len: int, **kwargs: Any) -> Path | None:
    """Where the held-out data of a run is: `val_path`, else `<data_path>/val` when it exists,
    else (no data_path) the built-in corpus's held-out files; None when there is none."""
    if val_path:
        return Path(val_path)
    if data_path:
        candidate = Path(data_path) / VAL_DIR
        return candidate if (candidate / INDEX_FILE).is_file() else None
    return builtin_dataset(seq_len, split="val", **kwargs)


# ---------------------------------------------------------------- checks


def validate_dataset(
    path: str | Path | None,
    *,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    verify_hashes: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> DatasetInfo:
    """Check a dataset before training: index.json, every shard's presence, size and hash.

    An empty path means the built-in corpus, prepared on first use for `seq_len`. With seq_len,
    also checks the samples hold seq_len+1 tokens; with vocab_size (the model's embedding rows),
    that the tokenizer's ids fit.
    """
    if not path:
        if seq_len is None:
            raise ValueError("the built-in corpus is prepared per seq_len: pass seq_len")
        path = builtin_dataset(seq_len, cache_dir, progress=progress)
    info = _check_index(Path(path), verify_hashes)
    _check_fit(info, seq_len, vocab_size)
    return info


def _check_fit(info: DatasetInfo, seq_len: int | None, vocab_size: int | None) -> None:
    if seq_len is not None and info.sample_len is not None and info.sample_len != seq_len + 1:
        raise ValueError(
            f"dataset {info.path} holds samples of {info.sample_len} tokens (seq_len="
            f"{info.sample_len - 1}); seq_len={seq_len} needs {seq_len + 1}: prepare it again "
            f"with seq_len={seq_len}"
        )
    if vocab_size is not None and info.vocab_size is not None and info.vocab_size > vocab_size:
        raise ValueError(
            f"dataset {info.path} was tokenized with vocab_size={info.vocab_size} "
            f"({info.tokenizer}) but model.vocab_size={vocab_size}; need model.vocab_size >= "
            f"{info.vocab_size}"
        )


def _check_index(path: Path, verify_hashes: bool) -> DatasetInfo:
    index = path / INDEX_FILE
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset directory {path} does not exist: make one with `lhdist data prepare`"
        )
    if not index.is_file():
        raise FileNotFoundError(f"{index} is missing: {path} is not an MDS dataset")
    try:
        obj = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index} is not a valid MDS index (not JSON: {e})") from None
    check_index_schema(obj, index)
    shards, version = obj["shards"], obj["version"]
    if version != 2 or not shards:
        raise ValueError(f"{index}: version={version} with {len(shards)} shards; need 2 and >= 1")
    get_hash = streaming_modules().get_hash if verify_hashes else None
    encodings = set()
    names = []
    for shard in shards:
        cols = dict(zip(shard.get("column_names", []), shard.get("column_encodings", [])))
        if shard.get("format") != "mds" or "tokens" not in cols:
            raise ValueError(
                f"{index}: shard {shard.get('raw_data', {}).get('basename')} has format "
                f"{shard.get('format')!r} and columns {list(cols)}; need 'mds' with 'tokens'"
            )
        encodings.add(cols["tokens"])
        raw = shard["raw_data"]
        file = path / raw["basename"]
        names.append(raw["basename"])
        if not file.is_file():
            if shard.get("zip_data") and (path / shard["zip_data"]["basename"]).is_file():
                raise ValueError(f"shard {file} is only present compressed; decompress it")
            raise FileNotFoundError(f"shard {file} listed in {index} is missing")
        size = file.stat().st_size
        if size != raw["bytes"]:
            raise ValueError(
                f"shard {file} has {size} bytes but {index} records {raw['bytes']}: "
                "truncated or corrupt; prepare the dataset again"
            )
        for algo, expected in (raw.get("hashes") or {}).items() if get_hash else ():
            actual = get_hash(algo, file.read_bytes())
            if actual != expected:
                raise ValueError(
                    f"shard {file} has {algo} {actual} but {index} records {expected}: corrupt; "
                    "prepare the dataset again"
                )
    sample_len = _static_length(encodings, index)
    meta_file = path / META_FILE
    meta: dict[str, Any] = read_dataset_meta(meta_file) if meta_file.is_file() else {}
    return DatasetInfo(
        path=path,
        num_samples=sum(int(s["samples"]) for s in shards),
        sample_len=sample_len,
        vocab_size=meta.get("vocab_size"),
        tokenizer=meta.get("tokenizer"),
        shards=tuple(names),
    )


def _static_length(encodings: set[str], index: Path) -> int | None:
    # "ndarray:uint16:2049" fixes the sample length; "ndarray" or "ndarray:int32" does not.
    if len(encodings) != 1:
        raise ValueError(f"{index}: shards disagree on the tokens column: {sorted(encodings)}")
    parts = next(iter(encodings)).split(":")
    if parts[0] != "ndarray":
        raise ValueError(f"{index}: tokens column is {parts[0]!r}; need an ndarray of token ids")
    if len(parts) == 3 and "," not in parts[2]:
        return int(parts[2])
    return None


# ---------------------------------------------------------------- the loader


class TokenLoader:
    """Endless (input_ids, labels) int64 [B, N] batches on CPU for one data-parallel rank.

    Epoch e visits the samples in the order permutation(seed, e). Global step t takes positions
    [t*G, (t+1)*G) of that order, G = dp_degree * micro_batch_size, and dp rank r reads its B of
    them; a tail shorter than G is skipped. Every CP rank of a dp group gets the same batch.
    """

    def __init__(
        self,
        info: DatasetInfo,
        *,
        seq_len: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_degree: int,
        seed: int,
        shuffle: bool = True,
        vocab_size: int | None = None,
    ) -> None:
        if not 0 <= dp_rank < dp_degree or micro_batch_size < 1:
            raise ValueError(
                f"dp_rank={dp_rank} must be in [0, dp_degree={dp_degree}) and "
                f"micro_batch_size={micro_batch_size} >= 1"
            )
        _check_fit(info, seq_len, None)
        self.global_batch_size = dp_degree * micro_batch_size
        if info.num_samples < self.global_batch_size:
            raise ValueError(
                f"dataset {info.path} has {info.num_samples} samples, fewer than one global batch "
                f"of dp_degree*micro_batch_size={dp_degree}*{micro_batch_size}="
                f"{self.global_batch_size}: use more text or a smaller seq_len/batch"
            )
        self.info = info
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_degree = dp_degree
        self.seed = seed
        self.shuffle = shuffle
        self.vocab_size = info.vocab_size
        # Ids must index the embedding; unverified (or foreign) shards may hold any value.
        self.max_token_id = (vocab_size or info.vocab_size or 0) - 1
        self.epoch = 0
        self.offset = 0
        """Samples of this epoch's order consumed by all dp ranks together."""
        self._dataset = streaming_modules().LocalDataset(str(info.path))
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @property
    def batches_per_epoch(self) -> int:
        return self.info.num_samples // self.global_batch_size

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = self.info.num_samples
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = self.epoch
        return self._order

    def _read(self, sample_id: int) -> np.ndarray:
        tokens = self._dataset.get_item(sample_id)["tokens"]
        if tokens.shape != (self.seq_len + 1,):
            raise ValueError(
                f"sample {sample_id} of {self.info.path} has shape {tuple(tokens.shape)}; "
                f"seq_len={self.seq_len} needs ({self.seq_len + 1},)"
            )
        if self.max_token_id >= 0:
            check_token_ids(tokens, self.max_token_id, sample_id, self.info.path)
        return tokens

    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.offset + self.global_batch_size > self.info.num_samples:
            self.epoch += 1
            self.offset = 0
        start = self.offset + self.dp_rank * self.micro_batch_size
        ids = self._epoch_order()[start : start + self.micro_batch_size]
        batch = torch.from_numpy(np.stack([self._read(int(i)) for i in ids]).astype(np.int64))
        self.offset += self.global_batch_size
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state_dict(self) -> dict[str, int | bool]:
        """Position after the last batch returned; the same on every rank."""
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.info.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches that produced `state` (any dp_degree may resume it)."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_samples"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"data state has {key}={state[key]} but this loader has {key}={mine[key]}: "
                    "resume with the same dataset and data.seed"
                )
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])


def build_dataloader(
    path: str | Path | DatasetInfo | None,
    *,
    seq_len: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_degree: int,
    seed: int,
    shuffle: bool = True,
    vocab_size: int | None = None,
    cache_dir: str | Path | None = None,
    verify_hashes: bool = True,
    progress: bool = True,
) -> TokenLoader:
    """The loader of one dp rank (empty path: the built-in corpus).

    A path is checked by `validate_dataset` first; a `DatasetInfo` it returned is not checked
    again beyond seq_len and vocab_size.
    """
    if isinstance(path, DatasetInfo):
        info = path
        _check_fit(info, seq_len, vocab_size)
    else:
        info = validate_dataset(
            path,
            seq_len=seq_len,
            vocab_size=vocab_size,
            verify_hashes=verify_hashes,
            cache_dir=cache_dir,
            progress=progress,
        )
    return TokenLoader(
        info,
        seq_len=seq_len,
        micro_batch_size=micro_batch_size,
        dp_rank=dp_rank,
        dp_degree=dp_degree,
        seed=seed,
        shuffle=shuffle,
        vocab_size=vocab_size,
    )
