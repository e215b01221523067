"""Long-context eval: passkey prompts and their scorer, loss by position, `lhdist eval` on a
checkpoint of a 3-step training run, and its one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lhdist.config import load_config
from lhdist.eval.cli import main as eval_main
from lhdist.eval.longcontext import (
    NEEDLE,
    PasskeySettings,
    Progress,
    bucket_edges,
    check_passkey_lengths,
    passkey_overhead,
    passkey_prompt,
    passkey_rows,
    passkey_trials,
    position_loss_rows,
)
from lhdist.model import build_model

SEQ_LEN = 512
# 3 layers, Lighthouse L=2, p=2 in layer 1: lengths 256 and 512 fit its rules, 128 does not.
TINY = [
    "--model.num_layers=3",
    f"--train.seq_len={SEQ_LEN}",
    "--lighthouse.num_levels=2",
    "--lighthouse.pooling_factor=2",
]
VOCAB = 258


def three_step_run(run_dir, engine_flags):
    return [
        *TINY, "--train.steps=3", "--train.stage1_steps=2", *engine_flags,
        f"--train.run_dir={run_dir}", "--checkpoint.every=3", "--eval.final=false",
        "--eval.batches=0", "--train.tensorboard=false",
    ]  # fmt: skip


def _train_worker(rank, world_size, overrides):
    from lhdist.train.loop import train

    train(load_config(None, overrides, world_size=world_size))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The step-3 checkpoint of a single-process torch-engine run on the built-in corpus."""
    from lhdist.train.loop import train

    run_dir = tmp_path_factory.mktemp("run")
    train(load_config(None, three_step_run(run_dir, ["--train.engine=torch"])))
    path = run_dir / "checkpoints" / "step_00000003"
    assert (path / "meta.json").is_file()
    return path


# --- prompts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0], ids=["depth0", "depth0.3", "depth1"])
def test_passkey_prompt_is_length_tokens_and_ends_with_the_digits(depth):
    filler = np.random.default_rng(0).integers(97, 123, size=1000)  # lowercase letters
    key, length = "40417", 300
    prompt = passkey_prompt(filler, length, depth, key)
    assert prompt.shape == (length,) and prompt.dtype == np.int64
    assert bytes(prompt[-5:].astype(np.uint8)) == key.encode()
    needle = np.frombuffer(NEEDLE.format(key=key).encode(), dtype=np.uint8)
    at = round(depth * (length - passkey_overhead(5)))
    assert (prompt[at : at + len(needle)] == needle).all()
    assert (prompt[:at] == filler[:at]).all()
    assert bytes(prompt.astype(np.uint8)).endswith(b"What is the pass key? The pass key is 40417")


def test_passkey_trials_repeat_for_a_seed_and_fit_their_length():
    pool = np.random.default_rng(1).integers(0, 256, size=200)  # shorter than a prompt: wraps
    settings = PasskeySettings([256], [0.5], trials=3, digits=6, seed=7)
    first = list(passkey_trials(pool, 256, 0.5, settings))
    again = list(passkey_trials(pool, 256, 0.5, settings))
    other = list(passkey_trials(pool, 256, 0.5, PasskeySettings([256], [0.5], 3, 6, seed=8)))
    assert [k for _, k in first] == [k for _, k in again]
    assert all((a == b).all() for (a, _), (b, _) in zip(first, again))
    assert [k for _, k in first] != [k for _, k in other]
    for prompt, key in first:
        assert len(key) == 6 and len(prompt) == 256
        assert bytes(prompt[-6:].astype(np.uint8)) == key.encode()


def test_passkey_lengths_shorter_than_needle_and_question_are_rejected():
    with pytest.raises(ValueError, match="shorter than its needle and question"):
        check_passkey_lengths([256, 64], digits=5)


# --- the scorer could fail ------------------------------------------------------------------------


class NextTokenModel:
    """Logits one-hot of the true next token (the prompt is the input): a perfect reader, or
    one that gets the answer's `wrong_at`-th digit wrong, or one that always says token 0."""

    def __init__(self, kind: str, wrong_at: int | None = None) -> None:
        self.kind, self.wrong_at = kind, wrong_at

    def hidden_states(self, input_ids, positions):
        if self.kind == "constant":
            return F.one_hot(torch.zeros_like(input_ids), VOCAB).float()
        nxt = torch.roll(input_ids, -1, dims=1)
        if self.wrong_at is not None:  # the row that predicts digit `wrong_at` of 5
            row = input_ids.shape[1] - 5 - 1 + self.wrong_at
            nxt[:, row] = (nxt[:, row] + 1) % VOCAB
        return F.one_hot(nxt, VOCAB).float()

    def output(self, hidden):
        return hidden


@pytest.mark.parametrize(
    "model, accuracy, digit_accuracy",
    [
        (NextTokenModel("oracle"), 1.0, 1.0),
        (NextTokenModel("oracle", wrong_at=4), 0.0, 0.8),
        (NextTokenModel("oracle", wrong_at=0), 0.0, 0.8),
        (NextTokenModel("constant"), 0.0, 0.0),
    ],
    ids=["oracle", "last-digit-wrong", "first-digit-wrong", "constant"],
)
def test_passkey_scorer_reads_exactly_the_answer_positions(model, accuracy, digit_accuracy):
    pool = np.random.default_rng(2).integers(0, 256, size=4096)
    settings = PasskeySettings([128, 256], [0.0, 1.0], trials=3, digits=5)
    rows = passkey_rows(model, "fake", pool, settings, "cpu", Progress(0, enabled=False))
    assert [(r["length"], r["depth"]) for r in rows] == [(128, 0.0), (128, 1.0), (256, 0.0),
                                                         (256, 1.0)]  # fmt: skip
    assert all(r["accuracy"] == accuracy for r in rows)
    assert all(r["digit_accuracy"] == pytest.approx(digit_accuracy) for r in rows)


