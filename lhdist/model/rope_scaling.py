"""RoPE frequencies with Llama-3 and YaRN scaling, in the parameters of Hugging Face's
`rope_scaling` (so an imported checkpoint keeps the positions it was trained with).

Pure Python floats (float64): no torch, so the config layer can validate with it.
"""

from __future__ import annotations

import math
from typing import Any

# rope_type -> (keys it needs, keys it may have)
ROPE_SCALING_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama3": (
        ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        (),
    ),
    "yarn": (
        ("factor", "original_max_position_embeddings"),
        ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"),
    ),
}


def check_rope_scaling(scaling: dict[str, Any] | None, key: str = "model.rope_scaling") -> None:
    """ValueError naming the value and the rule for a scaling dict lhdist cannot apply."""
    if scaling is None:
        return
    rope_type = scaling.get("rope_type")
    if rope_type not in ROPE_SCALING_KEYS:
        raise ValueError(
            f"{key}.rope_type={rope_type!r} must be one of {list(ROPE_SCALING_KEYS)} "
            f"(or leave {key} unset for plain RoPE)"
        )
    needed, optional = ROPE_SCALING_KEYS[rope_type]
    missing = [k for k in needed if scaling.get(k) is None]
    if missing:
        raise ValueError(f"{key} with rope_type={rope_type} needs {missing} (got {scaling})")
    unknown = sorted(set(scaling) - {"rope_type", *needed, *optional})
    if unknown:
        raise ValueError(
            f"{key} has unknown keys {unknown} for rope_type={rope_type}; valid: "
            f"{list(needed + optional)}"
        )
    if not scaling["factor"] >= 1 or not scaling["original_max_position_embeddings"] >= 1:
        raise ValueError(
            f"{key}: factor={scaling['factor']} must be >= 1 and original_max_position_embeddings="
            f"{scaling['original_max_position_embeddings']} >= 1"
        )
    if rope_type == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"] > 0:
        raise ValueError(
            f"{key}: llama3 needs high_freq_factor={scaling['high_freq_factor']} > "
            f"low_freq_factor={scaling['low_freq_factor']} > 0"
        )


def inverse_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None = None
) -> tuple[list[float], float]:
    """(head_dim/2 inverse frequencies, attention factor that multiplies cos and sin)."""
    plain = [1.0 / theta ** (i / head_dim) for i in range(0, head_dim, 2)]
    if scaling is None:
        return plain, 1.0
    check_rope_scaling(scaling)
    if scaling["rope_type"] == "llama3":
        return llama3_frequencies(plain, scaling), 1.0
    return yarn_frequencies(head_dim, theta, scaling)


def llama3_frequencies(plain: list[float], s: dict[str, Any]) -> list[float]:
    """Llama 3.1: wavelengths shorter than original/high_freq_factor are kept, longer than
    original/low_freq_factor are stretched by `factor`, and those between are blended."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    original = s["original_max_position_embeddings"]
    out = []
    for inv in plain:
        wavelen = 2 * math.pi / inv
        if wavelen < original / high:
            out.append(inv)
        elif wavelen > original / low:
            out.append(inv / factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append((1 - smooth) * inv / factor + smooth * inv)
    return out


def yarn_frequencies(head_dim: int, theta: float, s: dict[str, Any]) -> tuple[list[float], float]:
    """YaRN: dimensions that turn fewer than beta_slow times over the original context are
    interpolated (divided by `factor`), more than beta_fast times extrapolated (kept), a linear
    ramp between; cos and sin are scaled by the attention factor (0.1 ln(factor) + 1 by default).
    """
    factor, original = s["factor"], s["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention_factor = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a ramp of width zero
    out = []
    for i in range(head_dim // 2):
        keep = 1.0 - min(max((i - low) / (high - low), 0.0), 1.0)  # 1: extrapolate (keep)
        base = theta ** (2 * i / head_dim)
        out.append((1.0 / (factor * base)) * (1 - keep) + (1.0 / base) * keep)
    return out, float(attention_factor)
