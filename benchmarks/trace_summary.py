"""Where the GPU time of a profiled call goes, by lhdist source line.

Reads a chrome trace written by `bench_cp.py --profile --trace-dir` (torch.profiler with
stacks) and attributes every GPU kernel to the innermost lhdist frame that launched it (or the
autograd node, for built-in backward ops), then prints the biggest sources, the GPU's busy
time and its idle time inside the profiled span:

    python benchmarks/trace_summary.py traces/trace_global_ring_rank0.json.gz --top 30
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
from collections import defaultdict
from pathlib import Path


def load_events(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)["traceEvents"]


def _enclosing(intervals: list[tuple[float, float, str]], starts: list[float], t: float):
    """Names of the intervals that contain t, outermost first (intervals sorted by start)."""
    found = []
    for i in range(bisect.bisect_right(starts, t) - 1, -1, -1):
        lo, hi, name = intervals[i]
        if lo <= t <= hi:
            found.append((lo, name))
    return [name for _, name in sorted(found)]


def attribute(events: list[dict]) -> tuple[dict[str, list[float]], float, float]:
    """({source: [kernel us, ...]}, busy us, span us)."""
    by_tid: dict[object, list[tuple[float, float, str]]] = defaultdict(list)
    launches: dict[object, tuple[object, float]] = {}
    kernels = []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat", "")
        if cat in ("python_function", "cpu_op"):
            by_tid[e["tid"]].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"]))
        elif cat in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = (e["tid"], e["ts"])
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            kernels.append(e)
    index = {}
    for tid, intervals in by_tid.items():
        intervals.sort()
        index[tid] = (intervals, [lo for lo, _, _ in intervals])
    sources: dict[str, list[float]] = defaultdict(list)
    for k in kernels:
        launch = launches.get(k.get("args", {}).get("correlation"))
        names = _enclosing(*index[launch[0]], launch[1]) if launch and launch[0] in index else []
        lhdist = [n for n in names if "lhdist/" in n and ".py(" in n]
        nodes = [n for n in names if n.startswith("autograd::engine::evaluate_function")]
        if lhdist:
            source = lhdist[-1].split("lhdist/", 1)[1]
        elif nodes:
            source = nodes[-1].split(": ", 1)[-1]
        else:
            source = names[-1] if names else "(graph replay or unattributed)"
        sources[source].append(k.get("dur", 0))
    spans = sorted((k["ts"], k["ts"] + k.get("dur", 0)) for k in kernels)
    busy, end = 0.0, float("-inf")
    for lo, hi in spans:  # union of kernel intervals
        if hi > end:
            busy += hi - max(lo, end)
            end = hi
    span = spans[-1][1] - spans[0][0] if spans else 0.0
    return sources, busy, span


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    for path in args.traces:
        sources, busy, span = attribute(load_events(path))
        total = sum(sum(v) for v in sources.values())
        print(f"== {path.name}: kernels {total / 1e3:.2f} ms, GPU busy {busy / 1e3:.2f} ms of a "
              f"{span / 1e3:.2f} ms span (idle {(span - busy) / 1e3:.2f} ms)")  # fmt: skip
        ranked = sorted(sources.items(), key=lambda kv: -sum(kv[1]))
        for source, durs in ranked[: args.top]:
            print(f"  {sum(durs) / 1e3:8.3f} ms {len(durs):5d}x  {source[:110]}")


if __name__ == "__main__":
    main()
