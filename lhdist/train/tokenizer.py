"""Tokenizers: the built-in byte-level one, and a Hugging Face `tokenizers` JSON file if given."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np

from lhdist.train.tokenizer_files import eos_token_of, tokenizer_files

EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


class Tokenizer(Protocol):
    """What `prepare_dataset` needs from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, data: bytes) -> np.ndarray: ...

    def decode(self, ids: np.ndarray | list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are the tokens 0..255; EOS=256 ends a document, PAD=257 is never written."""

    name = "bytes"
    eos_id = 256
    pad_id = 257
    vocab_size = 258
    files = None  # its tokenizer.json is written, not copied (tokenizer_files.py)

    def encode(self, data: bytes | str) -> np.ndarray:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Bytes back to text; special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64)
        return arr[arr < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face `tokenizers` JSON file, or a folder holding one (the folder's
    tokenizer_config.json may name the eos_token); imported lazily: `pip install tokenizers`."""

    def __init__(self, path: str | Path, eos_token: str | None = None) -> None:
        self.files = tokenizer_files(path)  # what a dataset made with it keeps
        if Path(path).is_dir():
            eos_token = eos_token or eos_token_of(Path(path))
        path = self.files[0]
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as e:
            raise ImportError(
                f"tokenizer {path} needs the `tokenizers` package: pip install tokenizers"
            ) from e
        self._tok = _HFTokenizer.from_file(str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        self.name = f"hf:{path.name}:{digest}"
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        names = (eos_token,) if eos_token else EOS_NAMES
        ids = [self._tok.token_to_id(n) for n in names]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(
                f"tokenizer {path} has none of the end-of-document tokens {list(names)}; "
                "name one with eos_token="
            )
        self.eos_id = found[0]
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = self.eos_id if pad is None else pad

    def encode(self, data: bytes | str) -> np.ndarray:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def load_tokenizer(spec: str | Path | Tokenizer | None = None) -> Tokenizer:
    """None or "bytes": the byte tokenizer; a `tokenizer.json` or a folder holding one: that."""
    if spec is None or spec == "bytes":
        return ByteTokenizer()
    if isinstance(spec, (str, Path)):
        return HFTokenizer(spec)
    return spec
