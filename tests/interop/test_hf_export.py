"""lhdist export: a checkpoint loaded by transformers gives lhdist's logits and greedy tokens, its
tokenizer lhdist's ids; export -> import is exact; bad input exits 2 and leaves nothing."""

import json

import pytest
import torch

from lhdist.cli import main
from lhdist.interop.export import export_checkpoint
from lhdist.train.tokenizer import ByteTokenizer
from tests.interop.hf_models import (
    SHAPE_IDS,
    SHAPES,
    lhdist_config,
    lhdist_from_hf,
    lhdist_greedy,
    random_lhdist_model,
    transformers_or_skip,
    write_checkpoint,
)

SEQ_LEN = 512
RUN = ["--model.num_layers=3", f"--train.seq_len={SEQ_LEN}", "--lighthouse.num_levels=2",
       "--lighthouse.pooling_factor=2", "--train.steps=3", "--train.stage1_steps=2",
       "--checkpoint.every=1", "--checkpoint.keep_last=3", "--eval.final=false",
       "--eval.batches=0", "--train.tensorboard=false"]  # fmt: skip


def load_hf(folder):
    transformers = transformers_or_skip()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("_, heads, kv_heads, tied, scaling", SHAPES, ids=SHAPE_IDS)
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(
    tmp_path, _, heads, kv_heads, tied, scaling
):
    cfg = lhdist_config(heads, kv_heads, tied, scaling)
    model = random_lhdist_model(cfg)
    out = export_checkpoint(write_checkpoint(tmp_path / "ckpt", cfg, model), tmp_path / "hf")
    hf = load_hf(out)
    assert hf.config.tie_word_embeddings == tied
    assert hf.config.max_position_embeddings >= cfg.train.seq_len
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids, torch.arange(40))
        got = hf(ids).logits
        assert want.abs().max() > 0.5
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        greedy = hf.generate(ids[:1, :16], max_new_tokens=12, do_sample=False, min_new_tokens=12)
        assert torch.equal(greedy, lhdist_greedy(model, ids[:1, :16], 12))


