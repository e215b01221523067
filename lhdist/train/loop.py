"""The training loop: one function, read top to bottom."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lhdist.check import describe_plan, job_preflight
from lhdist.config import Config
from lhdist.errors import RankFailure
from lhdist.eval.heldout import build_heldout_eval, check_heldout_size
from lhdist.parallel import (
    ParallelDims,
    destroy_distributed,
    init_distributed,
    shard_positions,
    shard_sequence,
)
from lhdist.parallel.parallelize import lighthouse_spec, parallelize_model
from lhdist.train import checkpoint as ckpt
from lhdist.train.agreement import agree, decide_on_rank0
from lhdist.train.compile_check import check_compile_available
from lhdist.train.data import (
    build_dataloader,
    default_cache_dir,
    val_dataset_path,
    validate_dataset,
)
from lhdist.train.disk import check_writable
from lhdist.train.engine import build_engine, check_engine_available
from lhdist.train.flops import flops_per_token, peak_flops_per_device
from lhdist.train.loss import IGNORE_INDEX
from lhdist.train.metrics import (
    JSONL,
    ComputeDtypeProbe,
    MetricsLogger,
    memory_gib,
    reset_peak_memory,
)
from lhdist.train.metrics_repair import ABANDONED, repair_metrics
from lhdist.train.numerics import BadStepGuard
from lhdist.train.partitioned_init import build_train_model
from lhdist.train.prefetch import BatchPrefetcher
from lhdist.train.profiling import StepProfiler
from lhdist.train.resume import ResumePlan, plan_resume, write_run_file
from lhdist.train.schedule import dense_step, stage_at
from lhdist.train.sdpa_priority import sdpa_priority
from lhdist.train.step_readback import StepReadback
from lhdist.train.tokenizer_files import keep_run_tokenizer
from lhdist.train.watchdog import set_phase, start_watchdog, stop_watchdog


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) the training described by the resolved `cfg`; returns a summary on every
    rank. Launch one process per device (torchrun, slurm) or run it plainly for one process."""
    # Everything a user can get wrong in the config was checked at load time; `job_preflight`
    # is pure arithmetic, the same on every rank, so none of them waits for a peer that stopped.
    is_rank0 = (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))) == 0
    job_preflight(cfg, is_rank0)  # `lhdist check` for this job's world: layout, memory, traffic
    check_engine_available(cfg)
    if cfg.train.deterministic:
        use_deterministic_kernels()
    device = pick_device(cfg)
    check_compile_available(cfg, device.type)
    owns_process_group = not dist.is_initialized()
    if owns_process_group:
        init_distributed(
            backend=None if cfg.parallel.backend == "auto" else cfg.parallel.backend,
            timeout_s=cfg.parallel.timeout_s,
        )
    # DeepSpeed reads LOCAL_RANK; launchers that are not torchrun may leave it unset.
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank() % max(1, torch.cuda.device_count())))
    start_watchdog(cfg.parallel.timeout_s)  # a dead or hung rank stops every rank, named
    try:
        # Files and data, checked by every rank (hashes by rank 0 alone: N ranks reading a
        # multi-TB dataset N times would stall the start); one rank's finding stops all, alike.
        set_phase("check inputs", 0)
        dataset, val_info, hf_init = agree(lambda: check_inputs(cfg, is_rank0))
        with sdpa_priority(cfg, device):  # cuDNN attention first where it takes the inputs
            return run(cfg, device, dataset, val_info, hf_init)
    except BaseException as error:
        cause = stop_watchdog(error)
        if cause is not None:  # another rank's failure: name it, not the collective that saw it
            raise RankFailure(cause) from error
        raise
    finally:
        stop_watchdog()
        if owns_process_group:
            destroy_distributed()


