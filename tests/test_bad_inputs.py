"""Bad inputs across `train`, `check`, `data prepare`/`validate` and resume: each ends with exit
code 2 and one line on stderr that names the file, key or value, and no traceback.

The cases run in-process through `lhdist.cli.main` (fast); a few run as `python -m lhdist`
subprocesses to show the same end to end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lhdist.cli import main
from lhdist.errors import run_command

SEQ = 512
QUICK = [
    "--train.steps=2",
    "--train.stage1_steps=1",
    f"--train.seq_len={SEQ}",
    "--lighthouse.num_levels=2",
    "--lighthouse.pooling_factor=2",
    "--model.num_layers=3",
    "--train.tensorboard=false",
    "--train.engine=torch",
    "--eval.batches=0",
    "--eval.final=false",
]


@dataclass
class World:
    """Files the cases point at (built once per module)."""

    root: Path
    text: Path  # a folder of text files
    data: Path  # a prepared dataset
    checkpoint: Path  # step 2 of a QUICK run (torch engine)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad")
    text = root / "text"
    text.mkdir()
    (text / "a.txt").write_text("".join(f"line {i}: the quick brown fox\n" for i in range(2000)))
    data = root / "data"
    assert main(["data", "prepare", str(text), "--out", str(data), "--seq-len", str(SEQ)]) == 0
    run_dir = root / "run"
    out = subprocess.run(
        [sys.executable, "-m", "lhdist", "train", *QUICK, f"--train.run_dir={run_dir}",
         f"--data.path={data}", "--checkpoint.every=2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return World(root, text, data, run_dir / "checkpoints" / "step_00000002")


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def first_shard(data: Path) -> Path:
    return sorted(data.glob("*.mds"))[0]


def damage_token_ids(data: Path) -> None:
    """Every token id of every shard becomes 0xFFFF, sizes and MDS headers kept."""
    for shard in data.glob("*.mds"):
        raw = bytearray(shard.read_bytes())
        n = int(np.frombuffer(raw[:4], np.uint32)[0])
        start = 4 + 4 * (n + 1)
        raw[start:] = b"\xff" * (len(raw) - start)
        shard.write_bytes(bytes(raw))


def truncate(file: Path, keep: int = 100) -> None:
    file.write_bytes(file.read_bytes()[:keep])


def scramble_tail(file: Path, n: int = 64) -> None:
    """Same size, but the zip's central directory (at the end) is garbage."""
    raw = bytearray(file.read_bytes())
    raw[-n:] = b"\x00" * n
    file.write_bytes(bytes(raw))


# (id, builder(world, tmp) -> argv, text the one line must contain)
def train(*args):
    return ["train", *QUICK, *args]


def config(tmp: Path, text: str | bytes) -> str:
    return f"--config={write(tmp / 'c.yaml', text)}"


