"""Where the time of one Lighthouse layer goes: torch.profiler table of a fwd+bwd.

python benchmarks/profile_op.py --seq-len 524288 --config 4/4/2048
"""

from __future__ import annotations

import argparse

import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention, lighthouse_select


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq-len", type=int, default=524288)
    ap.add_argument("--config", default="4/4/2048")
    ap.add_argument("--selection", default="tile")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    L, p, k = (int(x) for x in args.config.split("/"))
    spec = LighthouseSpec(L, p, k, args.selection)
    N, H, G, D = args.seq_len, args.heads, args.kv_heads, args.head_dim
    q = torch.randn(1, N, H, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    k_, v = (torch.randn(1, N, G, D, device=device, dtype=torch.bfloat16, requires_grad=True)
             for _ in range(2))  # fmt: skip

    def step():
        # Fresh grads, as in training: accumulating into old ones would add three full-size adds.
        q.grad = k_.grad = v.grad = None
        out = lighthouse_attention(q, k_, v, spec)
        out.backward(torch.ones_like(out))

    for _ in range(3):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))

    # Selection alone, and the phases with events.
    if device == "cuda":
        for name, fn in [("select", lambda: lighthouse_select(q, k_, spec)), ("fwd+bwd", step)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                fn()
            end.record()
            torch.cuda.synchronize()
            print(f"{name}: {start.elapsed_time(end) / 5:.2f} ms")


if __name__ == "__main__":
    main()
