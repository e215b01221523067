"""`lhdist eval CHECKPOINT_DIR --out FILE.json`: passkey retrieval and loss by position of a
checkpoint, dense and with Lighthouse. Every input is checked before the weights are read."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhdist.config import DEVICES, Config, validate_eval


@dataclass
class Plan:
    """What the checks found: the run's config with the flags applied, and its inputs."""

    checkpoint: Path
    cfg: Config
    meta: dict[str, Any]
    model: Any
    val_info: Any
    samples: int
    device: Any


def build_parser() -> argparse.ArgumentParser:
    from lhdist.eval.longcontext import PASSKEY_SEED

    parser = argparse.ArgumentParser(
        prog="lhdist eval",
        allow_abbrev=False,
        description="Long-context eval of a checkpoint: passkey retrieval over lengths and "
        "depths, and held-out loss by position bucket, with dense attention and (when the run "
        "used it) Lighthouse. Settings default to the checkpoint config's eval section.",
    )
    parser.add_argument("checkpoint", help="a checkpoint directory (.../checkpoints/step_N)")
    parser.add_argument("--out", required=True, help="JSON report to write (plots go beside it)")
    parser.add_argument("--lengths", type=int, nargs="+", help="passkey prompt lengths")
    parser.add_argument("--depths", type=float, nargs="+", help="needle depths in [0, 1]")
    parser.add_argument("--trials", type=int, help="random passkeys per (length, depth)")
    parser.add_argument("--digits", type=int, help="digits of each passkey")
    parser.add_argument("--buckets", type=int, help="position buckets of the held-out loss")
    parser.add_argument(
        "--samples", type=int, help="held-out sequences for the loss by position (default: the "
        "training eval's eval.batches x micro_batch_size, or 4)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=PASSKEY_SEED, help="passkey and filler seed")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--val", help="held-out dataset (default: the run's data.val_path, <data.path>/val, or "
        "the built-in corpus's held-out split)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def apply_flags(cfg: Config, args: argparse.Namespace) -> None:
    """The flags given replace the checkpoint config's eval settings."""
    e = cfg.eval
    for flag, key in (("lengths", "passkey_lengths"), ("depths", "passkey_depths"),
                      ("trials", "passkey_trials"), ("digits", "passkey_digits"),
                      ("buckets", "position_buckets")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            setattr(e, key, value)


def pick_device(want: str):
    import torch

    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_val(cfg: Config, explicit: str | None, progress: bool):
    from lhdist.train.data import val_dataset_path, validate_dataset

    d, seq_len = cfg.data, cfg.train.seq_len
    path = Path(explicit) if explicit else val_dataset_path(d.path, d.val_path, seq_len,
                                                            progress=progress)  # fmt: skip
    if path is None:
        raise ValueError(
            f"the run's data.path={d.path} has no held-out split ({d.path}/val) and data.val_path "
            "is empty: pass --val DATASET"
        )
    return validate_dataset(
        path, seq_len=seq_len, vocab_size=cfg.model.vocab_size, verify_hashes=False,
        progress=progress,
    )  # fmt: skip


def plan(args: argparse.Namespace) -> Plan:
    """Every check, cheapest first, and the model: checkpoint and settings, device, weights
    (shapes checked before they are allocated), held-out set."""
    from lhdist.eval.checkpoint_model import load_checkpoint_model, read_checkpoint_config
    from lhdist.eval.longcontext import check_passkey_lengths, default_position_samples

    checkpoint = Path(args.checkpoint)
    cfg, meta = read_checkpoint_config(checkpoint)
    apply_flags(cfg, args)
    validate_eval(cfg)  # lengths within seq_len and the Lighthouse rules, depths, counts
    if cfg.eval.passkey_lengths:
        check_passkey_lengths(cfg.eval.passkey_lengths, cfg.eval.passkey_digits)
    device = pick_device(args.device)
    model, _ = load_checkpoint_model(checkpoint, device)
    val_info = resolve_val(cfg, args.val, progress=not args.quiet)
    samples = args.samples if args.samples is not None else default_position_samples(cfg)
    if samples < 1:
        raise ValueError(f"--samples={samples} must be >= 1")
    if val_info.num_samples < samples:
        raise ValueError(
            f"held-out set {val_info.path} has {val_info.num_samples} samples of seq_len="
            f"{cfg.train.seq_len}, fewer than the {samples} the loss by position reads: pass "
            f"--samples {val_info.num_samples} or a larger --val"
        )
    return Plan(checkpoint, cfg, meta, model, val_info, samples, device)


def summary_lines(report: dict[str, Any]) -> list[str]:
    accuracy: dict[str, list[float]] = {}
    for row in report["passkey"]:
        accuracy.setdefault(row["attention"], []).append(row["accuracy"])
    lines = [
        f"passkey accuracy ({mode}): {sum(a) / len(a):.3f} over {len(a)} (length, depth) cells"
        for mode, a in accuracy.items()
    ]
    if "passkey_skipped" in report:
        lines.append(f"passkey skipped: {report['passkey_skipped']}")
    buckets: dict[str, list[Any]] = {}
    for row in report["position_loss"]:
        buckets.setdefault(row["attention"], []).append(row["loss"])
    lines += [
        f"loss by position ({mode}): " + " ".join("-" if x is None else f"{x:.3f}" for x in losses)
        for mode, losses in buckets.items()
    ]
    return lines


def fail(error: BaseException) -> int:
    print(f"lhdist eval: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        p = plan(args)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    from lhdist.eval.longcontext import passkey_skip_reason, run_long_context_eval

    if skip := passkey_skip_reason(p.val_info.tokenizer):
        print(f"lhdist eval: note: {skip}", file=sys.stderr)
    report = run_long_context_eval(
        p.model, p.cfg, val_info=p.val_info, device=p.device, out_path=args.out,
        progress=not args.quiet, position_samples=p.samples, seed=args.seed,
        checkpoint=p.checkpoint, step=p.meta.get("step"),
    )  # fmt: skip
    plotted = importlib.util.find_spec("matplotlib") is not None  # write_heatmap's condition
    png = Path(args.out).with_suffix(".png")
    print(f"wrote {args.out}" + (f" and {png}" if plotted else ""))
    for line in summary_lines(report):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
