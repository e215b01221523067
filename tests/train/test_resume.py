"""SIGKILL mid-run, then resume: the run continues bit for bit as if never interrupted (CPU)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.train.test_training import FAST, read_events, read_steps

N = 4  # checkpoint every N steps; runs go to 2N


def launch(world: int, args: list[str]) -> list[subprocess.Popen]:
    """`python -m lhdist.train` on `world` local ranks, torchrun-style environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "lhdist.train", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return procs


def wait(procs: list[subprocess.Popen], timeout_s: float = 180) -> None:
    for p in procs:
        _, err = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, err.decode()[-3000:]


def checkpoint_logged(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return False
    lines = path.read_text().splitlines()
    return any(
        json.loads(line).get("event") == "checkpoint" and json.loads(line)["step"] == step
        for line in lines
        if line.endswith("}")
    )


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step_{2 * N:08d}" / "deepspeed"
    state = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return state["module"]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    args = [
        *FAST,
        f"--train.steps={2 * N}",
        "--train.stage1_steps=5",
        "--checkpoint.enabled=true",
        f"--checkpoint.every={N}",
        "--train.zero_stage=1",
    ]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    wait(launch(2, [*args, f"--train.run_dir={reference}"]))

    procs = launch(2, [*args, f"--train.run_dir={interrupted}"])
    deadline = time.monotonic() + 180
    while not checkpoint_logged(interrupted, N):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (interrupted / "checkpoints" / f"step_{2 * N:08d}").exists(), "killed too late"
    wait(launch(2, [*args, f"--train.run_dir={interrupted}"]))

    assert [e["step"] for e in read_events(interrupted, "resume")] == [N]
    assert [e["step"] for e in read_events(interrupted, "stage_switch")][-1] == 6
    ref_steps, resumed = read_steps(reference), read_steps(interrupted)
    for step in range(N + 1, 2 * N + 1):
        for key in ("loss", "grad_norm", "lr", "stage", "tokens"):
            assert resumed[step][key] == ref_steps[step][key], (step, key)
    ref_w, res_w = final_weights(reference), final_weights(interrupted)
    assert ref_w.keys() == res_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], res_w[name]), name
