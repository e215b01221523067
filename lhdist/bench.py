"""`lhdist bench NAME [args]`: a thin front to the scripts in benchmarks/ (run in this process)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

# name -> (script under benchmarks/, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "attention": ("bench_attention.py", "one Lighthouse layer vs dense SDPA on this device"),
    "cp": ("bench_cp.py", "one CP layer (tile, global, dense ring) over the launched ranks"),
    "1m": ("bench_1m_job.py", "the 1M-token job: layers and a training step at the job layout"),
    "op": ("profile_op.py", "profile the Lighthouse op's parts"),
    "quality": ("bench_quality.py", "dense vs Lighthouse + resume: seeds, held-out loss, paired"),
    "deepspeed": ("bench_deepspeed.py", "torch vs DeepSpeed ZeRO 0-3: dtype, loss, speed, memory"),
    "train": ("bench_train.py", "training steps per stage: tokens/s, MFU, memory, time split"),
}


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks"


def usage() -> str:
    lines = ["usage: lhdist bench NAME [args]   (NAME --help for its arguments)", "", "names:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in BENCHMARKS.items()]
    lines += [
        "",
        "One process here; for several ranks launch the script itself through torchrun, e.g.",
        "  SCRIPT=benchmarks/bench_1m_job.py bash launch/torchrun.sh",
        "  SCRIPT=benchmarks/bench_1m_job.py sbatch --nodes=4 launch/slurm.sbatch",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        print(f"lhdist bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    script = benchmarks_dir() / BENCHMARKS[name][0]
    if not script.exists():
        print(f"lhdist bench: {script} not found (run from a source checkout)", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # argparse --help, or a script's own exit code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0
