"""Llama-3 model: shapes, RoPE by position ids, GQA, and equality with a naive reference."""

import math

import pytest
import torch

from lhdist.config import MODEL_FLAVORS, ModelConfig, load_config
from lhdist.model import apply_rope, build_model, causal_attention, rope_angles


def tiny_args(**changes) -> ModelConfig:
    cfg = load_config(overrides=["--train.steps=2", "--train.stage1_steps=1"], world_size=1)
    for key, value in changes.items():
        setattr(cfg.model, key, value)
    return cfg.model


def naive_forward(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Obviously correct fp64 Llama forward: complex RoPE, repeated kv, explicit masked softmax."""
    a = model.args
    hd = a.dim // a.num_heads
    n = input_ids.shape[1]
    w = {k: v.double() for k, v in model.state_dict().items()}
    freqs = 1.0 / a.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(n, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + a.norm_eps) * weight

    def rope(x):  # x [B, N, heads, hd]
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], hd // 2, 2).contiguous())
        return torch.view_as_real(xc * rot[None, :, None, :]).flatten(-2)

    h = w["tok_embeddings.weight"][input_ids]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(a.num_layers):
        p = f"layers.{i}."
        x = rms(h, w[p + "attention_norm.weight"])
        q = (x @ w[p + "attention.wq.weight"].T).unflatten(-1, (a.num_heads, hd))
        k = (x @ w[p + "attention.wk.weight"].T).unflatten(-1, (a.num_kv_heads, hd))
        v = (x @ w[p + "attention.wv.weight"].T).unflatten(-1, (a.num_kv_heads, hd))
        q, k = rope(q), rope(k)
        rep = a.num_heads // a.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        attn = torch.einsum("bhqk,bkhd->bqhd", probs, v).flatten(-2)
        h = h + attn @ w[p + "attention.wo.weight"].T
        x = rms(h, w[p + "ffn_norm.weight"])
        gate = x @ w[p + "feed_forward.w1.weight"].T
        up = x @ w[p + "feed_forward.w3.weight"].T
        h = h + (gate * torch.sigmoid(gate) * up) @ w[p + "feed_forward.w2.weight"].T
    out_w = w["tok_embeddings.weight"] if a.tie_embeddings else w["output.weight"]
    return rms(h, w["norm.weight"]) @ out_w.T


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_model_dense_equals_naive_reference(tie):
    model = build_model(tiny_args(tie_embeddings=tie, num_layers=2), seed=3)
    ids = torch.randint(0, model.args.vocab_size, (2, 48))
    logits = model(ids, torch.arange(48))
    assert logits.shape == (2, 48, model.args.vocab_size)
    torch.testing.assert_close(logits.double(), naive_forward(model, ids), atol=2e-5, rtol=1e-4)


def test_model_embeddings_tied_or_untied():
    tied = build_model(tiny_args(tie_embeddings=True))
    untied = build_model(tiny_args(tie_embeddings=False))
    assert tied.output.weight is tied.tok_embeddings.weight
    assert untied.output.weight is not untied.tok_embeddings.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == tied.args.vocab_size * tied.args.dim


def test_model_same_seed_same_weights():
    a, b = build_model(tiny_args(), seed=7), build_model(tiny_args(), seed=7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_rope_by_positions_equals_unsharded_zigzag_shard():
    torch.manual_seed(0)
    n, hd = 64, 16
    x = torch.randn(2, n, 3, hd)
    cos, sin = rope_angles(torch.arange(n), hd, 10000.0)
    full = apply_rope(x, cos, sin)
    chunks = torch.arange(n).chunk(4)
    positions = torch.cat([chunks[1], chunks[2]])  # rank 1 of a cp=2 zigzag layout
    cos_s, sin_s = rope_angles(positions, hd, 10000.0)
    torch.testing.assert_close(apply_rope(x[:, positions], cos_s, sin_s), full[:, positions])


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_angles(torch.tensor([pq]), 32, 500000.0)
        ck, sk = rope_angles(torch.tensor([pk]), 32, 500000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(10, 3), score(1_000_010, 1_000_003), atol=1e-4, rtol=1e-4)


def test_model_sharded_positions_equal_unsharded_with_positional_attention():
    """With a per-token attention (identity on v), a CP shard's logits equal the slice of the
    whole sequence's logits: RoPE comes only from the positions passed in."""
    model = build_model(tiny_args(num_heads=4, num_kv_heads=4, num_layers=2), seed=1)
    model.set_attention(lambda q, k, v, layer_idx: v + q)
    ids = torch.randint(0, 256, (1, 32))
    full = model(ids, torch.arange(32))
    positions = torch.tensor([8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23])
    shard = model(ids[:, positions], positions)
    torch.testing.assert_close(shard, full[:, positions])


def test_causal_attention_gqa_equals_repeated_kv():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 40, 8, 16), torch.randn(2, 40, 2, 16), torch.randn(2, 40, 2, 16)
    expected = causal_attention(q, k.repeat_interleave(4, 2), v.repeat_interleave(4, 2))
    torch.testing.assert_close(causal_attention(q, k, v), expected)


def test_model_calls_injected_attention_per_layer_with_bnhd_shapes():
    model = build_model(tiny_args(num_layers=3, num_heads=4, num_kv_heads=2))
    calls = []

    def spy(q, k, v, layer_idx):
        calls.append((layer_idx, tuple(q.shape), tuple(k.shape)))
        return causal_attention(q, k, v)

    model.set_attention(spy)
    model(torch.zeros(1, 16, dtype=torch.long), torch.arange(16))
    assert calls == [(i, (1, 16, 4, 32), (1, 16, 2, 32)) for i in range(3)]


@pytest.mark.parametrize("flavor", list(MODEL_FLAVORS))
def test_model_flavor_builds_on_meta(flavor):
    cfg = load_config(
        overrides=[
            f"--model.flavor={flavor}",
            "--train.steps=2",
            "--train.stage1_steps=1",
            "--train.seq_len=16384",
        ]
    )
    model = build_model(cfg.model, device="meta")
    non_embedding = sum(
        p.numel()
        for n, p in model.named_parameters()
        if "tok_embeddings" not in n and "output" not in n
    )
    expected = {"tiny": 0.78e6, "270m": 264e6, "530m": 516e6, "1b": 973e6, "8b": 6.98e9}[flavor]
    assert abs(non_embedding - expected) / expected < 0.02, non_embedding
