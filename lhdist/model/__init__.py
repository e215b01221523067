"""Plain single-device Llama-3 with an injected attention function."""

from lhdist.model.attention import AttentionFn, causal_attention
from lhdist.model.llama import Transformer, build_model
from lhdist.model.rope import apply_rope, rope_angles

__all__ = [
    "AttentionFn",
    "Transformer",
    "apply_rope",
    "build_model",
    "causal_attention",
    "rope_angles",
]
