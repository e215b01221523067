"""`lhdist check`'s static memory per engine and ZeRO stage, as DeepSpeed (0.19.8) allocates it
under the engine's config: fp32 master + AdamW partitions, a reduce bucket capped at the model."""

import pytest

from lhdist.check import REDUCE_BUCKET, estimate_memory, load_for_check, param_count
from lhdist.train.engine import deepspeed_config

QUALITY_25M = "configs/quality_32k_25m.yaml"


def static(engine, stage, world=1):
    overrides = [f"--train.engine={engine}", f"--train.zero_stage={stage}",
                 "--train.stage1_steps=0", f"--parallel.dp_degree={world}"]  # fmt: skip
    cfg = load_for_check(QUALITY_25M, overrides, world)
    mem = estimate_memory(cfg, "cuda")
    return cfg, (mem.parameters, mem.gradients, mem.optimizer)


def test_check_state_bytes_per_zero_stage_on_one_rank():
    cfg, torch_state = static("torch", 0)
    n = param_count(cfg)
    assert torch_state == (4 * n, 4 * n, 8 * n)
    assert static("deepspeed", 0)[1] == torch_state  # no ZeRO: DeepSpeed runs the torch AdamW
    assert static("deepspeed", 1)[1] == (4 * n, 4 * n, 12 * n)  # bucket, master + m + v
    assert static("deepspeed", 2)[1] == (4 * n, 8 * n, 12 * n)  # + the gradient partition
    params3, grads3, opt3 = static("deepspeed", 3)[1]
    assert (grads3, opt3) == (8 * n, 12 * n) and params3 == 8 * n  # partition + prefetched


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_check_zero_partitions_over_the_gradient_group(stage):
    cfg, (params, grads, opt) = static("deepspeed", stage, world=8)
    n = param_count(cfg)
    assert opt == 12 * n // 8
    assert params == (4 * n if stage < 3 else 4 * n // 8 + 4 * n)  # prefetch > a 25M model
    assert grads == 4 * n + (0 if stage == 1 else 4 * n // 8)


def test_engine_reduce_bucket_is_what_check_counts():
    cfg, _ = static("deepspeed", 2)
    bucket = deepspeed_config(cfg, "cuda")["zero_optimization"]["reduce_bucket_size"]
    assert bucket == param_count(cfg) < REDUCE_BUCKET  # capped: no 1.9 GiB empty bucket
    assert deepspeed_config(cfg, "cuda")["torch_autocast"]["enabled"] is True
    assert "torch_autocast" not in deepspeed_config(cfg, "cpu")  # train.dtype auto: fp32 on CPU