@pytest.mark.parametrize("_, heads, kv_heads, tied, scaling", SHAPES, ids=SHAPE_IDS)
def test_export_then_import_is_exact(tmp_path, _, heads, kv_heads, tied, scaling):
    transformers_or_skip()  # the import reads safetensors; the test need not run transformers
    cfg = lhdist_config(heads, kv_heads, tied, scaling)
    model = random_lhdist_model(cfg)
    export_checkpoint(write_checkpoint(tmp_path / "ckpt", cfg, model), tmp_path / "hf",
                      max_shard_bytes=40_000)  # fmt: skip
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()  # sharded
    back, back_cfg = lhdist_from_hf(tmp_path / "hf")
    for key in ("dim", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size", "tie_embeddings",
                "rope_theta", "rope_scaling", "norm_eps"):  # fmt: skip
        assert getattr(back_cfg.model, key) == getattr(cfg.model, key), key
    for (name, a), b in zip(back.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_exported_byte_tokenizer_reproduces_lhdist_ids(tmp_path):
    transformers = transformers_or_skip()
    cfg = lhdist_config(4, 2, True, None)
    export_checkpoint(write_checkpoint(tmp_path / "ckpt", cfg, random_lhdist_model(cfg)),
                      tmp_path / "hf")  # fmt: skip
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "héllo wörld ∑ 🙂\n\tdef f(x):  return x <pad> <|endoftext|>\x00\x7f"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids == ByteTokenizer().encode(text).tolist()
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (256, 257, None)
    assert tok.decode(ids) == text
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (256, 257)


# --- a checkpoint of the real training loop ------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-step torch-engine run on the built-in corpus: steps 1-2 Lighthouse, step 3 dense."""
    from lhdist.config import load_config
    from lhdist.train.loop import train

    run_dir = tmp_path_factory.mktemp("run")
    train(load_config(None, [*RUN, "--train.engine=torch", f"--train.run_dir={run_dir}"]))
    return run_dir


def test_trained_checkpoint_keeps_its_tokenizer_and_exports(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoints" / "step_00000003"
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert (ckpt / "tokenizer" / "tokenizer.json").is_file()
    assert main(["export", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names  # fmt: skip
    from lhdist.eval.checkpoint_model import load_checkpoint_model

    model, _ = load_checkpoint_model(ckpt, "cpu")
    hf = load_hf(tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok("def main():\n    return 0\n")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids, torch.arange(ids.shape[1])),
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_stage1_checkpoint_needs_allow_sparse(run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoints" / "step_00000002")
    assert main(["export", ckpt, "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 1" in err[0] and "--allow-sparse" in err[0], err
    assert not (tmp_path / "hf").exists()
    assert main(["export", ckpt, "--out", str(tmp_path / "hf"), "--allow-sparse"]) == 0


def test_existing_target_is_kept_without_overwrite(run_dir, tmp_path, capsys):
    ckpt = str(run_dir / "checkpoints" / "step_00000003")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep")
    assert main(["export", ckpt, "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0], err
    assert (tmp_path / "hf" / "mine.txt").read_text() == "keep"
    assert main(["export", ckpt, "--out", str(tmp_path / "hf"), "--overwrite"]) == 0
    assert not (tmp_path / "hf" / "mine.txt").exists()


def test_failed_export_leaves_nothing_behind(run_dir, tmp_path, monkeypatch, capsys):
    import lhdist.interop.safetensors_io as io

    def half_then_fail(state, folder, max_shard_bytes):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr(io, "write_safetensors", half_then_fail)
    ckpt = str(run_dir / "checkpoints" / "step_00000003")
    assert main(["export", ckpt, "--out", str(tmp_path / "hf")]) == 2
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_not_a_checkpoint_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.json is missing" in err[0], err


def _train_worker(rank, world_size, overrides):
    from lhdist.config import load_config
    from lhdist.train.loop import train

    train(load_config(None, overrides, world_size=world_size))


def test_zero3_checkpoint_exports_the_torch_engine_weights(run_dir, tmp_path):
    """Same seed and data on CPU: ZeRO-3's partitions, gathered, export the same tensors."""
    pytest.importorskip("deepspeed")
    transformers_or_skip()
    from safetensors.torch import load_file

    from tests.multiprocess import run_ranks

    flags = [*RUN, "--train.engine=deepspeed", "--train.zero_stage=3",
             f"--train.run_dir={tmp_path / 'ds'}", "--checkpoint.every=3"]  # fmt: skip
    run_ranks(_train_worker, 1, tmp_path, flags, timeout_s=180)
    for name, run in (("ds", tmp_path / "ds"), ("torch", run_dir)):
        export_checkpoint(run / "checkpoints" / "step_00000003", tmp_path / f"hf_{name}")
    ds = load_file(tmp_path / "hf_ds" / "model.safetensors")
    ref = load_file(tmp_path / "hf_torch" / "model.safetensors")
    assert sorted(ds) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(ds[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_gpu_check_script_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/check_hf_export.py (the H200 check) on a tiny CPU run: fp32 logits agree."""
    transformers_or_skip()
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import check_hf_export

    report = check_hf_export.main([
        "--seq-len", str(SEQ_LEN), "--steps", "2", "--layers", "2", "--dim", "64", "--heads", "4",
        "--device", "cpu", "--engine", "torch", "--fp32-len", "128", "--rope-scaling", "yarn",
        "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"),
    ])  # fmt: skip
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["fp32"]["argmax_equal"]
    assert report["bf16"]["max_abs_diff"] < 0.1 * report["bf16"]["logit_max_abs"]
    assert len(list((tmp_path / "out").glob("*_hf_export_cpu.json"))) == 1
