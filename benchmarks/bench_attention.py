"""Time one Lighthouse layer (fwd and fwd+bwd) against dense causal SDPA on the current device.

    # the CPU check of the single-device issue:
    python benchmarks/bench_attention.py --seq-lens 65536 --configs 3/4/1024 \
        --heads 4 --kv-heads 4 --head-dim 64 --dtype float32
    python benchmarks/bench_attention.py         # the GPU grid (32K..1M, bf16, D=128)

Each config runs at its own Ns of --seq-range: powers of two, or f*2^m when N must divide by a
number with an odd factor f (3/4/1536: 12 tiles of 16-token windows -> 3*2^m). Pairs the spec
rejects are skipped with a note.

Also reports the floor: causal SDPA alone on the gathered length S, and the overhead above it.
Writes JSON (and a PNG plot when matplotlib is installed) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, time_ms, write_results  # noqa: E402

from lhdist.ops import LighthouseSpec, lighthouse_attention  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seq-lens", default=None, help="N list for every config (overrides the grid)")
    ap.add_argument("--seq-range", default="32768:1048576", help="LO:HI of the per-config grid")
    ap.add_argument("--configs", default="3/4/2048,4/4/2048,3/4/1536", help="L/p/k list")
    ap.add_argument("--selection", default="tile", choices=["tile", "global"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--dense-max-seconds",
        type=float,
        default=60.0,
        help="skip dense SDPA where one fwd+bwd is predicted (quadratically) to be slower",
    )
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--name", default=None, help="results file name (default from device)")
    ap.add_argument("--out-dir", default=None)
    return ap.parse_args(argv)


def own_seq_lens(spec: LighthouseSpec, lo: int, hi: int) -> list[int]:
    """The Ns in [lo, hi] that suit `spec`: f * 2^m, f the odd factor of what N must divide by
    (f = 1 for power-of-two tile counts, 3 for 3/4/1536's 12 tiles)."""
    divisor = spec.num_tiles * spec.coarsest_window
    n, grid = divisor // (divisor & -divisor), []
    while n <= hi:
        if n >= lo:
            grid.append(n)
        n *= 2
    return grid


def plan(args) -> dict[str, tuple[LighthouseSpec, list[int]]]:
    """Per config: its spec and Ns; configs the spec rejects are left out with a note."""
    lo, hi = (int(x) for x in args.seq_range.split(":"))
    fixed = [int(n) for n in args.seq_lens.split(",")] if args.seq_lens else None
    configs = {}
    for cfg in args.configs.split(","):
        L, p, k = (int(x) for x in cfg.split("/"))
        try:
            spec = LighthouseSpec(L, p, k, args.selection)
        except ValueError as err:
            print(f"{cfg}: skipped ({err})", flush=True)
            continue
        configs[cfg] = (spec, fixed or own_seq_lens(spec, lo, hi))
    return configs


def make_inputs(args, N: int, device, dtype):
    shape_q = (args.batch, N, args.heads, args.head_dim)
    shape_kv = (args.batch, N, args.kv_heads, args.head_dim)
    return [
        torch.randn(s, device=device, dtype=dtype, requires_grad=True)
        for s in (shape_q, shape_kv, shape_kv)
    ]


def fwd_bwd(fn, inputs):
    def run():
        for x in inputs:
            x.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out))

    return run


def fwd_only(fn, inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)

    return run


