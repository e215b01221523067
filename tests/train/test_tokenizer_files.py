"""Tokenizer folders: the byte tokenizer's tokenizer.json maps exactly lhdist's ids, `data
prepare --tokenizer` takes a folder as well as a file, and the dataset keeps the tokenizer."""

import json

import numpy as np
import pytest

from lhdist.train.data import prepare_dataset
from lhdist.train.tokenizer import ByteTokenizer, load_tokenizer
from lhdist.train.tokenizer_files import (
    TOKENIZER_DIR,
    byte_to_unicode,
    keep_run_tokenizer,
    write_byte_tokenizer,
)


def test_byte_alphabet_is_a_bijection_onto_printable_characters():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"  # the space as Hugging Face writes it
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_byte_tokenizer_json_encodes_like_the_byte_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    write_byte_tokenizer(tmp_path)
    hf, byte = load_tokenizer(tmp_path), ByteTokenizer()
    assert (hf.vocab_size, hf.eos_id, hf.pad_id) == (258, 256, 257)
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = rng.integers(0, 256, 200, dtype=np.uint8).tobytes().decode("utf-8", "replace")
        text += " ∑ 🙂 Grüße\r\n\t"
        assert hf.encode(text).tolist() == byte.encode(text).tolist()
        assert hf.decode(byte.encode(text)) == text


def _corpus(root):
    root.mkdir()
    for i in range(6):
        (root / f"{i}.txt").write_text(f"document {i}: " + "lorem ipsum dolor ∑ " * 20)
    return root


def test_prepare_with_a_tokenizer_folder_keeps_it_and_gives_its_ids(tmp_path):
    """The byte tokenizer's folder as a Hugging Face tokenizer: same ids as the built-in one."""
    pytest.importorskip("tokenizers")
    from lhdist.train.data import streaming_modules

    corpus, folder = _corpus(tmp_path / "text"), tmp_path / "tok"
    write_byte_tokenizer(folder)
    hf_info = prepare_dataset([corpus], tmp_path / "hf", seq_len=31, tokenizer=folder,
                              progress=False)  # fmt: skip
    byte_info = prepare_dataset([corpus], tmp_path / "bytes", seq_len=31, progress=False)
    assert hf_info.tokenizer.startswith("hf:tokenizer.json:") and byte_info.tokenizer == "bytes"
    kept = tmp_path / "hf" / TOKENIZER_DIR
    assert sorted(p.name for p in kept.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert (kept / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert (tmp_path / "bytes" / TOKENIZER_DIR / "tokenizer.json").is_file()
    reader = streaming_modules().LocalDataset
    a, b = reader(str(tmp_path / "hf")), reader(str(tmp_path / "bytes"))
    assert hf_info.num_samples == byte_info.num_samples > 0
    for i in range(hf_info.num_samples):
        assert a.get_item(i)["tokens"].tolist() == b.get_item(i)["tokens"].tolist()


def test_folder_eos_token_comes_from_its_tokenizer_config(tmp_path):
    pytest.importorskip("tokenizers")
    write_byte_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<pad>"}))
    assert load_tokenizer(tmp_path).eos_id == 257
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_run_keeps_the_dataset_tokenizer_or_the_byte_one(tmp_path):
    class Info:
        def __init__(self, path, tokenizer):
            self.path, self.tokenizer = path, tokenizer

    (tmp_path / "old_bytes").mkdir()
    assert keep_run_tokenizer(Info(tmp_path / "old_bytes", "bytes"), tmp_path / "r1") == "bytes"
    assert (tmp_path / "r1" / TOKENIZER_DIR / "tokenizer.json").is_file()
    assert keep_run_tokenizer(Info(tmp_path / "old_bytes", "hf:x.json:1"), tmp_path / "r1") is None
    assert not (tmp_path / "r1" / TOKENIZER_DIR).exists()  # a stale copy never stays
