"""Run a module-level worker on W spawned gloo ranks, with a hard timeout and child tracebacks.

    def _worker(rank, world_size, n):          # module level; dist is initialised (gloo, WORLD)
        ...; assert ...                         # every rank asserts

    def test_something(tmp_path):
        run_ranks(_worker, 4, tmp_path, 128, timeout_s=60)

Rendezvous is a file in tmp_path (no ports). Children run with one thread each. A child that
raises writes its traceback to tmp_path and exits non-zero; the first failure kills the other
ranks (which would otherwise hang in a collective) and fails the test with every traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

_GRACE_S = 2.0  # after a failure, how long the other ranks get to report their own errors


def _resolve(module_name: str, file: str, qualname: str) -> Any:
    """The worker function in a fresh process. pytest's importlib mode may import test files
    under names that are not importable, so fall back to loading the file by path."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _child_main(
    rank: int,
    world_size: int,
    run_dir: str,
    worker_ref: tuple[str, str, str],
    args: tuple[Any, ...],
) -> None:
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"file://{run_dir}/rendezvous", rank=rank, world_size=world_size
        )
        _resolve(*worker_ref)(rank, world_size, *args)
        dist.destroy_process_group()
    except BaseException:
        Path(run_dir, f"rank{rank}.traceback").write_text(traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)  # skip interpreter teardown: it can block on a half-finished collective


def run_ranks(worker, world_size: int, tmp_path, *args: Any, timeout_s: float = 60.0) -> None:
    """Run `worker(rank, world_size, *args)` on `world_size` spawned ranks; fail on any error.

    worker must be a module-level function; args must be picklable.
    """
    run_dir = Path(tmp_path) / f"ranks-{worker.__name__}-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    ref = (worker.__module__, sys.modules[worker.__module__].__file__, worker.__qualname__)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_child_main, args=(rank, world_size, str(run_dir), ref, args), daemon=True
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()

    deadline = time.monotonic() + timeout_s
    failed_at = None
    while any(p.is_alive() for p in procs):
        now = time.monotonic()
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = now
        if now > deadline or (failed_at is not None and now > failed_at + _GRACE_S):
            break
        time.sleep(0.02)
    timed_out = time.monotonic() > deadline and any(p.is_alive() for p in procs)
    still_running = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=10)

    # Tracebacks in the order they were written: the root cause first, then the ranks that
    # failed because a peer went away.
    tracebacks = sorted(
        (f.stat().st_mtime_ns, int(f.stem.removeprefix("rank")), f.read_text())
        for f in run_dir.glob("rank*.traceback")
    )
    problems = [
        f"--- rank {rank} raised (exit code {procs[rank].exitcode}):\n{text}"
        for _, rank, text in tracebacks
    ]
    reported = {rank for _, rank, _ in tracebacks}
    for rank, p in enumerate(procs):
        if rank not in reported and p.exitcode not in (0, None) and rank not in still_running:
            problems.append(f"--- rank {rank} exited with code {p.exitcode} (no traceback)")
    if timed_out:
        problems.insert(
            0, f"timed out after {timeout_s:.0f}s; ranks still running and killed: {still_running}"
        )
    elif still_running and problems:
        problems.append(f"(ranks {still_running} were killed after the failure above)")
    if problems:
        raise AssertionError(
            f"{worker.__name__} on {world_size} ranks failed:\n" + "\n".join(problems)
        )
