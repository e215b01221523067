"""RoPE scaling (llama3, yarn): the rules on their own, and equality with transformers'
frequency functions on Llama-3.2-1B's settings and on YaRN variants."""

import math

import pytest
import torch

from lhdist.model.rope import rope_angles
from lhdist.model.rope_scaling import check_rope_scaling, inverse_frequencies

LLAMA32 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
YARNS = {
    "yarn-f4": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    "yarn-f16-betas-no-truncate": {"rope_type": "yarn", "factor": 16.0, "beta_fast": 24.0,
                                   "beta_slow": 2.0, "truncate": False,
                                   "original_max_position_embeddings": 8192},
    "yarn-mscale": {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                    "original_max_position_embeddings": 2048},
    "yarn-attention-factor": {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3,
                              "original_max_position_embeddings": 2048},
}  # fmt: skip


def test_llama3_keeps_short_wavelengths_and_stretches_long_ones():
    plain, _ = inverse_frequencies(64, 500000.0)
    scaled, factor = inverse_frequencies(64, 500000.0, LLAMA32)
    assert factor == 1.0
    for p, s in zip(plain, scaled):
        wavelen = 2 * math.pi / p
        if wavelen < 8192 / 4:
            assert s == p
        elif wavelen > 8192 / 1:
            assert s == pytest.approx(p / 32)
        else:
            assert p / 32 < s < p
    assert scaled[0] == plain[0] and scaled[-1] == pytest.approx(plain[-1] / 32)


def test_yarn_scales_cos_and_sin_by_its_attention_factor():
    scaling = YARNS["yarn-f4"]
    _, factor = inverse_frequencies(64, 10000.0, scaling)
    assert factor == pytest.approx(0.1 * math.log(4.0) + 1.0)
    cos, sin = rope_angles(torch.arange(5), 64, 10000.0, scaling)
    assert torch.allclose(cos**2 + sin**2, torch.full_like(cos, factor**2), atol=1e-5)


BAD = [
    ({"rope_type": "dynamic", "factor": 2.0}, "rope_type='dynamic' must be one of"),
    ({"rope_type": "llama3", "factor": 8.0}, "needs ['low_freq_factor'"),
    ({**LLAMA32, "beta_fast": 3}, "unknown keys ['beta_fast']"),
    ({**LLAMA32, "factor": 0.5}, "factor=0.5 must be >= 1"),
    ({**LLAMA32, "low_freq_factor": 4.0}, "high_freq_factor=4.0 > low_freq_factor=4.0"),
]


@pytest.mark.parametrize("scaling, message", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_rope_scaling_is_refused_at_config_load(scaling, message):
    from lhdist.config import load_config

    with pytest.raises(ValueError, match="model.rope_scaling") as error:
        load_config(None, [f"--model.rope_scaling={scaling}"], world_size=1)
    assert message in str(error.value)
    check_rope_scaling(None)  # plain RoPE needs nothing


def _transformers_frequencies(scaling, head_dim, theta):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install -e .[dev])"
    )
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    reach = int(scaling["original_max_position_embeddings"] * scaling["factor"])
    config = transformers.LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=theta,
        rope_scaling=dict(scaling), max_position_embeddings=reach,
    )  # fmt: skip
    inv_freq, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
    return inv_freq.double(), factor


@pytest.mark.parametrize("name", ["llama3-3.2-1b", *YARNS])
@pytest.mark.parametrize("head_dim, theta", [(64, 500000.0), (128, 10000.0)], ids=["d64", "d128"])
def test_frequencies_match_transformers(name, head_dim, theta):
    scaling = LLAMA32 if name.startswith("llama3") else YARNS[name]
    want, want_factor = _transformers_frequencies(scaling, head_dim, theta)
    got, factor = inverse_frequencies(head_dim, theta, scaling)
    # transformers computes in fp32, lhdist in fp64
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-6, atol=0)
    assert factor == pytest.approx(want_factor, rel=1e-6)
