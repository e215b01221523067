"""The engine's forward runs in the dtype `train.dtype` resolves to, for both engines and every
ZeRO stage: DeepSpeed turns an outer autocast off unless its config enables its own (issue 15:
fp32 activations on the GPU and an out-of-memory SDPA).

DeepSpeed detects the outer autocast with `torch.is_autocast_enabled()`, which without an
argument asks about CUDA only, so on CPU it never sees (nor disables) the loop's autocast. The
worker makes that call ask about CPU, so the engine behaves on CPU as it does on a GPU."""

import pytest

from tests.multiprocess import run_ranks

ENGINES = [("torch", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2), ("deepspeed", 3)]


def ask_about_cpu_autocast() -> None:
    """Make DeepSpeed's device-less autocast query see a CPU autocast, as it sees CUDA's."""
    import torch

    asks = torch.is_autocast_enabled

    def is_autocast_enabled(device_type=None):
        return asks(device_type or "cpu")

    torch.is_autocast_enabled = is_autocast_enabled  # this spawned child only


def _forward_dtypes_worker(rank, world_size, dtype):
    import os

    import torch

    from lhdist.config import load_config
    from lhdist.model import build_model
    from lhdist.parallel import ParallelDims
    from lhdist.train.engine import build_engine
    from lhdist.train.loop import compute_context

    os.environ.setdefault("LOCAL_RANK", str(rank))  # as the loop sets it, for DeepSpeed
    ask_about_cpu_autocast()
    device = torch.device("cpu")
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    for engine_name, zero_stage in ENGINES:
        cfg = load_config(
            overrides=[
                "--model.num_layers=2",
                "--train.seq_len=64",
                f"--train.dtype={dtype}",
                f"--train.engine={engine_name}",
                f"--train.zero_stage={zero_stage}",
            ],
            world_size=world_size,
        )
        dims = ParallelDims(1, 1, world_size).build_groups()
        model = build_model(cfg.model, seed=0, device=device)
        seen = {}

        def record_linear(module, args, out, seen=seen):
            seen.setdefault("linear", out.dtype)

        model.layers[0].attention.wq.register_forward_hook(record_linear)
        dense = model.attention

        def recording_attention(q, k, v, layer_idx, dense=dense, seen=seen):
            seen.setdefault("attention", (q.dtype, k.dtype, v.dtype))
            return dense(q, k, v, layer_idx)

        model.set_attention(recording_attention)
        engine = build_engine(model, cfg, dims)
        ids = torch.randint(0, cfg.model.vocab_size, (1, 64))
        with compute_context(cfg, device):
            loss = engine(ids, torch.arange(64), labels=ids)
        where = f"{engine_name} ZeRO-{zero_stage} train.dtype={dtype}"
        assert seen["linear"] == want, (where, seen)
        assert seen["attention"] == (want, want, want), (where, seen)
        assert loss.dtype == torch.float32, (where, loss.dtype)  # the loss stays fp32
        engine.backward(loss / ids.numel())
        engine.step()
        # The weights (master copy under ZeRO) stay fp32 whatever the compute dtype.
        assert {p.dtype for p in model.parameters()} == {torch.float32}, where


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_engine_forward_runs_in_the_configured_dtype(tmp_path, dtype):
    run_ranks(_forward_dtypes_worker, 1, tmp_path, dtype, timeout_s=180)
