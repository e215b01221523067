"""train.compile: blocks compiled through one graph per attention kind, same losses as eager,
and a one-line error before training where torch.compile cannot work.

On CPU the compiled runs use LHDIST_COMPILE_BACKEND=aot_eager: Dynamo and AOTAutograd trace
exactly as with inductor (graph breaks and recompiles show the same), but no kernels are
generated; inductor on this CPU needs ~40 s per graph. Inductor itself runs in the gpu tests.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lhdist.config import load_config
from lhdist.model import build_model
from lhdist.parallel.parallelize import parallelize_model
from lhdist.train.compile_check import check_compile_available
from tests.multiprocess import run_ranks
from tests.train.test_parallelize import OVERRIDES
from tests.train.test_training import FAST, read_events, read_steps


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv("LHDIST_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def loss_and_grads(cfg, router_stage: int, ids):
    model = build_model(cfg.model, seed=0)
    router = parallelize_model(model, None, cfg)
    router.set_stage(router_stage)
    loss = model(ids, torch.arange(ids.shape[1]), labels=ids)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize(
    "ac, stage", list(itertools.product(["false", "ffn", "full"], [1, 2])),
    ids=lambda v: str(v),
)  # fmt: skip
def test_compiled_blocks_give_eager_losses_and_gradients(aot_eager, ac, stage):
    ids = torch.randint(0, 256, (1, 512), generator=torch.Generator().manual_seed(stage))
    eager = load_config(overrides=[*OVERRIDES, f"--train.activation_checkpointing={ac}"])
    compiled = load_config(overrides=[*OVERRIDES, f"--train.activation_checkpointing={ac}",
                                      "--train.compile=true"])  # fmt: skip
    loss, grads = loss_and_grads(eager, stage, ids)
    loss_c, grads_c = loss_and_grads(compiled, stage, ids)
    torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=0)
    for a, b in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compiled_blocks_share_one_graph_per_attention_kind(aot_eager):
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = load_config(overrides=[*OVERRIDES, "--train.compile=true"])
    model = build_model(cfg.model, seed=0)
    router = parallelize_model(model, None, cfg)
    ids = torch.randint(0, 256, (1, 512))
    for stage in (1, 2, 1):
        router.set_stage(stage)
        model(ids, torch.arange(512), labels=ids).backward()
    with torch.no_grad(), router.evaluating(1):  # evals run the blocks eagerly
        model(ids, torch.arange(512), labels=ids)
    # 4 blocks (2 Lighthouse, 2 dense), both stages: one graph for each attention function,
    # none per layer index, no recompile at the stage switch or for an eval, no graph break.
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"]


def _train_worker(rank, world_size, overrides):
    from lhdist.config import load_config
    from lhdist.train.loop import train

    train(load_config(overrides=overrides, world_size=world_size))


def test_compile_on_and_off_train_to_the_same_losses(tmp_path, aot_eager):
    common = [*FAST, "--train.steps=4", "--train.stage1_steps=2", "--train.engine=torch",
              "--eval.batches=0"]  # fmt: skip
    losses = {}
    for flag in ("false", "true"):
        run_dir = tmp_path / f"compile_{flag}"
        overrides = [*common, f"--train.compile={flag}", f"--train.run_dir={run_dir}"]
        run_ranks(_train_worker, 1, tmp_path / f"rdv_{flag}", overrides, timeout_s=300)
        losses[flag] = [r["loss"] for _, r in sorted(read_steps(run_dir).items())]
        # The dtype probe sits outside compiled blocks (a hook inside would break the graph).
        assert [e["dtype"] for e in read_events(run_dir, "compute_dtype")] == ["float32"]
    assert len(losses["true"]) == 4
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)


def test_compile_without_a_working_backend_fails_before_training(tmp_path, monkeypatch):
    # As on a machine without a C++ compiler (CPU inductor's requirement).
    import torch._inductor.config as inductor_config

    monkeypatch.delenv("LHDIST_COMPILE_BACKEND", raising=False)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    cfg = load_config(overrides=["--train.compile=true", "--train.device=cpu",
                                 f"--train.run_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(ValueError) as error:
        check_compile_available(cfg, "cpu")
    message = str(error.value)
    assert message.startswith("train.compile=true but torch.compile cannot work here")
    assert "C++ compiler" in message and "train.compile=false" in message
    assert "\n" not in message
    from lhdist.train.loop import train

    with pytest.raises(ValueError, match="train.compile=true"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training
    check_compile_available(load_config(overrides=["--train.compile=false"]), "cpu")


def test_compile_with_zero3_is_rejected_at_load_time():
    with pytest.raises(ValueError, match="train.compile=true with train.engine=deepspeed"):
        load_config(overrides=["--train.compile=true", "--train.zero_stage=3"])


def test_compile_with_an_unknown_backend_names_it(monkeypatch):
    monkeypatch.setenv("LHDIST_COMPILE_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="'no_such_backend' is not a torch.compile backend"):
        check_compile_available(load_config(overrides=["--train.compile=true"]), "cpu")


# --- GPU (inductor) -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_compile_on_and_off_same_losses_within_bf16_noise(tmp_path):
    """Inductor-compiled blocks on CUDA (bf16 autocast) train like eager: losses of 6 steps
    (3 Lighthouse, 3 dense) within bf16 noise (fused kernels round differently)."""
    common = [*FAST, "--train.steps=6", "--train.stage1_steps=3", "--train.engine=torch",
              "--train.seq_len=4096", "--lighthouse.num_levels=3", "--lighthouse.pooling_factor=4",
              "--lighthouse.topk=256", "--eval.batches=0", "--train.device=cuda"]  # fmt: skip
    losses = {}
    for flag in ("false", "true"):
        run_dir = tmp_path / f"compile_{flag}"
        overrides = [*common, f"--train.compile={flag}", f"--train.run_dir={run_dir}"]
        run_ranks(_train_worker, 1, tmp_path / f"rdv_{flag}", overrides, timeout_s=600)
        losses[flag] = [r["loss"] for _, r in sorted(read_steps(run_dir).items())]
    assert len(losses["true"]) == 6
    assert losses["true"] == pytest.approx(losses["false"], rel=2e-2), losses


def test_compile_under_cp2_runs_attention_eagerly_and_matches(tmp_path, aot_eager):
    """cp=2: the ring and Lighthouse CP attention (collectives) run eagerly between the compiled
    parts of each block; the losses equal the eager cp=2 run's."""
    common = [*FAST, "--train.steps=3", "--train.stage1_steps=2", "--train.engine=torch",
              "--eval.batches=0", "--parallel.cp_degree=2", "--train.seq_len=1024",
              "--lighthouse.topk=512"]  # fmt: skip
    losses = {}
    for flag in ("false", "true"):
        run_dir = tmp_path / f"cp2_compile_{flag}"
        overrides = [*common, f"--train.compile={flag}", f"--train.run_dir={run_dir}"]
        run_ranks(_train_worker, 2, tmp_path / f"rdv_cp2_{flag}", overrides, timeout_s=300)
        losses[flag] = [r["loss"] for _, r in sorted(read_steps(run_dir).items())]
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-5)
