"""The lr schedule, the stage schedule and the FLOP accounting."""

import math

import pytest

from lhdist.config import load_config
from lhdist.train.flops import attention_flops_per_token, flops_per_token, matmul_params
from lhdist.train.schedule import dense_step, lr_factor, stage_at


def cfg_with(*overrides):
    return load_config(
        overrides=[
            "--train.steps=100",
            "--train.stage1_steps=60",
            "--optim.warmup_steps=10",
            *overrides,
        ]
    )


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_warmup_then_decay_to_min(schedule):
    cfg = cfg_with(f"--optim.schedule={schedule}", "--optim.min_lr_ratio=0.1")
    assert [lr_factor(s, cfg) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    end = {"constant": 1.0, "cosine": 0.1, "linear": 0.1}[schedule]
    assert math.isclose(lr_factor(100, cfg), end)
    middle = {"constant": 1.0, "cosine": 0.55, "linear": 0.55}[schedule]
    assert math.isclose(lr_factor(55, cfg), middle)


def test_stage_switches_after_stage1_steps():
    cfg = cfg_with()
    assert [stage_at(s, cfg) for s in (1, 60, 61, 100)] == [1, 1, 2, 2]
    assert stage_at(1, cfg_with("--lighthouse.enabled=false")) == 2
    assert stage_at(1, cfg_with("--lighthouse.full_attn_layers=[0, 1, 2, 3]")) == 2


def test_dense_every_runs_every_nth_stage1_step_dense_and_keeps_its_stage():
    cfg = cfg_with("--lighthouse.dense_every=4")
    dense = [s for s in range(1, 101) if dense_step(s, cfg)]
    assert dense == list(range(4, 61, 4))  # stage 2 is dense anyway: not a "dense step"
    assert [stage_at(s, cfg) for s in (4, 60, 61)] == [1, 1, 2]
    assert not any(dense_step(s, cfg_with()) for s in range(1, 101))


@pytest.mark.parametrize("value", [1, -3])
def test_dense_every_must_be_0_or_at_least_2(value):
    with pytest.raises(ValueError, match=f"lighthouse.dense_every={value} must be 0"):
        cfg_with(f"--lighthouse.dense_every={value}")


def test_flops_dense_and_executed():
    cfg = cfg_with()
    n = cfg.train.seq_len
    m = cfg.model
    assert matmul_params(cfg) == m.num_layers * (128 * 32 * (8 + 4) + 3 * 128 * 384) + 128 * 320
    dense, executed = flops_per_token(cfg, stage=2, selected_len=1152)
    assert dense == executed == 6 * matmul_params(cfg) + 4 * 6 * 128 * n
    dense1, executed1 = flops_per_token(cfg, stage=1, selected_len=1152)
    assert dense1 == dense
    saved = 2 * (attention_flops_per_token(cfg, n) - attention_flops_per_token(cfg, 1152))
    assert math.isclose(executed1, dense - saved)


@pytest.mark.parametrize("shape, middle", [("linear", 0.55), ("cosine", 0.55)])
def test_wsd_warms_up_holds_then_decays_over_the_last_steps(shape, middle):
    cfg = cfg_with(
        "--optim.schedule=wsd",
        "--optim.decay_steps=20",
        f"--optim.decay_shape={shape}",
        "--optim.min_lr_ratio=0.1",
    )
    assert [lr_factor(s, cfg) for s in (5, 10, 11, 50, 80)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert math.isclose(lr_factor(90, cfg), middle)
    assert math.isclose(lr_factor(100, cfg), 0.1)
    assert lr_factor(81, cfg) < 1.0


def test_wsd_needs_decay_steps_inside_the_run():
    with pytest.raises(ValueError, match="decay_steps"):
        cfg_with("--optim.schedule=wsd", "--optim.decay_steps=0")
    with pytest.raises(ValueError, match="decay_steps"):
        cfg_with("--optim.schedule=wsd", "--optim.decay_steps=95")


def test_resume_warmup_ramps_the_lr_after_the_switch_only():
    cfg = cfg_with("--optim.schedule=constant", "--optim.resume_warmup_steps=10")
    assert [lr_factor(s, cfg) for s in (10, 60, 61, 65, 70, 71)] == [1.0, 1.0, 0.1, 0.5, 1.0, 1.0]
    dense = cfg_with(
        "--optim.schedule=constant", "--optim.resume_warmup_steps=10", "--lighthouse.enabled=false"
    )
    assert lr_factor(61, dense) == 1.0  # no switch, no re-warmup
