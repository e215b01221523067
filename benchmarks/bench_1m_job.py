"""1M-token benchmark job: one attention layer (Lighthouse tile, Lighthouse global, dense ring) and
one full training step per mode, at the training layout of the job's world (1, 2, 8, 32 GPUs).

    SCRIPT=benchmarks/bench_1m_job.py bash launch/torchrun.sh               # this node's GPUs
    SCRIPT=benchmarks/bench_1m_job.py sbatch --nodes=4 launch/slurm.sbatch  # 32 GPUs
    NPROC=2 SCRIPT=benchmarks/bench_1m_job.py bash launch/torchrun.sh --config \\
        configs/tiny_cpu.yaml --seq-len 8192 --cp 2 --lighthouse.topk=512 --steps 1  # CPU smoke

The model, Lighthouse knobs and seq_len come from --config (plus --section.key=value overrides);
the CP degree is the config's when it divides the world, else the whole world, and dp fills the
rest. Layers run on each CP group (the per-layer logic of bench_cp.py); the step is the training
loop's (model, router, engine, loss) on random tokens with one micro-batch. Rank 0 writes JSON:
ms per layer, step time, tokens/s, peak memory, bytes sent per collective kind (CommStats), and
`lhdist check`'s estimates of the same, with hardware, versions and date, to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cp import causal_sdpa, local_inputs, time_fwd_bwd  # noqa: E402
from common import environment, write_results  # noqa: E402

from lhdist.check import compute_bytes, estimate_comm, estimate_memory, layer_comm  # noqa: E402
from lhdist.config import (  # noqa: E402
    Config,
    check_lighthouse_layout,
    load_config,
    parse_overrides,
)
from lhdist.model import build_model  # noqa: E402
from lhdist.ops import LighthouseSpec, lighthouse_attention  # noqa: E402
from lhdist.parallel import (  # noqa: E402
    CommStats,
    ParallelDims,
    init_distributed,
    lighthouse_cp_attention,
    ring_attention,
    shard_positions,
)
from lhdist.parallel.parallelize import parallelize_model  # noqa: E402
from lhdist.train.engine import build_engine  # noqa: E402
from lhdist.train.metrics import memory_gib  # noqa: E402

DEFAULT_CONFIG = "configs/llama_1b_lh-l3p4k2048_cp8dp4_1m.yaml"
# What peak_gib measures: on CPU the process's peak RSS (it includes the Python and torch runtime,
# so it is not comparable with `lhdist check`'s estimate of tensor memory).
PEAK_KIND = {"cuda": "torch.cuda.max_memory_allocated", "cpu": "process peak RSS"}


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="model, Lighthouse and seq_len")
    ap.add_argument("--seq-len", type=int, default=None, help="override train.seq_len (N)")
    ap.add_argument("--cp", type=int, default=None, help="CP degree (default: see above)")
    ap.add_argument("--parts", default="layer,step")
    ap.add_argument("--modes", default="tile,global,dense")
    ap.add_argument("--repeats", type=int, default=3, help="timed layer calls")
    ap.add_argument("--warmup", type=int, default=1, help="untimed layer calls")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per mode")
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--name", default=None)
    ap.add_argument("--out-dir", default=None)
    return ap.parse_known_args(argv)


def job_config(args, overrides: list[str], world: int) -> Config:
    """The config at this job's layout: cp from --cp, else the config's when it divides the
    world, else the whole world; dp the rest; one micro-batch per step."""
    extra = [*overrides, "--train.grad_accum_steps=1"]
    if args.seq_len:
        extra.append(f"--train.seq_len={args.seq_len}")
    cp = args.cp or configured_cp(args.config, extra)
    if world % cp:
        cp = world
    extra += [f"--parallel.cp_degree={cp}", f"--parallel.dp_degree={world // cp}"]
    return load_config(args.config, extra, world_size=world)


def configured_cp(path: str, overrides: list[str]) -> int:
    """parallel.cp_degree as the YAML file and the overrides set it (1 if neither does)."""
    cp = (yaml.safe_load(Path(path).read_text()) or {}).get("parallel", {}).get("cp_degree", 1)
    for key, value in parse_overrides(overrides):
        cp = value if key == "parallel.cp_degree" else cp
    return int(cp)


def with_selection(cfg: Config, mode: str) -> Config:
    """`cfg` with Lighthouse selection `mode` (tile/global), validated for its CP layout."""
    out = dataclasses.replace(cfg, lighthouse=dataclasses.replace(cfg.lighthouse, selection=mode))
    check_lighthouse_layout(out)
    return out


def attention_fn(cfg: Config, mode: str, group):
    """q, k, v -> out of one attention layer: dense or Lighthouse (`mode`), on `group` (CP) or
    on this device (group None)."""
    layout = cfg.parallel.layout
    if mode == "dense":
        if group is None:
            return causal_sdpa
        return lambda q, k, v: ring_attention(q, k, v, group, layout)
    lh = cfg.lighthouse
    spec = LighthouseSpec(lh.num_levels, lh.pooling_factor, lh.topk, mode, lh.scorer)
    if group is None:
        return lambda q, k, v: lighthouse_attention(q, k, v, spec)
    return lambda q, k, v: lighthouse_cp_attention(q, k, v, spec, group, layout)


class SavedRows(list):
    """Result rows, rewritten to the results file after each one: a job killed by its time
    limit (a 1M-token step on one GPU takes minutes) keeps everything it measured."""

    def __init__(self, save) -> None:
        super().__init__()
        self._save = save

    def append(self, row: dict) -> None:
        super().append(row)
        self._save(self)


def layer_rows(cfg: Config, dims, device, dtype, args, rows: list[dict]) -> None:
    m, t = cfg.model, cfg.train
    cp, group = dims.cp_degree, dims.cp_group
    shape = SimpleNamespace(
        heads=m.num_heads, kv_heads=m.num_kv_heads, head_dim=m.dim // m.num_heads
    )
    a = compute_bytes(cfg, device.type)
    for mode in args.modes.split(","):
        row = {"part": "layer", "mode": mode, "N": t.seq_len, "N_local": t.seq_len // cp, "cp": cp}
        try:
            kind_cfg = cfg if mode == "dense" else with_selection(cfg, mode)
        except ValueError as e:
            rows.append({**row, "skipped": str(e)})
            continue
        fn = attention_fn(kind_cfg, mode, group if cp > 1 else None)
        xs = local_inputs(shape, t.seq_len // cp, device, dtype, seed=dims.rank)
        with CommStats() as stats:
            once = [x.detach().clone().requires_grad_() for x in xs]
            fn(*once).sum().backward()
        row.update(time_fwd_bwd(fn, xs, device, args.repeats, args.warmup, group))
        row.setdefault("peak_gib", memory_gib(device))  # CPU: the process's peak RSS so far
        row["peak_kind"] = PEAK_KIND[device.type]
        row["bytes_sent"] = stats.as_dict()
        estimate = layer_comm(kind_cfg, a, mode)
        row["estimated_bytes_sent"] = {
            f"{kind}/{phase}": n
            for kind, pair in estimate.items()
            for phase, n in zip(("forward", "backward"), pair, strict=True)
            if n
        }
        rows.append(row)
        if dims.rank == 0:
            print(
                f"[layer] {mode} N={t.seq_len:,} cp={cp}: fwd+bwd {row['median_ms']:.1f} ms, "
                f"sent {stats.bytes_sent() / 2**20:.1f} MiB",
                flush=True,
            )
        del xs, once
        if device.type == "cuda":
            torch.cuda.empty_cache()


def step_rows(cfg: Config, dims, device, args, rows: list[dict]) -> None:
    """One training step (one micro-batch) per mode: tile/global in stage 1, dense in stage 2."""
    t = cfg.train
    model = build_model(cfg.model, seed=t.seed, device=device)
    router = parallelize_model(model, dims, cfg)
    engine = build_engine(model, cfg, dims)
    use_bf16 = compute_bytes(cfg, device.type) == 2
    gen = torch.Generator().manual_seed(dims.dp_rank)
    positions = shard_positions(
        t.seq_len, dims.cp_rank, dims.cp_degree, cfg.parallel.layout, device=device
    )
    n_local = t.seq_len // dims.cp_degree
    for mode in args.modes.split(","):
        row = {
            "part": "step",
            "mode": mode,
            "N": t.seq_len,
            "cp": dims.cp_degree,
            "dp": dims.dp_degree,
        }
        mode_cfg = cfg
        if mode != "dense":
            try:
                mode_cfg = with_selection(cfg, mode)
            except ValueError as e:
                rows.append({**row, "skipped": str(e)})
                continue
            # A new router for this selection; the blocks' checkpointing wrappers stay as built.
            no_ac = dataclasses.replace(mode_cfg.train, activation_checkpointing=False)
            router = parallelize_model(model, dims, dataclasses.replace(mode_cfg, train=no_ac))
        router.set_stage(2 if mode == "dense" else 1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, stats = [], CommStats()
        for i in range(args.warmup_steps + args.steps):
            ids = torch.randint(
                0, cfg.model.vocab_size, (t.micro_batch_size, n_local + 1), generator=gen
            ).to(device)
            dist.barrier()
            start = time.perf_counter()
            with stats if i == args.warmup_steps else CommStats():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    # The training loop's loss: chunked, no [tokens, vocab] logits.
                    loss = engine(
                        ids[:, :-1],
                        positions,
                        labels=ids[:, 1:],
                        loss_chunk_tokens=t.loss_chunk_tokens,
                    )
                engine.backward(loss / (n_local * dims.world_size))
            engine.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup_steps:
                times.append(time.perf_counter() - start)
            del loss
        step_s = sorted(times)[len(times) // 2]
        tokens = dims.dp_degree * t.micro_batch_size * t.seq_len
        stage = 2 if mode == "dense" else 1
        mem = estimate_memory(mode_cfg, device.type)
        comm = estimate_comm(mode_cfg, device.type)
        row.update(
            step_ms=1e3 * step_s,
            tokens_per_s=tokens / step_s,
            tokens_per_s_per_device=tokens / step_s / dims.world_size,
            peak_gib=memory_gib(device),
            peak_kind=PEAK_KIND[device.type],
            bytes_sent_attention=stats.as_dict(),
            estimated_peak_gib=mem.peak_at(stage) / 2**30,
            estimated_attention_bytes=comm.attention[stage],
            estimated_gradient_bytes=comm.gradients,
        )
        rows.append(row)
        if dims.rank == 0:
            print(
                f"[step] {mode} N={t.seq_len:,} cp={dims.cp_degree} dp={dims.dp_degree}: "
                f"{row['step_ms']:.0f} ms, {row['tokens_per_s']:,.0f} tok/s, peak "
                f"{row['peak_gib']:.2f} GiB (est. {row['estimated_peak_gib']:.2f})",
                flush=True,
            )


def main(argv=None) -> None:
    args, overrides = parse_args(argv)
    info = init_distributed()
    world = info.world_size
    cfg = job_config(args, overrides, world)
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if compute_bytes(cfg, device.type) == 2 else torch.float32
    dims = ParallelDims(cfg.parallel.dp_degree, cfg.parallel.cp_degree, world).build_groups()
    parts = args.parts.split(",")
    name = args.name or f"1m_job_W{world}_cp{dims.cp_degree}_{device.type}"
    header = {
        "environment": environment(),
        "args": vars(args),
        "overrides": overrides,
        "world": world,
        "layout": {"dp": dims.dp_degree, "cp": dims.cp_degree, "layout": cfg.parallel.layout},
        "config": cfg.to_dict(),
    }

    def save(rows: list[dict]) -> None:
        if dims.rank == 0:
            path = write_results(name, {**header, "rows": rows}, args.out_dir)
            print(f"wrote {path} ({len(rows)} rows)", flush=True)

    rows = SavedRows(save)
    if "layer" in parts:
        layer_rows(cfg, dims, device, dtype, args, rows)
    if "step" in parts:
        step_rows(cfg, dims, device, args, rows)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
