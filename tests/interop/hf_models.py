"""Builders shared by the interop tests: tiny Llama shapes in both worlds, an lhdist checkpoint
written without training, and an lhdist model started from a Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lhdist.config import load_config
from lhdist.model import build_model

VOCAB = 320
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # fmt: skip
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 16.0, "beta_slow": 1.0}  # fmt: skip
# (id, num_heads, num_kv_heads, tied, rope_scaling)
SHAPES = [
    ("gqa-tied", 4, 2, True, None),
    ("mha-untied", 4, 4, False, None),
    ("gqa-untied-llama3", 4, 1, False, LLAMA3),
    ("gqa-tied-yarn", 4, 2, True, YARN),
]
SHAPE_IDS = [s[0] for s in SHAPES]


def transformers_or_skip():
    return pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install -e .[dev])"
    )


def lhdist_config(heads, kv_heads, tied, scaling, *extra):
    """A resolved single-process config of a 2-layer, dim-64 Llama."""
    flags = ["--model.dim=64", "--model.num_layers=2", f"--model.num_heads={heads}",
             f"--model.num_kv_heads={kv_heads}", "--model.ffn_dim=96",
             f"--model.vocab_size={VOCAB}",
             f"--model.tie_embeddings={str(tied).lower()}", "--lighthouse.enabled=false",
             "--train.seq_len=64", *extra]  # fmt: skip
    if scaling is not None:
        flags.append(f"--model.rope_scaling={json.dumps(scaling)}")
    return load_config(None, flags, world_size=1)


def random_lhdist_model(cfg, seed=0):
    """Weights larger than the init's so every layer moves the logits."""
    model = build_model(cfg.model, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def write_checkpoint(path: Path, cfg, model, stage=2, step=5) -> Path:
    """A torch-engine checkpoint directory as the training loop lays it out (weights only)."""
    path.mkdir(parents=True)
    meta = {"step": step, "stage": stage, "world_size": 1, "dp_degree": 1, "cp_degree": 1,
            "engine": "torch", "zero_stage": cfg.train.zero_stage}  # fmt: skip
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "config.yaml").write_text(cfg.to_yaml())
    torch.save({"model": model.state_dict()}, path / "engine.pt")
    return path


def random_hf_model(folder: Path, heads, kv_heads, tied, scaling, vocab=VOCAB, seed=0):
    """A random LlamaForCausalLM saved by transformers into `folder`."""
    transformers = transformers_or_skip()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
        rope_theta=10000.0, rope_scaling=dict(scaling) if scaling else None,
        tie_word_embeddings=tied, initializer_range=0.1, rms_norm_eps=1e-5,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a mapped-wrong norm shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


def lhdist_from_hf(folder: Path, *extra):
    """(lhdist model, config) started from `folder` the way a run with init_from is."""
    from lhdist.interop.hf_init import check_init_from

    cfg = load_config(None, [f"--model.hf_config={folder}", f"--checkpoint.init_from={folder}",
                             "--lighthouse.enabled=false", "--train.seq_len=64", *extra],
                      world_size=1)  # fmt: skip
    init = check_init_from(cfg)
    model = build_model(cfg.model, seed=1)
    init.load_into(model)
    return model.eval(), cfg


def lhdist_greedy(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation of `ids` [1, N] by full forwards (no cache)."""
    for _ in range(new_tokens):
        logits = model(ids, torch.arange(ids.shape[1]))
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids
