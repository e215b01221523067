"""parallelize_model on one rank: which attention each layer runs, the stage flip, checkpointing."""

import pytest
import torch

from lhdist.config import load_config
from lhdist.model import build_model, causal_attention
from lhdist.ops import LighthouseSpec, lighthouse_attention
from lhdist.parallel.parallelize import parallelize_model

OVERRIDES = [
    "--train.steps=4",
    "--train.stage1_steps=2",
    "--train.seq_len=512",
    "--lighthouse.num_levels=2",
    "--lighthouse.pooling_factor=2",
]


def test_router_lighthouse_in_sparse_layers_until_stage_2():
    cfg = load_config(overrides=OVERRIDES)
    model = build_model(cfg.model, seed=0)
    router = parallelize_model(model, None, cfg)
    assert [router.is_sparse(i) for i in range(4)] == [False, True, True, False]
    q, k, v = torch.randn(1, 512, 4, 32), torch.randn(1, 512, 2, 32), torch.randn(1, 512, 2, 32)
    spec = LighthouseSpec(2, 2, 128)
    torch.testing.assert_close(router(q, k, v, 1), lighthouse_attention(q, k, v, spec))
    torch.testing.assert_close(router(q, k, v, 0), causal_attention(q, k, v))
    params_before = [id(p) for p in model.parameters()]
    router.set_stage(2)
    assert not any(router.is_sparse(i) for i in range(4))
    torch.testing.assert_close(router(q, k, v, 1), causal_attention(q, k, v))
    assert [id(p) for p in model.parameters()] == params_before  # the optimizer keeps its params
    with pytest.raises(ValueError, match="stage=3"):
        router.set_stage(3)


def test_lighthouse_disabled_means_dense_everywhere():
    cfg = load_config(overrides=[*OVERRIDES, "--lighthouse.enabled=false"])
    router = parallelize_model(build_model(cfg.model), None, cfg)
    assert not any(router.is_sparse(i) for i in range(4))


@pytest.mark.parametrize("stage", [1, 2])
def test_activation_checkpointing_gives_identical_gradients(stage):
    ids = torch.randint(0, 256, (1, 512))
    grads = []
    modes = (False, True, "none", "ffn", "full")  # the booleans of older configs still work
    for ac in modes:
        cfg = load_config(overrides=[*OVERRIDES, f"--train.activation_checkpointing={ac}"])
        model = build_model(cfg.model, seed=0)
        router = parallelize_model(model, None, cfg)
        router.set_stage(stage)
        model(ids, torch.arange(512)).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_activation_checkpointing_recomputes_what_its_mode_says():
    """ffn recomputes only the SwiGLU branch, full the whole block (counted forward calls; pre-
    hooks, since a recompute stops as soon as it has what the backward needs)."""
    ids = torch.randint(0, 256, (1, 512))
    for mode, ffn_calls, attention_calls in (("none", 4, 4), ("ffn", 8, 4), ("full", 8, 8)):
        cfg = load_config(overrides=[*OVERRIDES, f"--train.activation_checkpointing={mode}"])
        model = build_model(cfg.model, seed=0)
        calls = {"ffn": 0, "attention": 0}
        for block in model.layers:
            for name in calls:
                module = block.feed_forward if name == "ffn" else block.attention
                module.register_forward_pre_hook(
                    lambda *a, _name=name, _calls=calls: _calls.__setitem__(
                        _name, _calls[_name] + 1
                    )
                )
        parallelize_model(model, None, cfg)
        model(ids, torch.arange(512)).logsumexp(-1).mean().backward()
        assert (calls["ffn"], calls["attention"]) == (ffn_calls, attention_calls), mode
