"""The tokenizer a run keeps: a folder of Hugging Face tokenizer files that travels from the
dataset (`lhdist data prepare`) to the run directory and into every checkpoint, so an export can
ship it. The built-in byte tokenizer gets a `tokenizer.json` that maps exactly its ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TOKENIZER_DIR = "tokenizer"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# What a tokenizer folder may hold besides tokenizer.json, kept when present.
OPTIONAL_FILES = (TOKENIZER_CONFIG, "special_tokens_map.json", "chat_template.jinja")
BYTE_EOS, BYTE_PAD = "<|endoftext|>", "<pad>"


def tokenizer_files(spec: str | Path) -> list[Path]:
    """The files of a tokenizer given as a `tokenizer.json` or a folder holding one."""
    path = Path(spec)
    if path.is_dir():
        main = path / TOKENIZER_JSON
        if not main.is_file():
            raise FileNotFoundError(f"tokenizer folder {path} has no {TOKENIZER_JSON}")
        return [main, *(path / n for n in OPTIONAL_FILES if (path / n).is_file())]
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    return [path]


def eos_token_of(folder: Path) -> str | None:
    """The eos_token a folder's tokenizer_config.json names, if any."""
    config = folder / TOKENIZER_CONFIG
    if not config.is_file():
        return None
    eos = json.loads(config.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def byte_to_unicode() -> dict[int, str]:
    """The byte-level alphabet of Hugging Face's ByteLevel pre-tokenizer (GPT-2's): printable
    Latin-1 bytes stand for themselves, the other bytes for code points from 256 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer_json() -> dict[str, Any]:
    """tokenizer.json of lhdist's ByteTokenizer: byte b is id b, EOS 256, PAD 257; no merges."""

    def special(token_id: int, content: str) -> dict[str, Any]:
        return {"id": token_id, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}  # fmt: skip

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(256, BYTE_EOS), special(257, BYTE_PAD)],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "merges": [],
            "vocab": {char: b for b, char in byte_to_unicode().items()},
        },  # fmt: skip
    }


def byte_tokenizer_config() -> dict[str, Any]:
    # split_special_tokens: the text "<pad>" is five bytes to lhdist, never the PAD id.
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": BYTE_EOS,
        "pad_token": BYTE_PAD,
        "unk_token": None,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }


def write_byte_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TOKENIZER_JSON).write_text(json.dumps(byte_tokenizer_json(), ensure_ascii=False))
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(byte_tokenizer_config(), indent=2) + "\n")


def save_tokenizer_folder(files: list[Path] | None, folder: Path) -> None:
    """Write a tokenizer folder: copies of `files`, or (None) the byte tokenizer's."""
    if files is None:
        write_byte_tokenizer(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(files):  # the first is the tokenizer.json, whatever its name
        shutil.copyfile(file, folder / (TOKENIZER_JSON if i == 0 else file.name))


def keep_run_tokenizer(dataset: Any, run_dir: Path) -> str | None:
    """Put the dataset's tokenizer folder into `run_dir/tokenizer` (replacing one there); a
    byte-level dataset made before datasets kept one gets the byte tokenizer's. Returns where it
    came from, or None when the dataset does not say (a foreign MDS, or an older dataset made
    with a tokenizer.json)."""
    source, dest = Path(dataset.path) / TOKENIZER_DIR, run_dir / TOKENIZER_DIR
    shutil.rmtree(dest, ignore_errors=True)
    if (source / TOKENIZER_JSON).is_file():
        shutil.copytree(source, dest)
        return str(source)
    if dataset.tokenizer == "bytes":
        write_byte_tokenizer(dest)
        return "bytes"
    return None


def copy_tokenizer_folder(run_dir: Path, dest: Path) -> None:
    """The run's tokenizer folder into a checkpoint being written at `dest`, if it has one."""
    source = run_dir / TOKENIZER_DIR
    if (source / TOKENIZER_JSON).is_file():
        shutil.copytree(source, dest / TOKENIZER_DIR)
