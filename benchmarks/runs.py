"""Running `python -m lhdist.train` from a benchmark, and reading what the run logged."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

# Lines of a run's output echoed to the benchmark's console (the rest stays in its log.txt).
ECHO = ("step ", "[start]", "[done]", "[resume]", "[checkpoint]", "[compute_dtype]", "lhdist")


class RunFailed(RuntimeError):
    pass


def run_logged(
    cmd: list[str], run_dir: Path, label: str, timeout_s: float, tag: str = "deepspeed"
) -> None:
    """Run `cmd`, its output into run_dir/log.txt with progress lines echoed; RunFailed on a
    non-zero exit or after `timeout_s` (the whole process group is killed: nothing hangs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    log_path = run_dir / "log.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    print(f"[{tag}] {label}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
            start_new_session=True,
        )  # fmt: skip
        timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith(ECHO):
                    print(f"  {label}: {line.rstrip()}", flush=True)
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # interrupted: take the run down with us
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    took = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        why = f"killed after {timeout_s:.0f} s" if took >= timeout_s else f"exited {code}"
        raise RunFailed(f"{label} {why} (log: {log_path}):\n{tail}")
    print(f"[{tag}] {label}: done in {took:.1f} s", flush=True)


def read_metrics(run_dir: Path) -> tuple[dict[int, dict], list[dict]]:
    """(step -> its last record, events) of a run's metrics.jsonl."""
    return read_metrics_file(run_dir / "metrics.jsonl")


def read_metrics_file(path: Path) -> tuple[dict[int, dict], list[dict]]:
    """(step -> its last record, events) of a metrics.jsonl file, wherever it was copied to."""
    steps, events = {}, []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "event" in record:
            events.append(record)
        else:
            steps[record["step"]] = record
    return steps, events


def estimated_peak_gib(
    config: str | None, overrides: list[str], device_type: str, memory: int | None
) -> dict[int, float]:
    """`lhdist check`'s peak estimate (GiB) per stage for a run of `config` + `overrides` on one
    rank, with the activation-checkpointing plan the run picks for a device of `memory` bytes
    (None: the config's own setting, as on CPU)."""
    from lhdist.check import estimate_memory, load_for_check, recompute_plan

    cfg = load_for_check(config, [f"--{kv}" for kv in overrides], world_size=1)
    mem = estimate_memory(cfg, device_type, recompute_plan(cfg, device_type, memory))
    return {stage: mem.peak_at(stage) / 2**30 for stage in mem.activations}
