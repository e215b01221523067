"""Data: tokenizer, prepare -> MDS shards -> dp loader, built-in corpus, resume, bad shards."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lhdist.train.data import (
    TokenLoader,
    build_dataloader,
    builtin_dataset,
    prepare_dataset,
    validate_dataset,
)
from lhdist.train.tokenizer import ByteTokenizer, load_tokenizer
from tests.multiprocess import run_ranks

SEQ = 15  # samples of 16 tokens


def _write_corpus(root: Path, num_docs: int = 40) -> list[bytes]:
    """Documents of distinct text in nested folders; returns them in the order prepare reads."""
    docs = []
    for i in range(num_docs):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        # Items "iii.jjj" are 7 tokens and at most 2 (newline, EOS) separate two of them, so every
        # 15-token window holds a whole item: no two samples are equal.
        items = " ".join(f"{i:03d}.{j:03d}" for j in range(i % 7 + 2))
        (sub / f"f{i:03d}.txt").write_text(items + "\n")
    for d in sorted(root.iterdir()):
        docs += [f.read_bytes() for f in sorted(d.iterdir())]
    (root / "d0" / "skip.bin").write_bytes(b"\x00binary")  # extension not selected
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden text is skipped")
    return docs


def _expected_samples(docs: list[bytes], sample_len: int) -> np.ndarray:
    stream = np.concatenate(
        [np.append(np.frombuffer(d, np.uint8).astype(np.int64), 256) for d in docs]
    )
    n = len(stream) // sample_len
    return stream[: n * sample_len].reshape(n, sample_len)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("small")
    docs = _write_corpus(root / "text")
    # A tiny shard limit spreads the samples over several shards.
    prepare_dataset(
        [root / "text"], root / "mds", seq_len=SEQ, shard_size_limit=1 << 10, progress=False
    )
    return root / "mds", _expected_samples(docs, SEQ + 1)


@pytest.fixture(scope="module")
def builtin(tmp_path_factory) -> Path:
    return builtin_dataset(256, tmp_path_factory.mktemp("cache"), progress=False)


def _loader(path, **kw) -> TokenLoader:
    args = dict(seq_len=SEQ, micro_batch_size=2, dp_rank=0, dp_degree=1, seed=0)
    return build_dataloader(path, **(args | kw))


def _take(loader, n: int) -> list[torch.Tensor]:
    return [next(loader)[0] for _ in range(n)]


def test_tokenizer_byte_roundtrip():
    tok = load_tokenizer(None)
    text = "Grüße, 世界! \n\ttabs & emoji 🙂"
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.max() < 256 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode(np.append(ids, [tok.eos_id, tok.pad_id])) == text
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (258, 256, 257)
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)


def test_tokenizer_hf_json_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<|endoftext|>": 0, "<unk>": 1, "hello": 2, "world": 3}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tok.json"))
    tok = load_tokenizer(tmp_path / "tok.json")
    assert (tok.vocab_size, tok.eos_id) == (4, 0)
    assert tok.encode(b"hello world hello").tolist() == [2, 3, 2]


def test_prepare_reads_back_exact_tokens(small):
    path, expected = small
    info = validate_dataset(path, seq_len=SEQ, vocab_size=258)
    assert (info.num_samples, info.sample_len, info.vocab_size) == (len(expected), SEQ + 1, 258)
    assert len(info.shards) > 1
    loader = _loader(path, micro_batch_size=1, shuffle=False)
    for i in range(len(expected)):
        x, y = next(loader)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (1, SEQ)
        assert x[0].tolist() == expected[i, :-1].tolist()
        assert y[0].tolist() == expected[i, 1:].tolist()


def test_prepare_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        prepare_dataset([tmp_path / "nope"], tmp_path / "o1", seq_len=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files with extensions"):
        prepare_dataset([tmp_path / "empty"], tmp_path / "o2", seq_len=8)
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(ValueError, match="all 1 input files are empty"):
        prepare_dataset([tmp_path / "empty"], tmp_path / "o3", seq_len=8)
    (tmp_path / "empty" / "a.txt").write_text("short")
    with pytest.raises(ValueError, match=r"6 tokens .* seq_len\+1=9"):
        prepare_dataset([tmp_path / "empty"], tmp_path / "o4", seq_len=8, progress=False)
    assert not (tmp_path / "o4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="o5"):
        prepare_dataset([tmp_path / "empty"], tmp_path / "o5", seq_len=2)


def test_builtin_corpus_yields_byte_batches(builtin, tmp_path):
    info = validate_dataset(builtin)
    assert info.num_samples > 1000 and info.tokenizer == "bytes"
    loader = build_dataloader(
        None,
        seq_len=256,
        micro_batch_size=3,
        dp_rank=1,
        dp_degree=2,
        seed=0,
        cache_dir=builtin.parent,
        vocab_size=320,
    )
    assert loader.info.path == builtin  # prepared once, reused
    for _ in range(3):
        x, y = next(loader)
        assert x.shape == y.shape == (3, 256) and x.dtype == y.dtype == torch.int64
        assert int(x.min()) >= 0 and int(x.max()) < 258
        assert torch.equal(x[:, 1:], y[:, :-1])
    text = ByteTokenizer().decode(x[0])
    assert sum(c.isprintable() or c.isspace() for c in text) > 0.95 * len(text)


def test_dp_ranks_disjoint_cp_ranks_identical(small):
    path, expected = small
    dp, b = 3, 2
    per_epoch = len(expected) // (dp * b)
    seen = []
    for r in range(dp):
        a, twin = _loader(path, dp_rank=r, dp_degree=dp), _loader(path, dp_rank=r, dp_degree=dp)
        batches = _take(a, per_epoch)
        assert all(torch.equal(x, y) for x, y in zip(batches, _take(twin, per_epoch)))
        seen += [tuple(row.tolist()) for x in batches for row in x]
    assert len(seen) == len(set(seen)) == per_epoch * dp * b  # one epoch, no sample twice


def test_seed_sets_order_and_epochs_reshuffle(small):
    path, _ = small
    a, b, c = _loader(path, seed=1), _loader(path, seed=1), _loader(path, seed=2)
    first = _take(a, a.batches_per_epoch)
    assert all(torch.equal(x, y) for x, y in zip(first, _take(b, b.batches_per_epoch)))
    assert not all(torch.equal(x, y) for x, y in zip(first, _take(c, c.batches_per_epoch)))
    second = _take(a, a.batches_per_epoch)
    assert a.epoch == 1 and not all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("consumed", [0, 5, 17], ids=lambda n: f"after{n}")
def test_resume_continues_exactly(small, consumed):
    path, _ = small
    loader = _loader(path, dp_rank=1, dp_degree=2, seed=3)
    _take(loader, consumed)
    state = json.loads(json.dumps(loader.state_dict()))  # as a checkpoint stores it
    expected = _take(loader, 12)  # crosses an epoch boundary
    resumed = _loader(path, dp_rank=1, dp_degree=2, seed=3)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, _take(resumed, 12)))
    with pytest.raises(ValueError, match="seed=3 but this loader has seed=4"):
        _loader(path, seed=4).load_state_dict(state)


def test_loader_rejects_mismatches(small):
    path, expected = small
    with pytest.raises(ValueError, match=r"samples of 16 tokens .*seq_len=31 needs 32"):
        _loader(path, seq_len=31)
    with pytest.raises(ValueError, match="vocab_size=258 .* model.vocab_size=200"):
        _loader(path, vocab_size=200)
    with pytest.raises(ValueError, match=rf"{len(expected)} samples, fewer than one global batch"):
        _loader(path, micro_batch_size=len(expected), dp_degree=2)
    with pytest.raises(ValueError, match=r"dp_rank=2 must be in \[0, dp_degree=2\)"):
        _loader(path, dp_rank=2, dp_degree=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _loader(path.parent / "missing")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():  # (the tokenizer/ folder is not what these tests damage)
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_shard_is_named(small, tmp_path):
    path = _copy(small[0], tmp_path / "ds")
    (path / "shard.00001.mds").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard .*shard\.00001\.mds .* is missing"):
        _loader(path)


def test_corrupt_shard_is_named(small, tmp_path):
    path = _copy(small[0], tmp_path / "ds")
    shard = path / "shard.00002.mds"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"shard .*shard\.00002\.mds has xxh64 .* corrupt"):
        _loader(path)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match=rf"shard .*shard\.00002\.mds has {len(data) - 10} bytes"):
        _loader(path, verify_hashes=False)
    (path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is not a valid MDS index"):
        _loader(path)


def _builtin_worker(rank: int, world_size: int, cache_dir: str, out_dir: str) -> None:
    # Both ranks prepare the built-in corpus at once (one wins the lock), as dp ranks 0 and 1.
    loader = build_dataloader(
        None,
        seq_len=128,
        micro_batch_size=2,
        dp_rank=rank,
        dp_degree=world_size,
        seed=7,
        cache_dir=cache_dir,
        progress=False,
    )
    torch.save(next(loader)[0], os.path.join(out_dir, f"rank{rank}.pt"))
    # A fresh process: streaming's writer and reader loaded without its heavy package imports.
    heavy = [m for m in ("torchvision", "transformers") if m in sys.modules]
    assert not heavy, f"importing streaming's MDS modules pulled in {heavy}"


def test_builtin_corpus_on_spawned_ranks(tmp_path):
    cache = tmp_path / "cache"
    run_ranks(_builtin_worker, 2, tmp_path, str(cache), str(tmp_path), timeout_s=120)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # built once, atomically
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert not torch.equal(got[0], got[1])  # dp ranks read different samples
    for r in range(2):  # a CP peer of rank r (same dp_rank, here in this process) reads the same
        peer = build_dataloader(
            None,
            seq_len=128,
            micro_batch_size=2,
            dp_rank=r,
            dp_degree=2,
            seed=7,
            cache_dir=cache,
            progress=False,
        )
        assert torch.equal(next(peer)[0], got[r])


def _samples(path: Path) -> set[bytes]:
    loader = TokenLoader(
        validate_dataset(path),
        seq_len=SEQ,
        micro_batch_size=1,
        dp_rank=0,
        dp_degree=1,
        seed=0,
        shuffle=False,
    )
    return {next(loader)[0].numpy().tobytes() for _ in range(loader.batches_per_epoch)}


def test_prepare_val_fraction_holds_out_whole_files(tmp_path):
    docs = _write_corpus(tmp_path / "text")
    info = prepare_dataset(
        [tmp_path / "text"], tmp_path / "ds", seq_len=SEQ, progress=False, val_fraction=0.25
    )
    meta = json.loads((info.path / "val" / "lhdist.json").read_text())
    held = [Path(f).name for f in meta["files"]]
    assert len(held) == len(docs) // 4  # 10 of 40 files, spread over the sorted list
    assert held[0] != held[1] and len({Path(f).parent for f in meta["files"]}) == 3
    train_bytes = b"".join(_samples(info.path))
    for name in held:  # no held-out document reaches the training split
        text = next((tmp_path / "text").rglob(name)).read_bytes().strip()
        assert text not in train_bytes
    assert _samples(info.path) and _samples(info.path / "val")
    assert not _samples(info.path) & _samples(info.path / "val")


def test_prepare_val_inputs_and_bad_splits(tmp_path):
    _write_corpus(tmp_path / "text")
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "h.txt").write_text("held out text " * 20)
    info = prepare_dataset(
        [tmp_path / "text"],
        tmp_path / "ds",
        seq_len=SEQ,
        progress=False,
        val_inputs=[tmp_path / "held"],
    )
    assert validate_dataset(info.path / "val", seq_len=SEQ).num_samples == 280 // (SEQ + 1)
    with pytest.raises(ValueError, match="both training and held-out"):
        prepare_dataset(
            [tmp_path / "text"],
            tmp_path / "ds2",
            seq_len=SEQ,
            progress=False,
            val_inputs=[tmp_path / "text" / "d0"],
        )
    with pytest.raises(ValueError, match="at least one file on each side"):
        prepare_dataset(
            [tmp_path / "held"], tmp_path / "ds3", seq_len=SEQ, progress=False, val_fraction=0.5
        )
    with pytest.raises(ValueError, match="must be in"):
        prepare_dataset(
            [tmp_path / "text"], tmp_path / "ds4", seq_len=SEQ, progress=False, val_fraction=1.5
        )


def test_builtin_corpus_held_out_files_are_disjoint_and_listed(builtin):
    from lhdist.train.data import builtin_split, stdlib_corpus_files, val_dataset_path

    files = stdlib_corpus_files()
    train, val = builtin_split(files)
    assert not set(train) & set(val) and len(train) + len(val) == len(files)
    assert val == files[9::10]
    meta = json.loads((builtin / "val" / "lhdist.json").read_text())
    assert meta["files"] == [str(f) for f in val]
    assert val_dataset_path("", "", 256, cache_dir=builtin.parent) == builtin / "val"
    assert val_dataset_path(str(builtin), "", 256) == builtin / "val"
    assert val_dataset_path("elsewhere", "my/val", 256) == Path("my/val")
