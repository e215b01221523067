"""The `lhdist` command: a table of sub-commands, each imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module, function taking argv and returning an exit code, one-line help). `bench` and
# `check` are hooks: they work as soon as their module defines `main(argv) -> int`.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": (
        "lhdist.cli",
        "train_command",
        "train (no arguments: the tiny CPU model with Lighthouse on the built-in corpus)",
    ),
    "data": ("lhdist.cli", "data_command", "prepare or validate a token dataset"),
    "bench": ("lhdist.bench", "main", "benchmarks: attention ops, training steps"),
    "check": ("lhdist.check", "main", "dry-run a large layout: config, shapes, memory"),
    "eval": (
        "lhdist.eval.cli",
        "main",
        "long-context eval of a checkpoint: passkey, loss by position",
    ),
    "export": (
        "lhdist.interop.export",
        "main",
        "a checkpoint as a Hugging Face Llama folder with its tokenizer",
    ),
}


def usage() -> str:
    lines = ["usage: lhdist <command> [args]", "", "commands:"]
    lines += [f"  {name:<7} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`lhdist <command> --help` for a command's arguments."]
    return "\n".join(lines)


def resolve_command(name: str) -> Callable[[list[str]], int]:
    module_name, function, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise SystemExit(
            f"lhdist {name}: not available in this install ({module_name} is missing)"
        ) from None
    return getattr(module, function)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lhdist: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from lhdist.errors import run_command

    return run_command(f"lhdist {name}", lambda argv: resolve_command(name)(argv), rest)


# --- train --------------------------------------------------------------------------------------


def train_command(argv: list[str]) -> int:
    """`lhdist train [--config X.yaml] [--section.key=value ...]`; `python -m lhdist.train` too."""
    from lhdist.config import describe_keys, load_config
    from lhdist.errors import OneLineParser, set_traceback_dir

    parser = OneLineParser(
        prog="lhdist train",
        allow_abbrev=False,
        add_help=False,
        description="Train a Llama model with Lighthouse attention (stage 1) then dense "
        "attention (stage 2).\nPrecedence: defaults < --config YAML < "
        "--section.key=value.",
        epilog="Config keys (defaults are the tiny CPU run):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the sections to change")
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    known, overrides = parser.parse_known_args(argv)
    if known.help:
        parser.print_help()
        return 0
    cfg = load_config(known.config, overrides)  # errors: lhdist.errors.run_command
    set_traceback_dir(cfg.train.run_dir)

    from lhdist.train.loop import train

    train(cfg)
    return 0


# --- data ---------------------------------------------------------------------------------------


def data_command(argv: list[str]) -> int:
    """`lhdist data prepare INPUTS... --out DIR --seq-len N` and `lhdist data validate DIR`."""
    from lhdist.errors import OneLineParser

    parser = OneLineParser(prog="lhdist data", allow_abbrev=False)
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="tokenize text files into MDS shards")
    prep.add_argument("inputs", nargs="+", help="text files or directories")
    prep.add_argument("--out", required=True, help="dataset directory to create")
    prep.add_argument("--seq-len", type=int, required=True, help="train.seq_len it will feed")
    prep.add_argument(
        "--tokenizer",
        default=None,
        help="'bytes' (default), a Hugging Face tokenizer.json, or a folder holding one (a model "
        "folder: its tokenizer_config.json names the EOS token); kept in OUT/tokenizer/",
    )
    prep.add_argument(
        "--ext",
        nargs="*",
        default=None,
        help="file extensions to read from directories (default .txt .md .rst .py)",
    )
    prep.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    held = prep.add_mutually_exclusive_group()
    held.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="hold out this fraction of the input files (spread evenly) as OUT/val",
    )
    held.add_argument(
        "--val", nargs="+", default=(), metavar="INPUT", help="held-out text files or directories"
    )
    check = sub.add_parser("validate", help="check a dataset's index and every shard")
    check.add_argument("path")
    check.add_argument("--seq-len", type=int, default=None)
    args = parser.parse_args(argv)

    from lhdist.train.data import prepare_dataset, validate_dataset

    if args.action == "prepare":  # errors: lhdist.errors.run_command
        extra = {"extensions": tuple(args.ext)} if args.ext else {}
        info = prepare_dataset(
            args.inputs,
            args.out,
            seq_len=args.seq_len,
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            val_fraction=args.val_fraction,
            val_inputs=args.val,
            **extra,
        )
    else:
        info = validate_dataset(args.path, seq_len=args.seq_len)
    print(
        f"{info.path}: {info.num_samples} samples of {info.sample_len} tokens, "
        f"tokenizer {info.tokenizer}, {len(info.shards)} shards"
    )
    held_out = info.path / "val"
    if args.action == "prepare" and held_out.is_dir():
        val = validate_dataset(held_out, seq_len=args.seq_len, verify_hashes=False)
        print(f"{val.path}: {val.num_samples} held-out samples (read through data.val_path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
