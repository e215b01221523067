"""A Hugging Face Llama config.json <-> lhdist's ModelConfig: read and check one, fill the model
dims from it, write one for an export. Torch-free (the config layer imports it).

Both spellings of the RoPE settings are read: transformers 4's `rope_theta` + `rope_scaling` and
transformers 5's `rope_parameters` (which holds rope_theta and rope_type); an export writes both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_JSON = "config.json"
# ModelConfig field -> config.json key, for what fixes the weights' shapes or the math.
MODEL_KEYS = {
    "dim": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "ffn_dim": "intermediate_size",
    "vocab_size": "vocab_size",
    "tie_embeddings": "tie_word_embeddings",
    "norm_eps": "rms_norm_eps",
}
ROPE_FIELDS = ("rope_theta", "rope_scaling")


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a Hugging Face Llama folder; ValueError unless lhdist's Llama can run it."""
    folder = Path(folder)
    path = folder / CONFIG_JSON
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"has no {CONFIG_JSON}"
        raise ValueError(f"Hugging Face folder {folder} {what}")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if hf.get("model_type") != "llama":
        raise ValueError(
            f"{path} has model_type={hf.get('model_type')!r}; lhdist imports only 'llama' "
            "(LlamaForCausalLM)"
        )
    rules = {  # key -> (value lhdist implements, default in LlamaConfig)
        "hidden_act": ("silu", "silu"),
        "attention_bias": (False, False),
        "mlp_bias": (False, False),
        "partial_rotary_factor": (1.0, 1.0),
    }
    for key, (wanted, default) in rules.items():
        if hf.get(key, default) != wanted:
            raise ValueError(f"{path} has {key}={hf[key]!r}; lhdist's Llama needs {wanted!r}")
    heads, dim = hf.get("num_attention_heads"), hf.get("hidden_size")
    if not isinstance(heads, int) or not isinstance(dim, int) or heads < 1 or dim % heads:
        raise ValueError(
            f"{path}: hidden_size={dim} must be num_attention_heads={heads} x head dim"
        )
    head_dim = hf.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        raise ValueError(
            f"{path} has head_dim={head_dim} x num_attention_heads={heads} != hidden_size={dim}; "
            "lhdist needs dim = heads x head_dim"
        )
    return hf


def rope_of(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) of a config.json, in lhdist's form."""
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    params.pop("partial_rotary_factor", None)  # read_hf_config checked it is 1
    if rope_type == "default":
        return theta, None
    if rope_type not in ("llama3", "yarn"):
        raise ValueError(
            f"config.json has RoPE type {rope_type!r}; lhdist implements default, llama3 and yarn"
        )
    # transformers' defaults: original context = max_position_embeddings, factor from their ratio
    params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    if params.get("factor") is None and rope_type == "yarn":
        params["factor"] = (
            hf["max_position_embeddings"] / params["original_max_position_embeddings"]
        )
    return theta, {"rope_type": rope_type, **params}


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig field -> value of a checked config.json (dims, vocabulary, norm_eps, RoPE)."""
    fields = {name: hf.get(key) for name, key in MODEL_KEYS.items()}
    fields["num_kv_heads"] = fields["num_kv_heads"] or fields["num_heads"]
    fields["tie_embeddings"] = bool(fields["tie_embeddings"])  # LlamaConfig's default: False
    fields["norm_eps"] = float(fields["norm_eps"] if fields["norm_eps"] is not None else 1e-6)
    fields["rope_theta"], fields["rope_scaling"] = rope_of(hf)
    return fields


def fill_model_from_hf(model: Any) -> None:
    """model.hf_config: every dim, the vocabulary and norm_eps come from its config.json; the RoPE
    too unless set (a context extension may change it); dims set explicitly must agree.

    A resolved config (every dim set) whose folder is gone, e.g. read back from a checkpoint on
    another machine, is taken as it is."""
    folder = Path(model.hf_config)
    if not (folder / CONFIG_JSON).is_file() and None not in (
        getattr(model, name) for name in (*MODEL_KEYS, "rope_theta")
    ):
        return
    hf = read_hf_config(folder)
    for name, value in model_fields(hf).items():
        mine = getattr(model, name)
        if name in ROPE_FIELDS:
            if mine is None:
                setattr(model, name, value)
        elif name in ("vocab_size", "norm_eps") or mine is None:
            setattr(model, name, value)  # fields with defaults: the folder's value wins
        elif mine != value:
            raise ValueError(
                f"model.{name}={mine} disagrees with {MODEL_KEYS[name]}={value} in "
                f"{folder / CONFIG_JSON} (model.hf_config); drop model.{name} or fix it"
            )


def check_model_matches(model: Any, hf: dict[str, Any], folder: str | Path) -> list[str]:
    """ValueError naming every field of `model` (ModelConfig) that differs from the config.json
    in a way the weights cannot carry; returns notes on RoPE settings that differ (allowed: a
    context extension may change them)."""
    theirs = model_fields(hf)
    wrong = [
        f"model.{name}={getattr(model, name)} vs {MODEL_KEYS[name]}={theirs[name]}"
        for name in MODEL_KEYS
        if getattr(model, name) != theirs[name]
    ]
    if wrong:
        raise ValueError(
            f"checkpoint.init_from={folder}: the configured model differs from its "
            f"{CONFIG_JSON}: {'; '.join(wrong)} (set model.hf_config={folder} to take its dims)"
        )
    return [
        f"model.{name}={getattr(model, name)} (the checkpoint's: {theirs[name]})"
        for name in ROPE_FIELDS
        if getattr(model, name) != theirs[name]
    ]


def hf_config_of(
    cfg: Any, torch_dtype: str, eos_id: int | None, pad_id: int | None, bos_id: int | None
) -> dict[str, Any]:
    """The config.json of an exported run (`cfg`: its resolved lhdist Config)."""
    m, seq_len = cfg.model, cfg.train.seq_len
    scaling = m.rope_scaling
    max_positions = seq_len
    if scaling is not None:
        original = scaling["original_max_position_embeddings"]
        # transformers 4 derives YaRN's factor from max_position / original when both are set.
        reach = original * scaling["factor"] if scaling["rope_type"] == "yarn" else original
        max_positions = max(seq_len, int(reach))
    rope_parameters = {"rope_type": "default", "rope_theta": m.rope_theta}
    if scaling is not None:
        rope_parameters = {**scaling, "rope_theta": m.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": m.dim,
        "intermediate_size": m.ffn_dim,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "head_dim": m.dim // m.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": dict(scaling) if scaling is not None else None,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": bool(m.tie_embeddings),
        "vocab_size": m.vocab_size,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": m.init_std,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": torch_dtype,
    }