CASES = [
    # --- config files and overrides
    ("yaml-parse", lambda w, t: train(config(t, 'train: {steps: 3')),
     "is not valid YAML"),
    ("yaml-tab", lambda w, t: train(config(t, 'train:\n\tsteps: 3')),
     "is not valid YAML"),
    ("config-dir", lambda w, t: train(f"--config={t}"), "is a directory"),
    ("config-missing", lambda w, t: train(f"--config={t / 'nope.yaml'}"), "does not exist"),
    ("config-binary", lambda w, t: train(config(t, b'\xff\xfe\x00')),
     "not a text"),
    ("config-list", lambda w, t: train(config(t, '- 1\n- 2')),
     "must hold a mapping"),
    ("config-section", lambda w, t: train(config(t, 'trian: {}')),
     "unknown config section 'trian'"),
    ("config-scalar-section",
     lambda w, t: train(config(t, 'train: 3')), "must be a mapping"),
    ("override-yaml", lambda w, t: train("--optim.lr=[1,"), "not valid YAML"),
    ("override-no-dot", lambda w, t: train("--steps=3"), "expected --section.key=value"),
    ("override-no-value", lambda w, t: train("--train.steps"), "needs a value"),
    ("override-positional", lambda w, t: train("steps=3"), "expected --section.key=value"),
    ("unknown-key", lambda w, t: train("--train.stepz=3"), "unknown config key 'train.stepz'"),
    ("wrong-type", lambda w, t: train("--train.steps=abc"), "train.steps='abc' must be of type"),
    ("config-flag-no-arg", lambda w, t: ["train", "--config"], "expected one argument"),
    # --- ranges
    ("lr-inf", lambda w, t: train("--optim.lr=.inf"), "optim.lr=inf must be a finite number > 0"),
    ("lr-nan", lambda w, t: train("--optim.lr=.nan"), "optim.lr=nan must be a finite"),
    ("lr-zero", lambda w, t: train("--optim.lr=0"), "optim.lr=0.0 must be a finite number > 0"),
    ("weight-decay", lambda w, t: train("--optim.weight_decay=-0.1"), "optim.weight_decay=-0.1"),
    ("beta1", lambda w, t: train("--optim.beta1=1.0"), "optim.beta1=1.0 must be a number in [0,"),
    ("eps", lambda w, t: train("--optim.eps=0"), "optim.eps=0.0"),
    ("grad-clip-nan", lambda w, t: train("--optim.grad_clip=.nan"), "optim.grad_clip=nan"),
    ("threads", lambda w, t: train("--train.num_threads=-1"), "train.num_threads=-1"),
    ("timeout", lambda w, t: train("--parallel.timeout_s=0"), "parallel.timeout_s=0"),
    ("init-std", lambda w, t: train("--model.init_std=5"), "model.init_std=5.0"),
    ("norm-eps", lambda w, t: train("--model.norm_eps=-1"), "model.norm_eps=-1.0"),
    ("data-seed", lambda w, t: train("--data.seed=-1"), "data.seed=-1"),
    ("max-bad-steps", lambda w, t: train("--train.max_bad_steps=-2"), "train.max_bad_steps=-2"),
    ("dense-every", lambda w, t: train("--lighthouse.dense_every=1"), "lighthouse.dense_every=1"),
    ("bad-steps-no-norm", lambda w, t: train("--train.max_bad_steps=2", "--optim.grad_clip=0",
                                             "--train.engine=deepspeed", "--train.zero_stage=2"),
     "train.max_bad_steps=2 needs the gradient norm"),
    ("run-dir-empty", lambda w, t: train("--train.run_dir="), "train.run_dir must name"),
    ("stage1-steps", lambda w, t: train("--train.stage1_steps=9"), "train.stage1_steps=9"),
    ("flavor", lambda w, t: train("--model.flavor=huge"), "model.flavor='huge'"),
    ("cp-world", lambda w, t: train("--parallel.cp_degree=2"), "world_size=1 is not divisible"),
    ("seq-len", lambda w, t: train("--train.seq_len=501"), "train.seq_len=501 must be"),
    ("topk", lambda w, t: train("--lighthouse.topk=100"), "lighthouse.topk=100 must be"),
    # --- devices and backends
    ("nccl-on-cpu", lambda w, t: train("--parallel.backend=nccl", f"--train.run_dir={t}/r"),
     "parallel.backend=nccl needs CUDA devices"),
    ("nccl-device-cpu", lambda w, t: train("--parallel.backend=nccl", "--train.device=cpu"),
     "train.device=cpu"),
    ("cuda-missing", lambda w, t: train("--train.device=cuda", f"--train.run_dir={t}/r"),
     "train.device=cuda but no CUDA device"),
    # --- output folders
    ("run-dir-file", lambda w, t: train(f"--train.run_dir={write(t / 'f', 'x')}"),
     "/f is a file; it must be a directory"),
    ("run-dir-sys", lambda w, t: train("--train.run_dir=/sys/lhdist-run"), "is not writable"),
    ("checkpoint-dir-file",
     lambda w, t: train(f"--train.run_dir={t}/r", f"--checkpoint.dir={write(t / 'f', 'x')}"),
     "checkpoint.dir="),
    # --- datasets at train time
    ("data-missing", lambda w, t: train(f"--data.path={t / 'none'}", f"--train.run_dir={t}/r"),
     "does not exist"),
    ("data-seq-len", lambda w, t: train(f"--data.path={w.data}", "--train.seq_len=256",
                                        f"--train.run_dir={t}/r"), "prepare it again"),
    ("data-vocab", lambda w, t: train(f"--data.path={w.data}", "--model.vocab_size=100",
                                      f"--train.run_dir={t}/r"), "need model.vocab_size >= "),
    ("data-corrupt-hash", lambda w, t: train(
        f"--data.path={corrupt_shard(copy_of(w.data, t / 'd'))}", f"--train.run_dir={t}/r"),
     "corrupt"),
    ("data-token-ids", lambda w, t: train(
        f"--data.path={ids_damaged(copy_of(w.data, t / 'd'))}", "--data.verify_hashes=false",
        f"--train.run_dir={t}/r"), "holds token id 65535, outside [0, model.vocab_size=320)"),
    # --- resume
    ("resume-not-ckpt", lambda w, t: train(f"--checkpoint.resume={t}", f"--train.run_dir={t}/r"),
     "is not a checkpoint"),
    ("resume-model-shape", lambda w, t: train(
        f"--checkpoint.resume={w.checkpoint}", "--model.num_layers=4", f"--data.path={w.data}",
        f"--train.run_dir={t}/r"), "holds another model (checkpoint vs run: num_layers=3 vs 4)"),
    ("resume-layout", lambda w, t: train(
        f"--checkpoint.resume={w.checkpoint}", "--train.zero_stage=2", f"--data.path={w.data}",
        f"--train.run_dir={t}/r"), "another layout (zero_stage: checkpoint 1 vs run 2)"),
    ("resume-truncated", lambda w, t: train(
        f"--checkpoint.resume={ckpt_damaged(w, t, truncate)}", f"--data.path={w.data}",
        f"--train.run_dir={t}/r"), "is truncated or incomplete: engine.pt has 100 bytes"),
    ("resume-corrupt", lambda w, t: train(
        f"--checkpoint.resume={ckpt_damaged(w, t, scramble_tail)}", f"--data.path={w.data}",
        f"--train.run_dir={t}/r"), "is corrupt: loading it failed"),
    ("resume-meta-json", lambda w, t: train(
        f"--checkpoint.resume={meta_damaged(w, t, '{')}", f"--train.run_dir={t}/r"),
     "meta.json is not valid JSON"),
    ("resume-meta-schema", lambda w, t: train(
        "--checkpoint.resume=" + str(meta_damaged(w, t, '{"step": "x"}')),
        f"--train.run_dir={t}/r"),
     "has step='x', expected an integer"),
    # --- check
    ("check-yaml", lambda w, t: ["check", config(t, 'a: [')],
     "is not valid YAML"),
    ("check-dir", lambda w, t: ["check", f"--config={t}"], "is a directory"),
    ("check-lr", lambda w, t: ["check", "--optim.lr=-1"], "optim.lr=-1.0"),
    ("check-world", lambda w, t: ["check", "--world-size=two"], "invalid int value: 'two'"),
    ("check-memory", lambda w, t: ["check", "--gpu-memory-gib=0.0001"], "exceeds --gpu-memory-gib"),
    # --- data prepare
    ("prepare-out-is-input", lambda w, t: ["data", "prepare", str(copy_of(w.text, t / 'x')),
                                           "--out", str(t / 'x'), "--seq-len=64", "--overwrite"],
     "is the input"),
    ("prepare-out-inside-input", lambda w, t: ["data", "prepare", str(w.text), "--out",
                                               str(w.text / "ds"), "--seq-len=64"],
     "is inside the input directory"),
    ("prepare-out-contains-input", lambda w, t: ["data", "prepare", str(copy_of(w.text, t / 'o/i')),
                                                 "--out", str(t / 'o'), "--seq-len=64",
                                                 "--overwrite"], "contains the input"),
    ("prepare-input-missing", lambda w, t: ["data", "prepare", str(t / "none.txt"), "--out",
                                            str(t / "o"), "--seq-len=64"], "does not exist"),
    ("prepare-seq-len", lambda w, t: ["data", "prepare", str(w.text), "--out", str(t / "o"),
                                      "--seq-len=0"], "seq_len=0 must be >= 1"),
    ("prepare-seq-len-type", lambda w, t: ["data", "prepare", str(w.text), "--out", str(t / "o"),
                                           "--seq-len=big"], "invalid int value: 'big'"),
    ("prepare-no-text", lambda w, t: ["data", "prepare", str(write(t / "e/x.bin", "b").parent),
                                      "--out", str(t / "o"), "--seq-len=64"], "no files with"),
    ("prepare-val-fraction", lambda w, t: ["data", "prepare", str(w.text), "--out", str(t / "o"),
                                           "--seq-len=64", "--val-fraction=1.5"],
     "val fraction=1.5 must be in (0, 1)"),
    ("prepare-out-exists", lambda w, t: ["data", "prepare", str(w.text), "--out",
                                         str(write(t / "o/x", "x").parent), "--seq-len=64"],
     "exists and is not empty; pass --overwrite"),
    # --- data validate
    ("validate-missing", lambda w, t: ["data", "validate", str(t / "none")], "does not exist"),
    ("validate-index-json", lambda w, t: ["data", "validate", str(
        index_edited(w, t, text="{not json"))], "index.json is not a valid MDS index"),
    ("validate-index-list", lambda w, t: ["data", "validate", str(
        index_edited(w, t, text="[]"))], "holds a list, expected an MDS index object"),
    ("validate-index-field", lambda w, t: ["data", "validate", str(
        index_edited(w, t, change=lambda o: o["shards"][0]["raw_data"].pop("bytes")))],
     "shard 0 (shard.00000.mds) raw_data lacks the field 'bytes'"),
    ("validate-index-samples", lambda w, t: ["data", "validate", str(
        index_edited(w, t, change=lambda o: o["shards"][0].update(samples="many")))],
     "shard 0 has samples='many', expected int"),
    ("validate-meta-json", lambda w, t: ["data", "validate", str(
        meta_file_edited(w, t, "{oops"))], "lhdist.json is not valid JSON"),
    ("validate-meta-vocab", lambda w, t: ["data", "validate", str(
        meta_file_edited(w, t, '{"vocab_size": "big"}'))],
     "lhdist.json has vocab_size='big', expected int"),
    ("validate-shard-truncated", lambda w, t: ["data", "validate", str(
        shard_truncated(copy_of(w.data, t / "d")))], "truncated or corrupt"),
    ("validate-shard-missing", lambda w, t: ["data", "validate", str(
        shard_removed(copy_of(w.data, t / "d")))], "is missing"),
    ("validate-seq-len", lambda w, t: ["data", "validate", str(w.data), "--seq-len=64"],
     "prepare it again with seq_len=64"),
]  # fmt: skip


