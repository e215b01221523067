"""Where a training step's time goes, from a `train.profile_steps` trace: attention, matmuls,
optimizer, data, other, idle.

On CUDA every kernel (and copy) counts its duration; on CPU every op on the training thread
counts its self time (its duration minus its child ops'). Each is put in the first category
that its name, or the name of an op or `lhdist.<phase>` range around it (for a kernel: around
its launch), matches: attention (SDPA/flash/cuDNN/efficient kernels, the Lighthouse op's parts,
the ring), matmuls (GEMMs), optimizer (AdamW, clipping), data (host->device copies, the data
phase), other. Idle is the part of the profiled window that no kernel (no op, on CPU) covers:
time the device waited for the host.

    python benchmarks/train_time_split.py runs/x/profile/trace_rank0_steps5-6.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trace_summary import _enclosing, load_events  # noqa: E402

CATEGORIES = ("attention", "matmuls", "optimizer", "data", "other", "idle")
RULES = [
    ("attention", re.compile(
        r"attention|attn|flash|fmha|sdpa|lhdist::|Pyramid|ScatterEntries|AddHalo|GatherFlat|"
        r"ScatterFlat|RowsToShare|ShareToRows|PrefixCausal", re.I)),
    ("matmuls", re.compile(
        r"gemm|nvjet|xmma|cutlass|cublas|aten::(mm|addmm|bmm|baddbmm|matmul|linear)$|"
        r"MmBackward|AddmmBackward|BmmBackward", re.I)),
    ("optimizer", re.compile(r"Optimizer\.|lhdist\.optimizer_step|clip_grad|foreach_norm")),
    ("data", re.compile(r"Memcpy HtoD|lhdist\.data")),
]  # fmt: skip
RANGES = ("cpu_op", "user_annotation")
KERNELS = ("kernel", "gpu_memcpy", "gpu_memset")


def classify(names: list[str]) -> str:
    """The category of a work item: `names` is its own name, then its enclosing ranges."""
    for category, pattern in RULES:
        if any(pattern.search(name) for name in names):
            return category
    return "other"


def _index(events: list[dict], tids=None) -> dict:
    by_tid = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in RANGES and (tids is None or e["tid"] in tids):
            by_tid[e["tid"]].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"]))
    index = {}
    for tid, intervals in by_tid.items():
        intervals.sort()
        index[tid] = (intervals, [lo for lo, _, _ in intervals])
    return index


def _union(spans: list[tuple[float, float]]) -> float:
    covered, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi > end:
            covered += hi - max(lo, end)
            end = hi
    return covered


def _cuda_items(events: list[dict]) -> tuple[list[tuple[float, list[str]]], list[tuple]]:
    index = _index(events)
    launches = {}
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = (e["tid"], e["ts"])
    items, spans = [], []
    for k in events:
        if k.get("ph") != "X" or k.get("cat") not in KERNELS:
            continue
        launch = launches.get(k.get("args", {}).get("correlation"))
        around = _enclosing(*index[launch[0]], launch[1]) if launch and launch[0] in index else []
        items.append((k.get("dur", 0), [k["name"], *reversed(around)]))
        spans.append((k["ts"], k["ts"] + k.get("dur", 0)))
    return items, spans


def _cpu_items(events: list[dict]) -> tuple[list[tuple[float, list[str]]], list[tuple]]:
    # The training thread(s): where the loop's lhdist.<phase> ranges are.
    tids = {e["tid"] for e in events if e.get("cat") == "user_annotation"
            and str(e.get("name", "")).startswith("lhdist.")}  # fmt: skip
    items, spans = [], []
    for intervals, _ in _index(events, tids).values():
        ranges = [iv for iv in intervals if iv[2].startswith("lhdist.")]
        ops = sorted(
            (iv for iv in intervals if not iv[2].startswith("lhdist.")),
            key=lambda iv: (iv[0], -iv[1]),
        )  # a parent before its children
        items += _self_times(ops, ranges, spans)
    return items, spans


def _self_times(ops: list[tuple], ranges: list[tuple], spans: list[tuple]) -> list:
    """(self time, [name, enclosing ops and ranges innermost first]) of each op of one thread
    (`ops` sorted parent first); the outermost ops' intervals are appended to `spans`."""
    starts = [lo for lo, _, _ in ranges]
    items, stack = [], []  # stack entries: [start, end, name, time of direct children]

    def close(entry, parents):
        lo, hi, name, children = entry
        names = [name, *reversed([p[2] for p in parents])]
        names += list(reversed(_enclosing(ranges, starts, lo)))
        items.append((max(hi - lo - children, 0.0), names))

    for lo, hi, name in ops:
        while stack and stack[-1][1] <= lo:
            close(stack.pop(), stack)
        if stack:
            stack[-1][3] += hi - lo
        else:
            spans.append((lo, hi))
        stack.append([lo, hi, name, 0.0])
    while stack:
        close(stack.pop(), stack)
    return items


def time_split(trace: Path, steps: int) -> dict:
    """{"ms_per_step": {category: ms}, "fraction": {category: share of the window},
    "window_ms_per_step", "source"} of a trace covering `steps` steps."""
    events = load_events(Path(trace))
    on_cuda = any(e.get("cat") in KERNELS for e in events)
    items, spans = _cuda_items(events) if on_cuda else _cpu_items(events)
    timed = [e for e in events if e.get("ph") == "X" and "dur" in e]
    window = max(e["ts"] + e["dur"] for e in timed) - min(e["ts"] for e in timed)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for duration, names in items:
        totals[classify(names)] += duration
    totals["idle"] = max(window - _union(spans), 0.0)
    return {
        "ms_per_step": {c: round(totals[c] / 1e3 / steps, 3) for c in CATEGORIES},
        "fraction": {c: round(totals[c] / window, 4) if window else 0.0 for c in CATEGORIES},
        "window_ms_per_step": round(window / 1e3 / steps, 3),
        "source": "cuda kernels" if on_cuda else "cpu ops (self time)",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, default=0, help="steps in each trace; 0: from its name")
    args = ap.parse_args(argv)
    for path in args.traces:
        steps = args.steps or steps_in_name(path)
        print(f"== {path}: {json.dumps(time_split(path, steps))}")


def steps_in_name(path: Path) -> int:
    """Steps of a trace named ..._steps<first>-<last>.json (what the loop writes)."""
    match = re.search(r"steps(\d+)-(\d+)", path.name)
    return int(match.group(2)) - int(match.group(1)) + 1 if match else 1


if __name__ == "__main__":
    main()
