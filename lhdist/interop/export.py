"""`lhdist export CHECKPOINT_DIR --out HF_DIR`: a training checkpoint (torch engine, or DeepSpeed
at any ZeRO stage) as a Hugging Face LlamaForCausalLM folder with its tokenizer. The folder is
written beside the target and renamed into place, so a failed export leaves nothing behind."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
GENERATION_CONFIG = "generation_config.json"
PROVENANCE = "lhdist_export.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lhdist export",
        allow_abbrev=False,
        description="Write a checkpoint as a Hugging Face Llama folder (config.json, "
        "safetensors, generation_config.json, tokenizer) that transformers and vLLM load.",
    )
    parser.add_argument("checkpoint", help="a checkpoint directory (.../checkpoints/step_N)")
    parser.add_argument("--out", required=True, help="the folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--allow-sparse", action="store_true",
        help="export a stage-1 (Lighthouse) checkpoint too; transformers runs it dense",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights' dtype")
    parser.add_argument(
        "--max-shard-gib", type=float, default=5.0,
        help="split model.safetensors into shards of at most this size (with an index)",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer", help="a tokenizer.json or folder, for a checkpoint that holds none (made "
        "before checkpoints kept the tokenizer); default: the checkpoint's own",
    )  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = export_checkpoint(
            args.checkpoint, args.out, overwrite=args.overwrite, allow_sparse=args.allow_sparse,
            dtype=args.dtype, max_shard_bytes=int(args.max_shard_gib * (1 << 30)),
            tokenizer=args.tokenizer,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"lhdist export: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(
        f"{out}: Hugging Face LlamaForCausalLM ({', '.join(sorted(p.name for p in out.iterdir()))})"
    )
    return 0


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    allow_sparse: bool = False,
    dtype: str = "fp32",
    max_shard_bytes: int = 5 << 30,
    tokenizer: str | Path | None = None,
) -> Path:
    """Export `checkpoint` to the folder `out`; returns it. Every check runs before a file is
    written: the target, the stage, the tokenizer and the weights' names and shapes."""
    import torch

    from lhdist.eval.checkpoint_model import (
        check_state_matches,
        read_checkpoint_config,
        read_model_state,
    )
    from lhdist.interop.hf_config import hf_config_of
    from lhdist.interop.llama_keys import to_hf_state
    from lhdist.interop.safetensors_io import safetensors_module, write_safetensors
    from lhdist.model import build_model

    checkpoint, out = Path(checkpoint), Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {list(DTYPES)}")
    if max_shard_bytes < 1:
        raise ValueError(f"max shard size {max_shard_bytes} bytes must be > 0")
    if out.exists() and not overwrite:
        raise FileExistsError(f"export target {out} exists; pass --overwrite to replace it")
    cfg, meta = read_checkpoint_config(checkpoint)
    if meta.get("stage") == 1 and cfg.sparse_layers() and not allow_sparse:
        raise ValueError(
            f"checkpoint {checkpoint} is from stage 1 (step {meta.get('step')}): its sparse layers "
            f"{cfg.sparse_layers()} were trained with Lighthouse, and transformers would run them "
            "dense; export a stage-2 checkpoint or pass --allow-sparse"
        )
    tok = resolve_tokenizer(checkpoint, cfg, tokenizer)
    if tok["vocab_size"] > cfg.model.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok['vocab_size']} ids but model.vocab_size="
            f"{cfg.model.vocab_size}: its ids would index past the embedding"
        )
    safetensors_module()  # fail before reading gigabytes of weights
    state = read_model_state(checkpoint, meta)
    check_state_matches(build_model(cfg.model, device="meta"), state, checkpoint)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    hf_state = {k: v.to(torch_dtype) for k, v in to_hf_state(state, cfg.model).items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_safetensors(hf_state, tmp, max_shard_bytes)
        ids = {"bos_id": tok["bos_id"], "eos_id": tok["eos_id"], "pad_id": tok["pad_id"]}
        write_json(tmp / "config.json", hf_config_of(cfg, DTYPES[dtype], **ids))
        write_json(tmp / GENERATION_CONFIG, {
            "bos_token_id": ids["bos_id"], "eos_token_id": ids["eos_id"],
            "pad_token_id": ids["pad_id"],
        })  # fmt: skip
        write_tokenizer(tok, tmp, cfg.train.seq_len)
        write_json(tmp / PROVENANCE, {
            "checkpoint": str(checkpoint.resolve()), "step": meta.get("step"),
            "stage": meta.get("stage"), "tokenizer": tok["source"], "config": cfg.to_dict(),
        })  # fmt: skip
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def resolve_tokenizer(checkpoint: Path, cfg: Any, given: str | Path | None) -> dict[str, Any]:
    """The tokenizer to ship: its files (None: the byte tokenizer's), ids and where it came from.

    Order: --tokenizer; the checkpoint's tokenizer/ folder; for a checkpoint without one, the
    byte tokenizer when the run's data used it (the built-in corpus, or a dataset that says so)."""
    from lhdist.train.data import META_FILE
    from lhdist.train.tokenizer import ByteTokenizer, HFTokenizer
    from lhdist.train.tokenizer_files import TOKENIZER_DIR, TOKENIZER_JSON, tokenizer_files

    source: Path | None = Path(given) if given else None
    if source is None and (checkpoint / TOKENIZER_DIR / TOKENIZER_JSON).is_file():
        source = checkpoint / TOKENIZER_DIR
    if source is None:
        data = cfg.data.path
        meta_file = Path(data) / META_FILE if data else None
        recorded = (
            json.loads(meta_file.read_text()).get("tokenizer")
            if meta_file is not None and meta_file.is_file()
            else None
        )
        if data and recorded != "bytes":
            raise ValueError(
                f"checkpoint {checkpoint} holds no {TOKENIZER_DIR}/ and its data {data} records "
                f"tokenizer {recorded!r}: pass --tokenizer with that tokenizer.json or folder"
            )
        byte = ByteTokenizer()
        return {"files": None, "source": "bytes", "vocab_size": byte.vocab_size,
                "eos_id": byte.eos_id, "pad_id": byte.pad_id, "bos_id": None}  # fmt: skip
    # A folder kept from the byte tokenizer is a real tokenizer.json too: read it like any other.
    files = tokenizer_files(source)
    try:
        hf = HFTokenizer(source)
    except ImportError as e:
        raise ValueError(str(e)) from None
    bos = bos_token_of(files, hf)
    return {"files": files, "source": str(source), "vocab_size": hf.vocab_size,
            "eos_id": hf.eos_id, "pad_id": hf.pad_id if hf.pad_id != hf.eos_id else None,
            "bos_id": bos}  # fmt: skip


def bos_token_of(files: list[Path], hf: Any) -> int | None:
    """The BOS id a tokenizer_config.json names (None when it names none)."""
    from lhdist.train.tokenizer_files import TOKENIZER_CONFIG

    for file in files[1:]:
        if file.name == TOKENIZER_CONFIG:
            bos = json.loads(file.read_text()).get("bos_token")
            bos = bos.get("content") if isinstance(bos, dict) else bos
            return hf.token_to_id(bos) if bos else None
    return None


def write_tokenizer(tok: dict[str, Any], folder: Path, seq_len: int) -> None:
    """tokenizer.json (+ its folder's other files) and a tokenizer_config.json for AutoTokenizer."""
    from lhdist.train.tokenizer_files import (
        TOKENIZER_CONFIG,
        byte_tokenizer_config,
        save_tokenizer_folder,
    )

    save_tokenizer_folder(tok["files"], folder)
    config_file = folder / TOKENIZER_CONFIG
    if config_file.is_file():
        return  # the tokenizer's own, verbatim
    if tok["files"] is None:
        config = byte_tokenizer_config()
    else:  # a bare tokenizer.json: name its EOS (and PAD) tokens
        tokens = json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])
        by_id = {t["id"]: t["content"] for t in tokens}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": by_id.get(tok["eos_id"]),
            "pad_token": by_id.get(tok["pad_id"]),
            "clean_up_tokenization_spaces": False,
        }
    write_json(config_file, {**config, "model_max_length": seq_len})
