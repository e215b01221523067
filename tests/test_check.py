"""`lhdist check`: shipped configs pass at their world sizes, broken layouts fail with numbers,
and the memory estimate matches the live tensor bytes of a real CPU training step."""

import subprocess
import sys
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lhdist.check import estimate_comm, estimate_memory, load_for_check, main, param_count
from lhdist.config import load_config

SHIPPED = [
    ("configs/tiny_cpu.yaml", 1),
    ("configs/llama_530m_lh-l3p4k1536_cp2dp4.yaml", 8),
    ("configs/llama_1b_lh-l3p4k2048_cp8dp4_1m.yaml", 32),
    ("configs/llama_1b_lh-l3p4k2048_cp32_1m.yaml", 32),
    ("configs/quality_32k_25m.yaml", 1),
    ("configs/quality_98k_25m.yaml", 1),
    ("configs/paper_530m_98k_recipe.yaml", 8),
    # checkpoint.init_from names an HF folder that only the training run reads
    ("configs/llama3.2_1b_cpt-hf_128k_lh-l3p4k2048_cp2dp4.yaml", 8),
]


@pytest.mark.parametrize("path,world", SHIPPED, ids=[p.split("/")[-1] for p, _ in SHIPPED])
def test_check_accepts_every_shipped_config_at_its_world_size(path, world, capsys):
    assert main(["--config", path, "--world-size", str(world)]) == 0
    out = capsys.readouterr().out
    assert f"on {world} rank(s): valid" in out and "peak (est.)" in out and "gradients" in out


BROKEN = [
    # (overrides, world, words the message must contain)
    (["--parallel.cp_degree=3"], 8, ["world_size=8", "cp_degree=3"]),
    (["--parallel.dp_degree=2", "--parallel.cp_degree=2"], 8, ["2 x", "= 4", "world size 8"]),
    (["--parallel.cp_degree=2", "--train.seq_len=2050"], 2, ["seq_len=2050", "2*cp_degree=4"]),
    (["--parallel.cp_degree=2", "--lighthouse.topk=384"], 2, ["3 tiles", "4 CP chunks"]),
    (
        ["--parallel.cp_degree=4", "--lighthouse.selection=global", "--train.seq_len=2112"],
        4,
        ["264 tokens per chunk", "pooling_factor**(num_levels-1)=16"],
    ),
    (["--model.num_kv_heads=3"], 1, ["num_heads=4", "num_kv_heads=3"]),
]


@pytest.mark.parametrize("overrides,world,words", BROKEN, ids=lambda v: str(v)[:40])
def test_check_rejects_broken_layouts_naming_the_numbers(overrides, world, words, capsys):
    args = ["--config", "configs/tiny_cpu.yaml", "--world-size", str(world), *overrides]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lhdist check: invalid:")
    for word in words:
        assert word in err, (word, err)


def test_check_global_selected_length_must_split_over_chunks():
    # cp=3 zigzag: 6 chunks of 256 tokens; S = 1536/2 + 1*2*128 = 1024 is not a multiple of 6.
    overrides = [
        "--parallel.cp_degree=3",
        "--lighthouse.selection=global",
        "--train.seq_len=1536",
        "--lighthouse.num_levels=2",
        "--lighthouse.pooling_factor=2",
    ]
    with pytest.raises(ValueError, match=r"S=1024 .* 6 CP chunks"):
        load_for_check("configs/tiny_cpu.yaml", overrides, 3)


