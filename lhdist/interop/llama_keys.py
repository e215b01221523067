"""lhdist's Transformer state dict <-> a Hugging Face LlamaForCausalLM state dict: key names and
the q/k row permutation.

lhdist's RoPE rotates interleaved pairs (rows 2i, 2i+1 of a head), transformers' `rotate_half`
pairs row i with row i + D/2; both rotate pair i by the same frequency. So a head's rows
[0, 1, 2, 3, ...] in lhdist are rows [0, D/2, 1, D/2+1, ...] in transformers: q_proj and k_proj
are wq and wk with each head's even rows first, then its odd rows.
"""

from __future__ import annotations

import re

import torch

# lhdist name pattern -> transformers name pattern ({} is the layer index)
LAYER_KEYS = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
GLOBAL_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")


def hf_name(name: str) -> str:
    """The transformers key of lhdist parameter `name`."""
    if name in GLOBAL_KEYS:
        return GLOBAL_KEYS[name]
    match = LAYER_NAME.match(name)
    if not match or match.group(2) not in LAYER_KEYS:
        raise ValueError(f"lhdist parameter {name!r} has no Hugging Face Llama counterpart")
    return f"model.layers.{match.group(1)}.{LAYER_KEYS[match.group(2)]}"


def interleaved_to_half(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """wq/wk rows [heads*D, dim] from lhdist's pair order to transformers' half order."""
    rows, cols = weight.shape
    return (
        weight.view(num_heads, rows // num_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
    )


def half_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half`."""
    rows, cols = weight.shape
    return (
        weight.view(num_heads, 2, rows // num_heads // 2, cols).transpose(1, 2).reshape(rows, cols)
    )


def heads_of(name: str, model) -> int | None:
    """Heads whose rows a permutation reorders: query heads for wq, kv heads for wk."""
    if name.endswith("attention.wq.weight"):
        return model.num_heads
    if name.endswith("attention.wk.weight"):
        return model.num_kv_heads
    return None


def to_hf_state(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """transformers' state dict of lhdist's `state` (`model`: its ModelConfig). Tied embeddings
    drop lm_head (transformers ties it back to embed_tokens)."""
    out = {}
    for name, tensor in state.items():
        if name == "output.weight" and model.tie_embeddings:
            continue
        heads = heads_of(name, model)
        out[hf_name(name)] = interleaved_to_half(tensor, heads) if heads else tensor
    return out


def from_hf_tensor(hf_state, model, name: str) -> torch.Tensor:
    """lhdist's tensor `name` from transformers' `hf_state` (a mapping; ValueError when it lacks
    the tensor). Tied: output.weight is the embedding (an lm_head in the file is not read)."""
    source = hf_name(name)
    if name == "output.weight" and model.tie_embeddings:
        source = GLOBAL_KEYS["tok_embeddings.weight"]
    if source not in hf_state:
        raise ValueError(f"{source} (lhdist {name}) is missing from the Hugging Face weights")
    tensor = hf_state[source]
    heads = heads_of(name, model)
    return half_to_interleaved(tensor, heads) if heads else tensor
