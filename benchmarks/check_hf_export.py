"""Hugging Face export check: train a short run, export its last (dense-stage) checkpoint, load it
in transformers and compare the last-token logits of a held-out sequence with lhdist's.

    python benchmarks/check_hf_export.py                       # H200: 98K tokens, bf16 (~minutes)
    python benchmarks/check_hf_export.py --seq-len 512 --steps 3 --layers 2 --dim 128 \
        --device cpu --out-dir /tmp/hf_check                   # the same path on CPU, seconds

Two comparisons, each of the last-token logits (max abs difference, their scale, argmax): bf16
(lhdist under bf16 autocast with fp32 weights, as it trains; transformers loaded in bf16 from a
bf16 export) over the full --seq-len, and fp32 (both in fp32) over the last --fp32-len tokens.
Writes benchmarks/results/<date>_hf_export_<device>.json (or into --out-dir).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_results  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=98304)
    p.add_argument("--steps", type=int, default=4, help="half Lighthouse, half dense")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--rope-scaling", choices=["none", "llama3", "yarn"], default="llama3")
    p.add_argument("--engine", choices=["deepspeed", "torch"], default="deepspeed")
    p.add_argument("--zero-stage", type=int, default=1)
    p.add_argument("--fp32-len", type=int, default=8192, help="tokens of the fp32 comparison")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--work-dir", default="runs/check_hf_export", help="run and export (replaced)")
    p.add_argument("--out-dir", default=None, help="where the JSON goes (default: results/)")
    return p.parse_args(argv)


def rope_flags(kind: str, seq_len: int) -> list[str]:
    """A scaling whose original context is an eighth of the run's, so it changes the angles."""
    original = max(16, seq_len // 8)
    if kind == "llama3":
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0,
                   "original_max_position_embeddings": original}  # fmt: skip
    elif kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": original}
    else:
        return []
    return [f"--model.rope_scaling={json.dumps(scaling)}"]


def train_run(args: argparse.Namespace, run_dir: Path) -> Path:
    from lhdist.config import load_config
    from lhdist.train.loop import train

    n = args.seq_len
    flags = [
        f"--model.dim={args.dim}", f"--model.num_layers={args.layers}",
        f"--model.num_heads={args.heads}", f"--model.num_kv_heads={args.kv_heads}",
        f"--model.ffn_dim={args.dim * 3}", "--model.tie_embeddings=false",
        f"--train.seq_len={n}", f"--train.steps={args.steps}",
        f"--train.stage1_steps={args.steps // 2}", f"--train.engine={args.engine}",
        f"--train.zero_stage={args.zero_stage}", f"--train.device={args.device}",
        f"--train.run_dir={run_dir}", "--train.tensorboard=false",
        "--train.activation_checkpointing=true", "--optim.warmup_steps=1",
        "--lighthouse.num_levels=2" if n < 4096 else "--lighthouse.num_levels=3",
        "--lighthouse.pooling_factor=2" if n < 4096 else "--lighthouse.pooling_factor=4",
        f"--lighthouse.topk={128 if n < 4096 else 1536}",
        "--eval.final=false", "--eval.batches=0", f"--checkpoint.every={args.steps}",
        *rope_flags(args.rope_scaling, n),
    ]  # fmt: skip
    train(load_config(None, flags, world_size=1))
    return run_dir / "checkpoints" / f"step_{args.steps:08d}"


def compare(lhdist_logits: torch.Tensor, hf_logits: torch.Tensor) -> dict:
    a, b = lhdist_logits.float(), hf_logits.float()
    return {
        "max_abs_diff": float((a - b).abs().max()),
        "logit_max_abs": float(a.abs().max()),
        "argmax_equal": bool(a.argmax() == b.argmax()),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import transformers

    from lhdist.eval.checkpoint_model import load_checkpoint_model
    from lhdist.interop.export import export_checkpoint
    from lhdist.train.data import build_dataloader, val_dataset_path

    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )  # fmt: skip
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    ckpt = train_run(args, work / "run")
    hf_dir = export_checkpoint(ckpt, work / "hf_bf16", dtype="bf16")
    hf32_dir = export_checkpoint(ckpt, work / "hf_fp32", dtype="fp32")

    held_out = val_dataset_path("", "", args.seq_len)  # the built-in corpus's held-out split
    loader = build_dataloader(held_out, seq_len=args.seq_len, micro_batch_size=1, dp_rank=0,
                              dp_degree=1, seed=0, shuffle=False)  # fmt: skip
    ids = next(loader)[0].to(device)  # a held-out sequence, [1, seq_len]
    model, _ = load_checkpoint_model(ckpt, device)
    positions = torch.arange(args.seq_len, device=device)
    report: dict = {"checkpoint": str(ckpt), "seq_len": args.seq_len, "steps": args.steps,
                    "rope_scaling": args.rope_scaling, "engine": args.engine,
                    "transformers": transformers.__version__}  # fmt: skip
    with torch.no_grad():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            ours = model.output(model.hidden_states(ids, positions)[:, -1:])
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16)
        theirs = hf.to(device).eval()(ids, logits_to_keep=1).logits
        report["bf16"] = compare(ours[0, -1], theirs[0, -1])
        del hf
        short = ids[:, -args.fp32_len :]
        ours32 = model(short, torch.arange(short.shape[1], device=device))[0, -1]
        hf32 = transformers.AutoModelForCausalLM.from_pretrained(hf32_dir, dtype=torch.float32)
        theirs32 = hf32.to(device).eval()(short, logits_to_keep=1).logits[0, -1]
        report["fp32"] = {**compare(ours32, theirs32), "tokens": short.shape[1]}
    report["environment"] = environment()
    name = f"hf_export_{'h200' if device.type == 'cuda' else 'cpu'}"
    path = write_results(name, report, Path(args.out_dir) if args.out_dir else None)
    print(json.dumps({k: report[k] for k in ("seq_len", "bf16", "fp32")}, indent=1))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