def test_check_cli_exit_codes_and_memory_limit():
    ok = subprocess.run(
        [sys.executable, "-m", "lhdist", "check", "--world-size", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "valid" in ok.stdout
    tight = subprocess.run(
        [
            sys.executable,
            "-m",
            "lhdist",
            "check",
            "--config",
            "configs/llama_530m_lh-l3p4k1536_cp2dp4.yaml",
            "--world-size",
            "8",
            "--gpu-memory-gib",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tight.returncode == 2 and "exceeds --gpu-memory-gib=10" in tight.stderr


def test_check_comm_scales_with_the_layout():
    def comm(*overrides, world):
        cfg = load_for_check("configs/llama_1b_lh-l3p4k2048_cp8dp4_1m.yaml", list(overrides), world)
        return estimate_comm(cfg), cfg

    c8, cfg8 = comm(world=32)
    # Dense ring, stage 2: per layer fwd (W-1)*kv, bwd (W-1)*kv + W-1 accumulator hops (the
    # first in bf16, the rest fp32).
    m, n = cfg8.model, cfg8.train.seq_len // 8
    kv = 2 * n * m.num_kv_heads * (m.dim // m.num_heads) * 2
    per_layer = 7 * kv + 7 * kv + kv + 6 * kv * 2
    fwd_twice = 7 * kv  # activation checkpointing repeats the forward
    expected = m.num_layers * (per_layer + fwd_twice) * cfg8.train.grad_accum_steps
    assert c8.attention[2]["ring (dense)"] == expected
    # Lighthouse sends far less than the dense ring; global adds scores and all-to-all.
    assert c8.attention[1]["ring (lighthouse)"] < c8.attention[2]["ring (dense)"] / 4
    c32, _ = comm(
        "--parallel.dp_degree=1",
        "--parallel.cp_degree=32",
        "--lighthouse.selection=global",
        world=32,
    )
    assert c32.attention[1]["all_to_all (lighthouse)"] > 0
    assert c32.gradients == c8.gradients > 0  # same model, same 32-rank gradient group


# --- memory estimate vs a measured CPU step ---------------------------------------------------


class LiveTensorBytes(TorchDispatchMode):
    """Sum of the bytes of every live tensor storage that an op returned (plus those `track`ed),
    and its peak: each new storage is counted once when an op produces it and uncounted when
    it is freed (a finalizer on the storage). Kernels' internal scratch buffers are not seen."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.seen:
            return
        self.seen.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self.track(t)
        return out


def measured_peak_bytes(overrides: list[str], steps: int = 2) -> tuple[int, object]:
    """Peak live tensor bytes over `steps` optimizer steps of the training loop's own pieces
    (model, attention router, torch engine, the loop's loss) on one CPU process."""
    from lhdist.model import build_model
    from lhdist.parallel import ParallelDims, destroy_distributed, init_distributed
    from lhdist.parallel.parallelize import parallelize_model
    from lhdist.train.engine import build_engine

    cfg = load_config("configs/tiny_cpu.yaml", ["--train.engine=torch", *overrides], world_size=1)
    init_distributed(backend="gloo")
    try:
        dims = ParallelDims(1, 1, 1).build_groups()
        model = build_model(cfg.model, seed=0)
        parallelize_model(model, dims, cfg)
        engine = build_engine(model, cfg, dims)
        n = cfg.train.seq_len
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 256, (cfg.train.micro_batch_size, n + 1), generator=gen)
        positions = torch.arange(n)
        mode = LiveTensorBytes()
        with mode:
            for p in model.parameters():
                mode.track(p)
            for _ in range(steps):
                loss = engine(
                    ids[:, :-1],
                    positions,
                    labels=ids[:, 1:],
                    loss_chunk_tokens=cfg.train.loss_chunk_tokens,
                )
                engine.backward(loss / n)
                engine.step()
                del loss
    finally:
        destroy_distributed()
    return mode.peak, cfg


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # tiny_cpu as shipped: Lighthouse in layers 1-2 (stage 1), fp32, N=2048
        ["--lighthouse.enabled=false", "--train.seq_len=1024"],
        [
            "--train.activation_checkpointing=true",
            "--train.seq_len=1024",
            "--lighthouse.num_levels=2",
        ],
        [  # the loss's working set dominates: one 256-token chunk of an 8K vocab
            "--train.activation_checkpointing=true",
            "--train.seq_len=1024",
            "--lighthouse.num_levels=2",
            "--model.vocab_size=8192",
            "--train.loss_chunk_tokens=256",
        ],
        [  # selective: only the SwiGLU branch recomputed
            "--train.activation_checkpointing=ffn",
            "--train.seq_len=1024",
            "--lighthouse.num_levels=2",
        ],
    ],
    ids=[
        "tiny-lighthouse",
        "tiny-dense-N1024",
        "tiny-ac-N1024",
        "tiny-ac-vocab8k-chunk256",
        "tiny-ffn-N1024",
    ],  # fmt: skip
)
def test_check_memory_estimate_within_20_percent_of_measured_cpu_step(overrides):
    torch.set_num_threads(2)
    measured, cfg = measured_peak_bytes(overrides)
    est = estimate_memory(cfg, "cpu")
    stage = 1 if cfg.sparse_layers() else 2
    predicted = est.peak_at(stage)
    assert est.parameters == 4 * param_count(cfg)
    assert abs(predicted - measured) <= 0.2 * measured, (predicted, measured)
    print(
        f"{overrides}: estimate {predicted / 2**20:.1f} MiB, measured {measured / 2**20:.1f} "
        f"MiB ({100 * (predicted / measured - 1):+.1f}%)"
    )


BIG = ["--model.flavor=270m", "--train.seq_len=98304", "--lighthouse.topk=1536",
       "--train.engine=torch"]  # fmt: skip


def test_check_recompute_modes_order_and_auto_picks_the_least_that_fits():
    from lhdist.check import AUTO_MEMORY_FRACTION, recompute_options, recompute_plan

    cfg = load_for_check(None, [*BIG, "--train.activation_checkpointing=auto"], 1)
    peaks = recompute_options(cfg, "cuda")
    assert peaks["none"] > peaks["ffn"] > peaks["full"]
    layers = cfg.model.num_layers
    assert recompute_plan(cfg, "cuda", None) == ["none"] * layers  # no memory known
    assert recompute_plan(cfg, "cuda", int(2 * peaks["none"])) == ["none"] * layers
    assert recompute_plan(cfg, "cuda", int(peaks["full"] / 2)) == ["full"] * layers  # best effort
    last_peak = peaks["none"]
    for fraction in (0.9, 0.7, 0.5, 0.3):  # less memory: more recompute, and it still fits
        memory = int(fraction * peaks["none"] / AUTO_MEMORY_FRACTION)
        plan = recompute_plan(cfg, "cuda", memory)
        peak = estimate_memory(cfg, "cuda", plan).peak
        assert peak <= AUTO_MEMORY_FRACTION * memory and peak <= last_peak, (fraction, plan)
        assert plan != ["none"] * layers
        last_peak = peak
    # Between ffn's and full's peak, full appears only in some blocks, after ffn everywhere.
    memory = int((peaks["ffn"] + peaks["full"]) / 2 / AUTO_MEMORY_FRACTION)
    plan = recompute_plan(cfg, "cuda", memory)
    assert 0 < plan.count("full") < layers and plan.count("none") == 0


def test_check_reports_which_recompute_mode_fits(capsys):
    assert main([*BIG, "--train.activation_checkpointing=auto", "--gpu-memory-gib=80"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("recompute"))
    assert "fit 85% of 80.00 GiB: ffn, full" in line and "auto: ffn in" in line
    assert main([*BIG, "--train.activation_checkpointing=true"]) == 0  # older configs' boolean
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("recompute"))
    assert line.endswith("full: full in 24 of 24 blocks")


def test_check_rejects_unknown_recompute_mode(capsys):
    assert main(["--train.activation_checkpointing=attention"]) == 2
    assert "train.activation_checkpointing='attention' must be" in capsys.readouterr().err