def corrupt_shard(data: Path) -> Path:
    shard = first_shard(data)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return data


def ids_damaged(data: Path) -> Path:
    damage_token_ids(data)
    return data


def shard_truncated(data: Path) -> Path:
    truncate(first_shard(data), 1000)
    return data


def shard_removed(data: Path) -> Path:
    first_shard(data).unlink()
    return data


def index_edited(w: World, t: Path, text: str | None = None, change=None) -> Path:
    data = copy_of(w.data, t / "d")
    if text is not None:
        (data / "index.json").write_text(text)
    else:
        edit_json(data / "index.json", change)
    return data


def meta_file_edited(w: World, t: Path, text: str) -> Path:
    data = copy_of(w.data, t / "d")
    (data / "lhdist.json").write_text(text)
    return data


def ckpt_damaged(w: World, t: Path, damage) -> Path:
    path = copy_of(w.checkpoint, t / "ckpt")
    damage(path / "engine.pt")
    return path


def meta_damaged(w: World, t: Path, text: str) -> Path:
    path = copy_of(w.checkpoint, t / "ckpt")
    (path / "meta.json").write_text(text)
    return path


def error_lines(stderr: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with carriage returns)."""
    return [line for line in stderr.splitlines() if line.strip() and "%|" not in line]


def test_bad_input_table_is_large_and_distinct():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(world, tmp_path, capsys, monkeypatch, build, expected):
    monkeypatch.chdir(tmp_path)  # a case that wrongly starts training writes runs/ here
    argv = build(world, tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("lhdist ") and expected in lines[0], lines[0]


def test_bad_input_prepare_keeps_inputs(world, tmp_path, capsys):
    # The case the table's "out-is-input" guards: --overwrite must never delete the text.
    text = copy_of(world.text, tmp_path / "x")
    before = sorted(p.name for p in text.iterdir())
    assert main(["data", "prepare", str(text), "--out", str(text), "--seq-len=64",
                 "--overwrite"]) == 2  # fmt: skip
    assert sorted(p.name for p in text.iterdir()) == before


def test_unexpected_error_is_one_line_and_its_traceback_is_kept(tmp_path, capsys, monkeypatch):
    from lhdist import errors

    monkeypatch.setattr(errors, "_traceback_dir", tmp_path)

    def broken(argv):
        raise RuntimeError("an internal bug\nwith two lines")

    assert run_command("lhdist x", broken, []) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lhdist x: internal error: RuntimeError: an internal bug with two")
    saved = tmp_path / "traceback-rank0.txt"
    assert f"(full traceback in {saved})" in line
    assert (
        "Traceback (most recent call last)" in saved.read_text() and "broken" in saved.read_text()
    )


def test_disk_errors_are_reported_as_such(capsys):
    import errno

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/ckpt/step_1/engine.pt")

    def read_only(argv):
        raise OSError(errno.EROFS, "Read-only file system", "/ckpt")

    assert run_command("lhdist train", full, []) == 2
    assert run_command("lhdist train", read_only, []) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "lhdist train: error: no space left on device: /ckpt/step_1/engine.pt",
        "lhdist train: error: read-only file system: /ckpt",
    ]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--optim.lr=[1,"], "not valid YAML"),
        (["train", *QUICK, "--parallel.backend=nccl"], "needs CUDA devices"),
        (["data", "validate", "/nonexistent-lhdist"], "does not exist"),
    ],
    ids=["override-yaml", "nccl", "validate-missing"],
)
def test_bad_input_end_to_end_has_no_traceback(tmp_path, args, expected):
    out = subprocess.run(
        [sys.executable, "-m", "lhdist", *args, *([f"--train.run_dir={tmp_path}"] if
                                                  args[0] == "train" else [])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = error_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1 and expected in lines[0], out.stderr[-3000:]