def dense(q, k, v):
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def measure(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    rows, dense_cache, last_dense = [], {}, None
    configs = plan(args)
    for N in sorted({n for _, seq_lens in configs.values() for n in seq_lens}):
        inputs = make_inputs(args, N, device, dtype)
        for cfg, (spec, seq_lens) in configs.items():
            if N not in seq_lens:
                continue
            row = {"N": N, "config": cfg, "S": None}
            try:
                spec.check_seq_len(N)
            except ValueError as err:
                row["skipped"] = str(err)
                rows.append(row)
                print(f"N={N} {cfg}: skipped ({err})", flush=True)
                continue
            S = spec.selected_length(N)
            row["S"] = S

            def op(q, k, v, spec=spec):
                return lighthouse_attention(q, k, v, spec)

            timing = dict(repeats=args.repeats, warmup=args.warmup)
            row["lighthouse_fwd"] = time_ms(fwd_only(op, inputs), device, **timing)
            row["lighthouse_fwd_bwd"] = time_ms(fwd_bwd(op, inputs), device, **timing)
            floor_inputs = [
                torch.randn(
                    args.batch, S, x.shape[2], args.head_dim, device=device, dtype=dtype
                ).requires_grad_()
                for x in inputs
            ]
            row["floor_sdpa_on_S_fwd_bwd"] = time_ms(fwd_bwd(dense, floor_inputs), device, **timing)
            floor = row["floor_sdpa_on_S_fwd_bwd"]["median_ms"]
            row["overhead_over_floor"] = row["lighthouse_fwd_bwd"]["median_ms"] / floor - 1
            del floor_inputs
            rows.append(row)
            print(format_row(row), flush=True)
        if args.no_dense:
            continue
        if last_dense is not None:
            n_prev, ms_prev = last_dense
            predicted_s = ms_prev * (N / n_prev) ** 2 / 1e3
            if predicted_s > args.dense_max_seconds:
                dense_cache[N] = {"skipped": f"predicted {predicted_s:.0f} s per fwd+bwd"}
                print(f"N={N}: dense skipped ({dense_cache[N]['skipped']})", flush=True)
                continue
        repeats = max(1, min(args.repeats, 3)) if device.type == "cpu" else args.repeats
        warmup = 0 if device.type == "cpu" else args.warmup
        dense_cache[N] = {
            "fwd": time_ms(fwd_only(dense, inputs), device, repeats=repeats, warmup=warmup),
            "fwd_bwd": time_ms(fwd_bwd(dense, inputs), device, repeats=repeats, warmup=warmup),
        }
        last_dense = (N, dense_cache[N]["fwd_bwd"]["median_ms"])
        print(f"N={N}: dense fwd+bwd {last_dense[1]:.1f} ms", flush=True)
        del inputs
    for row in rows:
        d = dense_cache.get(row["N"], {})
        row["dense"] = d
        if "fwd_bwd" in d and "lighthouse_fwd_bwd" in row:
            row["speedup_fwd_bwd"] = (
                d["fwd_bwd"]["median_ms"] / row["lighthouse_fwd_bwd"]["median_ms"]
            )
    return {"environment": environment(), "args": vars(args), "rows": rows}


def format_row(row: dict) -> str:
    lh, fl = row["lighthouse_fwd_bwd"], row["floor_sdpa_on_S_fwd_bwd"]
    mem = f" peak {lh['peak_gib']:.2f} GiB" if "peak_gib" in lh else ""
    return (
        f"N={row['N']} {row['config']} S={row['S']}: "
        f"fwd {row['lighthouse_fwd']['median_ms']:.1f} ms"
        f", fwd+bwd {lh['median_ms']:.1f} ms{mem}, floor {fl['median_ms']:.1f} ms"
        f" (+{100 * row['overhead_over_floor']:.0f}%)"
    )


def plot(payload: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in payload["rows"] if "lighthouse_fwd_bwd" in r]
    for cfg in dict.fromkeys(r["config"] for r in rows):
        sel = [r for r in rows if r["config"] == cfg]
        ax.plot(
            [r["N"] for r in sel],
            [r["lighthouse_fwd_bwd"]["median_ms"] for r in sel],
            "o-",
            label=f"lhdist L/p/k={cfg}",
        )
        ax.plot(
            [r["N"] for r in sel],
            [r["floor_sdpa_on_S_fwd_bwd"]["median_ms"] for r in sel],
            ":",
            label=f"floor (SDPA on S) {cfg}",
        )
    dense_pts = sorted(
        {(r["N"], r["dense"]["fwd_bwd"]["median_ms"]) for r in rows if r["dense"].get("fwd_bwd")}
    )
    if dense_pts:
        ax.plot(*zip(*dense_pts), "s--k", label="dense causal SDPA")
    ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="fwd+bwd ms (median)")
    env = payload["environment"]
    ax.set_title(f"{env.get('gpu', env['cpu'])}, torch {env['torch']}, {payload['args']['dtype']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    payload = measure(args)
    env = payload["environment"]
    name = args.name or ("attention_" + ("gpu" if "gpu" in env else "cpu"))
    path = write_results(name, payload, args.out_dir)
    plot(payload, path.with_suffix(".png"))
    print(f"environment: {env}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
