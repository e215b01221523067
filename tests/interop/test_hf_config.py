"""config.json reading: both RoPE spellings (transformers 4 and 5), the shipped continued
pre-training config against Llama-3.2-1B's published config.json, and an export's config."""

import json

import pytest

from lhdist.config import load_config
from lhdist.interop.hf_config import check_model_matches, hf_config_of, read_hf_config, rope_of

# Llama-3.2-1B's config.json (the fields lhdist reads), as published with the model.
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu", "rms_norm_eps": 1e-05,
    "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": True,
    "vocab_size": 128256, "attention_bias": False, "mlp_bias": False,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}  # fmt: skip
CPT_CONFIG = "configs/llama3.2_1b_cpt-hf_128k_lh-l3p4k2048_cp2dp4.yaml"


def test_both_rope_spellings_read_the_same():
    v4 = {"rope_theta": 5e5, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 64}}  # fmt: skip
    v5 = {"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                              "original_max_position_embeddings": 64}}  # fmt: skip
    want = (5e5, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    assert rope_of(v4) == rope_of(v5) == want
    assert rope_of({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) == (1e4, None)
    assert rope_of({}) == (10000.0, None)  # LlamaConfig's defaults


def test_shipped_continued_pretraining_config_matches_llama_32_1b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_32_1B))
    cfg = load_config(CPT_CONFIG, world_size=8)
    assert cfg.checkpoint.init_from and cfg.train.seq_len == 131072
    assert check_model_matches(cfg.model, read_hf_config(tmp_path), tmp_path) == []
    # the export of such a run says so in its config.json
    exported = hf_config_of(cfg, "bfloat16", eos_id=128001, pad_id=None, bos_id=128000)
    for key in ("hidden_size", "num_key_value_heads", "rope_theta", "rope_scaling",
                "tie_word_embeddings", "vocab_size", "max_position_embeddings"):  # fmt: skip
        assert exported[key] == LLAMA_32_1B[key], key


def test_export_config_covers_the_trained_length_and_yarn_reach():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    cfg = load_config(None, [f"--model.rope_scaling={json.dumps(yarn)}", "--train.seq_len=2048"],
                      world_size=1)  # fmt: skip
    exported = hf_config_of(cfg, "float32", 256, 257, None)
    assert exported["max_position_embeddings"] == 2048
    cfg.train.seq_len = 128
    # transformers 4 reads YaRN's factor as max_position / original: keep that ratio = factor
    assert hf_config_of(cfg, "float32", 256, 257, None)["max_position_embeddings"] == 256


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"head_dim": 128}, "head_dim=128 x num_attention_heads=32 != hidden_size=2048"),
    ({"model_type": "qwen2"}, "model_type='qwen2'"),
], ids=["act", "head-dim", "model-type"])  # fmt: skip
def test_configs_lhdist_cannot_run_are_refused(tmp_path, change, message):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_32_1B, **change}))
    with pytest.raises(ValueError, match="config.json") as error:
        read_hf_config(tmp_path)
    assert message in str(error.value)
