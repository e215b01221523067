"""checkpoint.init_from: a random LlamaForCausalLM saved by transformers, started in lhdist, gives
transformers' logits (fp32, 1e-5) for GQA, tied/untied and llama3/yarn RoPE; bad folders fail
with one line naming the problem."""

import json

import pytest
import torch

from lhdist.config import load_config
from lhdist.interop.hf_init import check_init_from
from lhdist.interop.llama_keys import half_to_interleaved, interleaved_to_half
from tests.interop.hf_models import (
    SHAPE_IDS,
    SHAPES,
    VOCAB,
    lhdist_from_hf,
    random_hf_model,
    transformers_or_skip,
)


def test_permutation_is_inverted_and_moves_rows_per_head():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).view(16, 3)  # 2 heads of head dim 8
    half = interleaved_to_half(w, 2)
    assert torch.equal(half_to_interleaved(half, 2), w)
    # head 1's rows 0, 2, 4, 6 (the first of each pair) come first, then 1, 3, 5, 7
    assert half[8:, 0].tolist() == [w[8 + r, 0].item() for r in (0, 2, 4, 6, 1, 3, 5, 7)]


@pytest.mark.parametrize("_, heads, kv_heads, tied, scaling", SHAPES, ids=SHAPE_IDS)
def test_hf_model_imported_gives_transformers_logits(tmp_path, _, heads, kv_heads, tied, scaling):
    hf = random_hf_model(tmp_path, heads, kv_heads, tied, scaling)
    model, cfg = lhdist_from_hf(tmp_path)
    assert (cfg.model.num_kv_heads, cfg.model.tie_embeddings) == (kv_heads, tied)
    assert cfg.model.rope_scaling == (dict(scaling) if scaling else None)
    ids = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids, torch.arange(48))
    assert expected.abs().max() > 0.5  # logits that a wrong mapping would move
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_dims_set_without_hf_config_must_match_config_json(tmp_path):
    random_hf_model(tmp_path, 4, 2, False, None)
    flags = [f"--checkpoint.init_from={tmp_path}", "--model.dim=64", "--model.num_layers=2",
             "--model.num_heads=4", "--model.num_kv_heads=2", "--model.ffn_dim=128",
             "--model.vocab_size=320", "--model.tie_embeddings=false", "--model.norm_eps=1e-5",
             "--lighthouse.enabled=false"]  # fmt: skip
    cfg = load_config(None, flags, world_size=1)
    with pytest.raises(ValueError, match=r"model.ffn_dim=128 vs intermediate_size=96"):
        check_init_from(cfg)
    cfg.model.ffn_dim = 96
    init = check_init_from(cfg)  # the same dims pass; the RoPE difference is only noted
    assert init.notes == []


def test_hf_config_dims_win_and_explicit_ones_must_agree(tmp_path):
    random_hf_model(tmp_path, 4, 2, True, None)
    with pytest.raises(ValueError, match=r"model.num_heads=8 disagrees with num_attention_heads=4"):
        load_config(None, [f"--model.hf_config={tmp_path}", "--model.num_heads=8"], world_size=1)


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _drop_tensor(folder, name):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state[name]
    save_file(state, folder / "model.safetensors", {"format": "pt"})


BAD_FOLDERS = [
    ("not-llama", lambda f: _edit_config(f, model_type="mistral"), "model_type='mistral'"),
    ("no-config", lambda f: (f / "config.json").unlink(), "has no config.json"),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), "has no weights"),
    ("missing-tensor", lambda f: _drop_tensor(f, "model.layers.1.mlp.up_proj.weight"),
     "model.layers.1.mlp.up_proj.weight is missing"),
    ("misshapen-tensor", lambda f: _edit_config(f, intermediate_size=128),
     "mlp.gate_proj.weight has shape (96, 64), the model needs (128, 64)"),
    ("attention-bias", lambda f: _edit_config(f, attention_bias=True), "attention_bias=True"),
    ("rope-type", lambda f: _edit_config(f, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
     "RoPE type 'dynamic'"),
]  # fmt: skip


@pytest.mark.parametrize("case, damage, message", BAD_FOLDERS, ids=[b[0] for b in BAD_FOLDERS])
def test_bad_hf_folder_fails_train_with_one_line_and_exit_2(tmp_path, capsys, case, damage,
                                                            message):  # fmt: skip
    from lhdist.cli import main

    folder = tmp_path / "hf"
    random_hf_model(folder, 4, 2, False, None)
    damage(folder)
    capsys.readouterr()  # transformers' own progress lines
    run_dir = tmp_path / "run"
    code = main(["train", f"--model.hf_config={folder}", f"--checkpoint.init_from={folder}",
                 "--lighthouse.enabled=false", "--train.seq_len=512", "--train.steps=1",
                 "--train.stage1_steps=0", "--train.engine=torch", f"--train.run_dir={run_dir}",
                 "--eval.final=false", "--eval.batches=0"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert message in lines[0], lines[0]
    assert not (run_dir / "checkpoints").exists()


def test_vocabulary_the_data_exceeds_is_refused(tmp_path, capsys):
    """The built-in corpus has 258 byte ids; a 200-row embedding cannot hold them."""
    from lhdist.cli import main

    random_hf_model(tmp_path / "hf", 4, 2, False, None, vocab=200)
    capsys.readouterr()
    code = main(["train", f"--model.hf_config={tmp_path / 'hf'}",
                 f"--checkpoint.init_from={tmp_path / 'hf'}", "--lighthouse.enabled=false",
                 "--train.seq_len=512", "--train.engine=torch", "--train.stage1_steps=0",
                 f"--train.run_dir={tmp_path}/r"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "vocab_size=258" in err and "model.vocab_size=200" in err, err


def test_training_starts_from_the_hf_weights(tmp_path):
    """One step at a negligible lr: the run's checkpoint holds the Hugging Face weights."""
    transformers_or_skip()
    from lhdist.eval.checkpoint_model import load_checkpoint_model
    from lhdist.train.loop import train

    random_hf_model(tmp_path / "hf", 4, 2, False, None)
    reference, _ = lhdist_from_hf(tmp_path / "hf")
    hf = tmp_path / "hf"
    flags = [f"--model.hf_config={hf}", f"--checkpoint.init_from={hf}",
             "--lighthouse.enabled=false", "--train.seq_len=512", "--train.steps=1",
             "--train.stage1_steps=0", "--train.engine=torch", "--optim.lr=1e-30",
             "--optim.warmup_steps=0", f"--train.run_dir={tmp_path / 'run'}",
             "--eval.final=false", "--eval.batches=0", "--train.tensorboard=false"]  # fmt: skip
    cfg = load_config(None, flags, world_size=1)
    train(cfg)
    model, _ = load_checkpoint_model(tmp_path / "run/checkpoints/step_00000001", "cpu")
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)
    events = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert any(e.get("event") == "init_from" for e in events)


def _train_worker(rank, world_size, flags):
    from lhdist.train.loop import train

    train(load_config(None, flags, world_size=world_size))


def test_zero3_run_starts_from_the_hf_weights(tmp_path):
    """ZeRO-3 builds the model partitioned; init_from fills it one gathered parameter at a time."""
    pytest.importorskip("deepspeed")
    from lhdist.eval.checkpoint_model import load_checkpoint_model
    from tests.multiprocess import run_ranks

    hf = tmp_path / "hf"
    random_hf_model(hf, 4, 2, True, None)
    reference, _ = lhdist_from_hf(hf)
    flags = [f"--model.hf_config={hf}", f"--checkpoint.init_from={hf}",
             "--lighthouse.enabled=false", "--train.seq_len=512", "--train.steps=1",
             "--train.stage1_steps=0", "--train.engine=deepspeed", "--train.zero_stage=3",
             "--optim.lr=1e-30", "--optim.warmup_steps=0", f"--train.run_dir={tmp_path / 'run'}",
             "--eval.final=false", "--eval.batches=0", "--train.tensorboard=false"]  # fmt: skip
    run_ranks(_train_worker, 2, tmp_path, flags, timeout_s=180)
    model, _ = load_checkpoint_model(tmp_path / "run/checkpoints/step_00000001", "cpu")
    for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)