# --- loss by position -----------------------------------------------------------------------------


def test_position_loss_buckets_cover_the_sequence_and_average_to_the_model_loss():
    cfg = load_config(None, [*TINY, "--model.num_layers=2"])
    model = build_model(cfg.model, seed=3).eval()
    n, buckets = 100, 7  # buckets of unequal size: 14 or 15 positions
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, VOCAB, (n + 1,), generator=gen) for _ in range(2)]
    with torch.no_grad():
        rows = position_loss_rows(model, "dense", samples, buckets, 9, Progress(0, False))
        positions = torch.arange(n)
        total = sum(float(model(s[None, :-1], positions, labels=s[None, 1:])) for s in samples)
    assert [r["bucket"] for r in rows] == list(range(buckets))
    assert rows[0]["start"] == 0 and rows[-1]["end"] == n
    assert all(a["end"] == b["start"] for a, b in zip(rows, rows[1:]))
    assert [r["start"] for r in rows] + [n] == bucket_edges(n, buckets)
    assert [r["tokens"] for r in rows] == [2 * (r["end"] - r["start"]) for r in rows]
    weighted = sum(r["loss"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)
    assert weighted == pytest.approx(total / (2 * n), rel=1e-5)


# --- the command ----------------------------------------------------------------------------------


def test_eval_cli_writes_a_report_per_length_depth_and_attention(checkpoint, tmp_path, capsys):
    out = tmp_path / "report" / "eval.json"
    flags = "--lengths 256 512 --depths 0 0.5 1 --trials 2 --samples 2 --buckets 4 --device cpu"
    assert eval_main([str(checkpoint), "--out", str(out), *flags.split()]) == 0
    report = json.loads(out.read_text())
    assert {"passkey", "position_loss", "config", "checkpoint", "step"} <= set(report)
    assert report["step"] == 3 and report["checkpoint"] == str(checkpoint)
    cells = {(r["length"], r["depth"], r["attention"]) for r in report["passkey"]}
    expected = {(n, d, a) for n in (256, 512) for d in (0.0, 0.5, 1.0)
                for a in ("dense", "lighthouse")}  # fmt: skip
    assert cells == expected and len(report["passkey"]) == len(expected)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["trials"] == 2 for r in report["passkey"])
    losses = report["position_loss"]
    assert [(r["attention"], r["bucket"]) for r in losses] == [
        (a, b) for a in ("dense", "lighthouse") for b in range(4)
    ]
    assert all(r["tokens"] == 2 * 128 and 0 < r["loss"] < 10 for r in losses)
    assert report["config"]["train"]["seq_len"] == SEQ_LEN
    err = capsys.readouterr().err
    assert "[eval] passkey lighthouse length=512" in err  # progress, a line per length off a tty
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert out.with_suffix(".png").stat().st_size > 0


def _rewrite_ffn_dim(path, value):
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    cfg["model"]["ffn_dim"] = value
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


BAD_INPUTS = [
    ("not-a-checkpoint", [], "is not a checkpoint directory: meta.json is missing"),
    ("length-above-seq-len", ["--lengths", "1024"], "train.seq_len=512"),
    ("length-lighthouse-rejects", ["--lengths", "128"], "Lighthouse cannot select"),
    ("shape-mismatch", [], "feed_forward.w1.weight has shape (384, 128) in the checkpoint"),
    ("missing-weights", [], "has no weights"),
    ("too-few-held-out-samples", ["--samples", "1000000"], "fewer than the 1000000"),
]


@pytest.mark.parametrize("case, flags, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_eval_cli_bad_input_exits_2_with_one_line(checkpoint, tmp_path, capsys, case, flags,
                                                  message):  # fmt: skip
    path = tmp_path / "ckpt"
    if case == "not-a-checkpoint":
        path.mkdir()
    else:
        shutil.copytree(checkpoint, path)
    if case == "shape-mismatch":
        _rewrite_ffn_dim(path, 256)
    if case == "missing-weights":
        (path / "engine.pt").unlink()
    out = tmp_path / "eval.json"
    assert eval_main([str(path), "--out", str(out), "--device", "cpu", "--quiet", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lhdist eval: error:"), lines
    assert message in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("zero_stage", [1, 3], ids=["zero1", "zero3"])
def test_deepspeed_checkpoint_loads_the_same_weights_as_the_torch_engine(
    checkpoint, tmp_path, zero_stage
):
    """Same seed and data, fp32 on CPU: a DeepSpeed run's weights (module state for ZeRO 0-2,
    zero_to_fp32 for ZeRO-3) match the torch engine's. DeepSpeed trains in a spawned rank."""
    pytest.importorskip("deepspeed")
    from lhdist.eval.checkpoint_model import load_checkpoint_model
    from tests.multiprocess import run_ranks

    flags = ["--train.engine=deepspeed", f"--train.zero_stage={zero_stage}"]
    run_ranks(_train_worker, 1, tmp_path, three_step_run(tmp_path / "ds", flags), timeout_s=120)
    model, cfg = load_checkpoint_model(tmp_path / "ds" / "checkpoints" / "step_00000003", "cpu")
    reference, _ = load_checkpoint_model(checkpoint, "cpu")
    assert cfg.train.zero_stage == zero_stage and cfg.parallel.dp_degree == 1
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
