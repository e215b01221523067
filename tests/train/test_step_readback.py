"""Metrics read back once per interval: the same numbers as a per-step read, the same training
records whatever the interval, prefetching and profiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lhdist.train.step_readback import StepReadback
from tests.multiprocess import run_ranks
from tests.train.test_training import FAST, read_events, read_steps


def test_readback_returns_what_a_per_step_read_gives():
    readback = StepReadback(torch.device("cpu"))
    expected = []
    for step in (1, 2, 3):
        loss = torch.tensor(1.0 / 3.0 + step, dtype=torch.float32)  # not exact in float64
        tokens = torch.tensor(512 * step)
        norm = torch.tensor(0.1 * step) if step != 2 else 0.25  # an engine may return a float
        start = readback.start()
        readback.add(step, 1 + step // 3, 1e-3 * step, start, loss, tokens, norm, 0.5)
        expected.append((step, float(loss), int(tokens), float(norm)))
    records = readback.read()
    assert [(r["step"], r["loss"], r["tokens"], r["grad_norm"]) for r in records] == expected
    assert [r["stage"] for r in records] == [1, 1, 2]
    assert all(r["step_time_s"] >= 0 and r["memory_gib"] == 0.5 for r in records)
    assert readback.read() == []  # read once


def _train_worker(rank, world_size, overrides):
    from lhdist.config import load_config
    from lhdist.train.loop import train

    train(load_config(overrides=overrides, world_size=world_size))


def test_training_records_do_not_depend_on_interval_prefetch_or_profiling(tmp_path):
    common = [*FAST, "--train.steps=6", "--train.stage1_steps=3", "--train.engine=torch",
              "--eval.batches=0"]  # fmt: skip
    runs = {
        "per_step": ["--train.log_every=1", "--data.prefetch_batches=0"],
        "interval": ["--train.log_every=4", "--data.prefetch_batches=2",
                     "--train.profile_steps=[2, 3, 5, 5]"],
    }  # fmt: skip
    steps = {}
    for name, extra in runs.items():
        run_dir = tmp_path / name
        overrides = [*common, *extra, f"--train.run_dir={run_dir}"]
        run_ranks(_train_worker, 1, tmp_path / f"rdv_{name}", overrides, timeout_s=240)
        steps[name] = read_steps(run_dir)
    keys = ("loss", "grad_norm", "tokens", "lr", "stage")
    for step in range(1, 7):
        got, want = steps["interval"][step], steps["per_step"][step]
        assert [got[k] for k in keys] == [want[k] for k in keys], step
    # Each profiled window left a chrome trace with the loop's phases in it.
    events = read_events(tmp_path / "interval", "profile")
    assert [e["step"] for e in events] == [3, 5]
    for event, window in zip(events, ("steps2-3", "steps5-5"), strict=True):
        assert window in event["path"]
        trace = json.loads(Path(event["path"]).read_text())
        names = {e.get("name") for e in trace["traceEvents"]}
        assert {"lhdist.data", "lhdist.forward", "lhdist.backward"} <= names
    assert not (tmp_path / "per_step" / "profile").exists()


@pytest.mark.parametrize(
    "steps, words",
    [("[3, 9]", "<= train.steps=6"), ("[4, 2]", "in order"), ("[1]", "pairs"),
     ("[1, 2, 2, 3]", "start after"), ("[0, 1]", "1 <= first")],
)  # fmt: skip
def test_profile_steps_outside_the_run_are_rejected_before_training(steps, words):
    from lhdist.config import load_config

    with pytest.raises(ValueError, match="train.profile_steps") as error:
        load_config(overrides=["--train.steps=6", "--train.stage1_steps=3",
                               f"--train.profile_steps={steps}"])  # fmt: skip
    assert words in str(error.value) and "\n" not in str(error.value)