def check_inputs(cfg: Config, is_rank0: bool) -> tuple[Any, Any, Any]:
    """Writable output folders, the training and held-out datasets (validated), and the Hugging
    Face folder of checkpoint.init_from (config.json and tensor headers; no weights yet), which
    goes first: a bad folder leaves no run or checkpoint directory behind."""
    hf_init = None
    if cfg.checkpoint.init_from:
        from lhdist.interop.hf_init import check_init_from

        hf_init = check_init_from(cfg)
    check_writable(cfg.train.run_dir, "train.run_dir")
    if cfg.checkpoint.enabled:
        check_writable(cfg.checkpoint_dir(), "checkpoint.dir")
    if not cfg.data.path:  # the built-in corpus is prepared into the cache on first use
        check_writable(default_cache_dir(), "the data cache ($LHDIST_CACHE_DIR)")
    dataset = validate_dataset(
        cfg.data.path or None,
        seq_len=cfg.train.seq_len,
        vocab_size=cfg.model.vocab_size,
        progress=is_rank0,
        verify_hashes=cfg.data.verify_hashes and is_rank0,
    )
    return dataset, heldout_dataset(cfg, is_rank0), hf_init


def run(
    cfg: Config, device: torch.device, dataset: Any, val_info: Any = None, hf_init: Any = None
) -> dict[str, Any]:
    t = cfg.train
    rank, world = dist.get_rank(), dist.get_world_size()
    dims = ParallelDims(cfg.parallel.dp_degree, cfg.parallel.cp_degree, world).build_groups()
    is_rank0 = rank == 0
    if device.type == "cpu":
        # Share the cores among the processes of this machine (torchrun sets LOCAL_WORLD_SIZE).
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(t.num_threads or max(1, (os.cpu_count() or 1) // local_procs))
    run_dir = Path(t.run_dir)
    plan = decide_on_rank0(lambda: start_run_dir(cfg))  # resume point, run id, repaired metrics
    if plan.path is not None:
        hf_init = None  # a resume continues its checkpoint; init_from only starts a run
    tokenizer_kept: str | None = "not rank 0"
    if rank == 0:
        tokenizer_kept = keep_run_tokenizer(dataset, run_dir)  # checkpoints copy it

    # Model, attention per layer, optimizer. Same seed on every rank -> same initial weights.
    model = build_train_model(cfg, dims, device)  # ZeRO-3: partitioned as it is built
    if hf_init is not None:
        hf_init.load_into(model)  # before the engine; ZeRO-3: one gathered parameter at a time
    router = parallelize_model(model, dims, cfg)
    engine = build_engine(model, cfg, dims)

    # Data: every CP rank of a group reads the same sample (same dp_rank) and keeps its shard.
    loader = build_dataloader(
        dataset,
        seq_len=t.seq_len,
        micro_batch_size=t.micro_batch_size,
        dp_rank=dims.dp_rank,
        dp_degree=dims.dp_degree,
        seed=cfg.data.seed,
        vocab_size=cfg.model.vocab_size,
    )
    positions = shard_positions(
        t.seq_len, dims.cp_rank, dims.cp_degree, cfg.parallel.layout, device=device
    )

    heldout = None
    if val_info is not None and cfg.eval.batches > 0:
        heldout = build_heldout_eval(
            cfg, dims, val_info, lambda b: local_shard(b, dims, cfg, device), device
        )

    def forward(input_ids, labels):
        # The model sums the token losses itself, a chunk of logits at a time: the full
        # [tokens, vocab] logits, their fp32 copy and gradient never exist.
        with compute_context(cfg, device):
            return engine(
                input_ids, positions, labels=labels, loss_chunk_tokens=t.loss_chunk_tokens
            )

    # Resume: engine state, RNG, data position, step; the stage follows from the step.
    start_step, resume_from = 0, plan.path
    if resume_from is not None:
        meta = agree(lambda: compatible_meta(cfg, resume_from))
        state = agree(lambda: ckpt.load_checkpoint(resume_from, engine))
        loader.load_state_dict(state["data"])
        start_step = meta["step"]
    dist.barrier()

    logger = MetricsLogger(run_dir, is_rank0, t.steps, start_step, t.tensorboard)
    for note in plan.notes:
        logger.event("note", start_step, note=note)
    if resume_from is not None:
        logger.event("resume", start_step, path=str(resume_from), stage=stage_at(start_step, cfg))
    else:
        logger.event(
            "start",
            0,
            world_size=world,
            dp=dims.dp_degree,
            cp=dims.cp_degree,
            engine=t.engine,
            zero_stage=t.zero_stage,
            device=device.type,
            # ZeRO-3 leaves each parameter a partition; ds_numel is its whole size.
            params=sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
            activation_checkpointing=describe_plan(router.recompute),
            compile=t.compile,
        )
    if hf_init is not None:
        logger.event("init_from", 0, path=str(hf_init.folder), rope_changed=hf_init.notes)
    if tokenizer_kept is None:
        reason = f"dataset {dataset.path} has no tokenizer/ (from an older lhdist or another tool)"
        logger.event("tokenizer_not_kept", start_step, reason=reason)
    if heldout is None and cfg.eval.batches > 0:
        logger.event("eval_skipped", start_step, reason=f"no held-out data for {cfg.data.path} "
                     "(set data.val_path, or prepare with --val-fraction)")  # fmt: skip
    peak = peak_flops_per_device(cfg, device)
    lh_stats = lighthouse_stats(cfg)
    current_stage = stage_at(max(start_step, 1), cfg)  # the stage of the last step done
    router.set_stage(current_stage)
    # Batches are read, sharded and pinned ahead by a thread; the same ones, in the same order.
    batches = BatchPrefetcher(
        loader, lambda b: shard_batch(b, dims, cfg), device, cfg.data.prefetch_batches
    )
    dtype_probe = ComputeDtypeProbe(model)
    loss_value, run_start, tokens_seen = float("nan"), time.perf_counter(), 0
    bad_steps = BadStepGuard(t.max_bad_steps)
    readback = StepReadback(device)  # the step leaves its metrics on the device
    profiler = StepProfiler(t.profile_steps, run_dir, rank, device)

    def log_pending_steps() -> None:
        """The one place where the steps since the last call are read back to the host (one
        synchronisation) and logged."""
        nonlocal loss_value, tokens_seen
        for values in readback.read():
            loss_value = values["loss"]
            tokens_seen += values["tokens"]
            # The same values on every rank, so every rank stops alike.
            if bad_steps.check(values["step"], loss_value, values["grad_norm"]):
                logger.event("bad_step", values["step"], loss=loss_value,
                             grad_norm=values["grad_norm"], bad_steps=bad_steps.bad_steps,
                             note="update skipped")  # fmt: skip
            if not is_rank0:
                continue
            record = step_record(cfg, values, world, peak, device, lh_stats)
            done = values["step"]
            show = done % t.log_every == 0 or done == t.steps or done == start_step + 1
            logger.step(record, show)
            if done == start_step + 1:
                logger.event("compute_dtype", done, dtype=dtype_probe.dtype)

    # A step that raises must not leave the read-ahead thread inside torch: at interpreter
    # exit a daemon thread in C++ code aborts the process ("terminate called without an
    # active exception").
    try:
        for step in range(start_step + 1, t.steps + 1):
            stage = stage_at(step, cfg)
            if stage != current_stage:
                log_pending_steps()
                reset_peak_memory(device)  # memory_gib from here on: this stage's peak
                logger.event(
                    "stage_switch",
                    step,
                    from_stage=current_stage,
                    to_stage=stage,
                    note="optimizer state and data position kept",
                )
                current_stage = stage
            router.set_stage(2 if dense_step(step, cfg) else stage)
            profiler.step_started(step)
            step_start = readback.start()

            set_phase("data", step)
            profiler.phase("data")
            micro_batches = [next(batches) for _ in range(t.grad_accum_steps)]

            # Loss = sum of local token losses / tokens of the whole global batch (each token
            # counted once: CP shards partition a sequence), so gradients SUM over dp x cp and
            # micro-batches.
            global_tokens = sum((labels != IGNORE_INDEX).sum() for _, labels in micro_batches)
            dist.all_reduce(global_tokens, group=dims.grad_group)
            total_loss = torch.zeros((), device=device)
            for input_ids, labels in micro_batches:
                set_phase("forward", step)
                profiler.phase("forward")
                loss_sum = forward(input_ids, labels)
                set_phase("backward", step)
                profiler.phase("backward")
                engine.backward(loss_sum / global_tokens)
                total_loss += loss_sum.detach()
            lr = engine.lr()  # the lr this step uses; step() advances the schedule
            set_phase("optimizer step", step)
            profiler.phase("optimizer_step")
            grad_norm = engine.step()
            dist.all_reduce(total_loss, group=dims.grad_group)
            profiler.phase(None)
            # No host sync here: loss, tokens and norm stay device tensors until the read-back.
            readback.add(step, stage, lr, step_start, total_loss / global_tokens, global_tokens,
                         grad_norm, memory_gib(device))  # fmt: skip
            trace = profiler.step_ended(step)

            evaluating = heldout is not None and heldout.due(step)
            saving = cfg.checkpoint.enabled and (
                step % cfg.checkpoint.every == 0 or step == t.steps
            )
            if (step % t.log_every == 0 or step == t.steps or step == start_step + 1 or evaluating
                    or saving or trace is not None):  # fmt: skip
                log_pending_steps()
            if trace is not None:
                logger.event("profile", step, path=str(trace))

            if evaluating:
                set_phase("eval", step)
                record = heldout.run(forward, router)
                logger.event("eval", step, stage=stage, **record)
                logger.scalars("eval", record, step)

            if saving:
                set_phase("checkpoint", step)
                position = {"data": batches.state_dict(), "step": step}
                path = ckpt.save_checkpoint(cfg, engine, step, stage, position, plan.run_id)
                logger.event("checkpoint", step, path=str(path))

    finally:
        batches.close()
    elapsed = time.perf_counter() - run_start
    summary = {
        "final_loss": bad_steps.last_finite_loss,
        "bad_steps": bad_steps.bad_steps,
        "steps": t.steps,
        "start_step": start_step,
        "run_time_s": elapsed,
        "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
    }
    logger.event("done", t.steps, **summary)
    if cfg.eval.final and start_step < t.steps:
        set_phase("final eval", t.steps)
        summary["eval_final"] = final_long_context_eval(cfg, model, dims, device, val_info, logger)
    logger.close()
    return summary


# --- helpers (each used once above; kept out of the loop so it reads straight) -------------------


def compute_context(cfg: Config, device: torch.device) -> torch.autocast:
    """The autocast every forward runs under: bf16 when `train.dtype` resolves to it on `device`
    (the DeepSpeed engine re-enters the same one through its `torch_autocast` config)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16_compute(device.type))


def shard_batch(
    batch: tuple[torch.Tensor, torch.Tensor], dims: Any, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """This CP rank's tokens of a [B, N] (input_ids, labels) batch, where the batch is."""
    input_ids, labels = batch
    if dims.cp_degree > 1:
        layout = cfg.parallel.layout
        input_ids = shard_sequence(input_ids, dims.cp_rank, dims.cp_degree, layout, dim=1)
        labels = shard_sequence(labels, dims.cp_rank, dims.cp_degree, layout, dim=1)
    return input_ids, labels


def local_shard(
    batch: tuple[torch.Tensor, torch.Tensor], dims: Any, cfg: Config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This CP rank's tokens of a [B, N] (input_ids, labels) batch, on `device`."""
    input_ids, labels = shard_batch(batch, dims, cfg)
    return input_ids.to(device), labels.to(device)


def heldout_dataset(cfg: Config, is_rank0: bool) -> Any:
    """The validated held-out set, or None (no eval, or no held-out data for data.path)."""
    if cfg.eval.batches == 0 and not cfg.eval.final:
        return None
    path = val_dataset_path(cfg.data.path, cfg.data.val_path, cfg.train.seq_len, progress=is_rank0)
    if path is None:
        return None
    info = validate_dataset(
        path,
        seq_len=cfg.train.seq_len,
        vocab_size=cfg.model.vocab_size,
        progress=is_rank0,
        verify_hashes=cfg.data.verify_hashes and is_rank0,
    )
    check_heldout_size(info, cfg.train.seq_len, cfg.train.micro_batch_size, cfg.eval.batches)
    return info


def use_deterministic_kernels() -> None:
    """train.deterministic: cuBLAS's fixed-workspace mode (set before its first use) and torch's
    deterministic algorithms, strict: with warn_only, cuDNN's attention backward keeps its
    non-deterministic algorithm (measured on an H200: reruns differed from step 2), and an op
    with no deterministic kernel should stop the run rather than quietly break the promise."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def final_long_context_eval(cfg, model, dims, device, val_info, logger) -> str | None:
    """eval.final: passkey retrieval and loss by position on this run's model, written to
    <run_dir>/eval_final.json by the first rank. Needs whole weights on one process: skipped
    (with a note) under cp > 1 or ZeRO-3, where `lhdist eval CHECKPOINT` does it afterwards."""
    if dims.cp_degree > 1 or (cfg.train.engine == "deepspeed" and cfg.train.zero_stage == 3):
        reason = "cp>1 or ZeRO-3: run `lhdist eval CHECKPOINT --out FILE.json`"
        logger.event("eval_final_skipped", cfg.train.steps, reason=reason)
        return None
    if dist.get_rank() != 0:
        return None
    from lhdist.eval.longcontext import run_long_context_eval

    if val_info is None:
        logger.event("eval_final_skipped", cfg.train.steps, reason="no held-out data")
        return None
    out = Path(cfg.train.run_dir) / "eval_final.json"
    router = model.attention
    report = run_long_context_eval(model, cfg, val_info=val_info, device=device, out_path=out)
    model.set_attention(router)
    logger.event("eval_final", cfg.train.steps, path=str(out), passkey=summarise_passkey(report))
    return str(out)


def summarise_passkey(report: dict[str, Any]) -> dict[str, float]:
    """Mean passkey accuracy per attention mode (the console line of the final eval)."""
    rows: dict[str, list[float]] = {}
    for row in report.get("passkey", []):
        rows.setdefault(row["attention"], []).append(row["accuracy"])
    return {mode: round(sum(acc) / len(acc), 3) for mode, acc in rows.items()}


def pick_device(cfg: Config) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def start_run_dir(cfg: Config) -> ResumePlan:
    """Rank 0, before anyone reads the run directory: the resolved config, partial checkpoints
    of killed saves removed, the resume plan and its run.json, metrics.jsonl repaired."""
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    ckpt.remove_partial(cfg.checkpoint_dir())
    plan = plan_resume(cfg)
    write_run_file(run_dir, plan.run_id, plan.resumed_from)
    start_step = ckpt.read_meta(plan.path)["step"] if plan.path else 0
    torn, moved = repair_metrics(run_dir / JSONL, start_step)
    if torn or moved:
        plan.notes.append(
            f"metrics.jsonl: {torn} torn line(s) dropped, {moved} record(s) after step "
            f"{start_step} moved to {ABANDONED}"
        )
    return plan


def compatible_meta(cfg: Config, path: Path) -> dict[str, Any]:
    meta = ckpt.read_meta(path)
    ckpt.check_compatible(meta, cfg, path)
    return meta


def lighthouse_stats(cfg: Config) -> dict[str, Any] | None:
    """Entries per level and per CP rank in stage 1 (fixed by the config: every head selects the
    same S entries, and both selection modes hand each CP rank an equal share)."""
    if not cfg.sparse_layers():
        return None
    spec, n, cp = lighthouse_spec(cfg), cfg.train.seq_len, cfg.parallel.cp_degree
    selected = spec.selected_length(n)
    return {
        "lh_selected_len": selected,
        "lh_entries_per_level": spec.entries_per_level(n),
        "lh_entries_per_rank": [selected // cp] * cp,
    }


def step_record(cfg, values, world, peak, device, lh_stats) -> dict[str, Any]:
    """The metrics.jsonl record of one step from its read-back `values` (StepReadback.read)."""
    stage, tokens = values["stage"], values["tokens"]
    tokens_per_s = tokens / values["step_time_s"]
    selected = lh_stats["lh_selected_len"] if lh_stats else None
    dense = dense_step(values["step"], cfg)  # a stage-1 step run dense (lighthouse.dense_every)
    dense_fpt, executed_fpt = flops_per_token(cfg, 2 if dense else stage, selected)
    record = {
        "step": values["step"],
        "stage": stage,
        "loss": values["loss"],
        "lr": values["lr"],
        "grad_norm": values["grad_norm"],
        "tokens": tokens,
        "step_time_s": values["step_time_s"],
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / world,
        "mfu_dense": tokens_per_s * dense_fpt / (peak * world) if peak else None,
        "mfu_executed": tokens_per_s * executed_fpt / (peak * world) if peak else None,
        "memory_gib": values["memory_gib"],
    }
    if dense:
        record["dense_step"] = True
    elif lh_stats and stage == 1:
        record.update(lh_stats)
    return record
