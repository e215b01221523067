"""train.deterministic turns on torch's strict deterministic mode (not warn-only, which left
cuDNN's attention backward non-deterministic on an H200), and reruns reproduce bitwise."""

import torch

from lhdist.train.loop import use_deterministic_kernels
from tests.train.test_training import read_steps, run


def test_deterministic_mode_is_strict():
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        use_deterministic_kernels()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def test_deterministic_reruns_reproduce(tmp_path):
    args = ["--train.engine=torch", "--train.steps=6", "--train.stage1_steps=3",
            "--train.deterministic=true"]  # fmt: skip
    first, second = (read_steps(run(tmp_path, rep, 1, args)) for rep in ("a", "b"))
    assert sorted(first) == list(range(1, 7))
    assert [first[s]["loss"] for s in first] == [second[s]["loss"] for s in first]
