"""Bad input raises a ValueError naming the value and the rule, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention, lighthouse_select


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"topk": 100}, r"topk=100 must be a positive multiple of 128"),
        ({"topk": 0}, r"topk=0"),
        ({"pooling_factor": 3}, r"pooling_factor=3 must be a power of two"),
        ({"pooling_factor": 128}, r"pooling_factor=128 must be a power of two in \[2, 64\]"),
        ({"pooling_factor": 1}, r"pooling_factor=1"),
        ({"num_levels": 1}, r"num_levels=1 must be an integer >= 2"),
        ({"selection": "local"}, r"selection='local' must be one of"),
        ({"scorer": "mlp"}, r"scorer='mlp' must be one of"),
    ],
    ids=["topk-not-128x", "topk-zero", "p-not-pow2", "p-over-64", "p-one", "L1", "sel", "scorer"],
)
def test_spec_rejects_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LighthouseSpec(**{"num_levels": 3, "pooling_factor": 4, "topk": 256, **kwargs})


def _qkv(N=4096, H=2, G=2, D=8, dtype=torch.float32):
    return torch.randn(1, N, H, D, dtype=dtype), *torch.randn(2, 1, N, G, D, dtype=dtype)


@pytest.mark.parametrize(
    ("N", "spec", "match"),
    [
        (4100, LighthouseSpec(3, 4, 256), r"seq_len=4100 must be a positive multiple of .*=16"),
        (4096 + 16, LighthouseSpec(3, 4, 256), r"seq_len=4112 must be divisible by num_tiles"),
        (6144, LighthouseSpec(3, 4, 512), r"each of the 4 tiles 96 level-3 windows .* fewer than"),
        (2048, LighthouseSpec(2, 4, 1024, "global"), r"the sequence 512 level-2 windows"),
    ],
    ids=["N-not-div-cL", "N-not-div-tiles", "too-few-windows-tile", "too-few-windows-global"],
)
def test_attention_rejects_bad_seq_len(N, spec, match):
    q, k, v = _qkv(N)
    with pytest.raises(ValueError, match=match):
        lighthouse_attention(q, k, v, spec)
    with pytest.raises(ValueError, match=match):
        lighthouse_select(q, k, spec)


SPEC = LighthouseSpec(3, 4, 256)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda q, k, v: (q[0], k, v), r"q must be 4-D"),
        (lambda q, k, v: (q, k, v[:, :, :1]), r"k .* and v .* must have the same shape"),
        (lambda q, k, v: (q[:, :2048], k, v), r"must agree on batch, sequence and head dim"),
        (lambda q, k, v: (q[..., :4], k, v), r"must agree on batch, sequence and head dim"),
        (
            lambda q, k, v: (q[:, :, :1], k, v),
            r"query heads H=1 must be a multiple of kv heads G=2",
        ),
        (lambda q, k, v: (q.double(), k, v), r"dtypes differ"),
        (lambda q, k, v: (q, k.long(), v), r"k must be floating point"),
        (lambda q, k, v: (q, k.to("meta"), v.to("meta")), r"devices differ"),
        (lambda q, k, v: (q.tolist(), k, v), r"q must be a torch.Tensor"),
    ],
    ids=[
        "q-3d",
        "kv-shape",
        "seq-mismatch",
        "dim-mismatch",
        "H-not-mult-G",
        "dtype",
        "int",
        "device",
        "not-tensor",
    ],
)
def test_attention_rejects_mismatched_inputs(make, match):
    q, k, v = make(*_qkv())
    with pytest.raises(ValueError, match=match):
        lighthouse_attention(q, k, v, SPEC)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda idx: idx[:, :, :-1], r"indices shape .* must be \[B, G, S\]"),
        (lambda idx: idx.int(), r"indices must be an int64 tensor"),
        (lambda idx: idx + 10_000, r"indices span .* outside the pyramid \[0, 5376\)"),
        (lambda idx: idx - 10_000, r"outside the pyramid"),
    ],
    ids=["short", "int32", "too-large", "negative"],
)
def test_attention_rejects_bad_indices(make, match):
    q, k, v = _qkv()
    idx = lighthouse_select(q, k, SPEC)
    with pytest.raises(ValueError, match=match):
        lighthouse_attention(q, k, v, SPEC, make(idx))
