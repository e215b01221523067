"""`lhdist check`: dry-run a layout (rules, per-rank memory, per-step traffic) by arithmetic."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from lhdist.config import (
    Config,
    apply_mapping,
    describe_keys,
    lighthouse_spec_of,
    parse_overrides,
    read_config_file,
    recompute_mode,
    resolve,
    validate,
)
from lhdist.ops.spec import LighthouseSpec

GIB = 2**30
FP32 = 4
INDEX = 8  # int64 selection indices
# DeepSpeed's default gradient reduce bucket (elements). ZeRO 1-3 allocate it whole (fp32) at
# every backward, whatever the model's size; the engine caps it at the parameter count.
REDUCE_BUCKET = 500_000_000
# DeepSpeed's default ZeRO-3 parameter prefetch bucket (elements).
ZERO3_PREFETCH = 50_000_000


def compute_bytes(cfg: Config, device_type: str) -> int:
    """Bytes of an activation element: 2 under bf16 autocast (GPU by default), else 4.

    Mirrors the loop: parameters stay fp32 in both cases; autocast casts matmul inputs."""
    return 2 if cfg.bf16_compute(device_type) else 4


def device_type_of(cfg: Config, default: str) -> str:
    """cpu or cuda: the config's device, or `default` when it says auto."""
    return cfg.train.device if cfg.train.device != "auto" else default


def param_count(cfg: Config) -> int:
    """Parameters of the Llama model (tied embeddings counted once)."""
    m = cfg.model
    head_dim = m.dim // m.num_heads
    attn = m.dim * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    block = attn + 3 * m.dim * m.ffn_dim + 2 * m.dim
    embed = m.vocab_size * m.dim * (1 if m.tie_embeddings else 2)
    return m.num_layers * block + embed + m.dim


def spec_of(cfg: Config) -> LighthouseSpec:
    return lighthouse_spec_of(cfg)


# --- memory ---------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes per rank. Activations are what autograd keeps for the backward of one micro-batch;
    transient is the largest short-lived working set on top (logits gradients, a block's
    backward); peak = the static state + the larger of the two stages' activations + transient."""

    parameters: int
    gradients: int
    optimizer: int
    activations: dict[int, int]
    transient: dict[int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def static(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    def peak_at(self, stage: int) -> int:
        return self.static + self.activations[stage] + self.transient[stage]

    @property
    def peak(self) -> int:
        return max(self.peak_at(stage) for stage in self.activations)


def reduce_bucket_elements(cfg: Config) -> int:
    """The DeepSpeed engine's `reduce_bucket_size`: DeepSpeed's default, capped at the model's
    parameter count (a bucket larger than every gradient together only wastes memory)."""
    return min(REDUCE_BUCKET, param_count(cfg))


def state_bytes(cfg: Config, world_size: int) -> tuple[int, int, int, str]:
    """(parameters, gradients, optimizer state) bytes per rank and how they are split.

    Parameters and gradients are fp32 in both engines (bf16 is autocast, also under DeepSpeed's
    `torch_autocast`, not bf16 weights); AdamW keeps m and v in fp32. DeepSpeed ZeRO 1-3, from
    its source (0.19.8): an fp32 master copy + m + v of each rank's partition (over the dp x cp
    gradient group); an fp32 contiguous reduce bucket allocated at every backward, into which
    the parameters' gradients are copied; ZeRO-2 and 3 also keep the rank's fp32 gradient
    partition; ZeRO-3 holds a parameter partition plus the gathered (prefetched) weights."""
    n, w, t = param_count(cfg), world_size, cfg.train
    if t.engine == "torch" or t.zero_stage == 0:
        return FP32 * n, FP32 * n, 2 * FP32 * n, f"{t.engine}: replicated AdamW (m, v)"
    optimizer = 3 * FP32 * n // w  # fp32 master + m + v, partitioned
    bucket = FP32 * reduce_bucket_elements(cfg)
    if t.zero_stage == 1:
        return FP32 * n, bucket, optimizer, f"ZeRO-1 over {w} rank(s) (+ reduce bucket)"
    if t.zero_stage == 2:
        grads = FP32 * n // w + bucket
        return FP32 * n, grads, optimizer, f"ZeRO-2 over {w} rank(s) (+ reduce bucket)"
    params = FP32 * n // w + FP32 * min(n, ZERO3_PREFETCH)
    grads = FP32 * n // w + bucket
    return params, grads, optimizer, f"ZeRO-3 over {w} rank(s) (+ prefetch, reduce buckets)"


def _linear_inputs(cfg: Config, a: int, consumers: int) -> int:
    """Bytes per token that the linears reading one normed [d] input keep: in fp32 they share it;
    under autocast each linear keeps its own bf16 cast (autocast caches only weight casts)."""
    d = cfg.model.dim
    return FP32 * d if a == FP32 else consumers * a * d


def block_bytes_per_token(cfg: Config, a: int, sparse: bool) -> float:
    """Bytes per local token that one transformer block keeps for its backward.

    Counted from the model code: the fp32 residual input and the fp32 normed values of both
    RMSNorms, the linears' inputs, the SwiGLU's four [ffn_dim] tensors, and the attention's
    saved tensors: q, k, v, output and fp32 log-sum-exp (dense), or the gathered S entries,
    their output, log-sum-exp and indices plus the scattered [d] output (Lighthouse)."""
    m, cp = cfg.model, cfg.parallel.cp_degree
    d, hd, H, G, F = m.dim, m.dim // m.num_heads, m.num_heads, m.num_kv_heads, m.ffn_dim
    norms = 2 * (2 * FP32 * d + FP32)  # residual input + normed values + rsqrt, per norm
    linears = _linear_inputs(cfg, a, 3) + _linear_inputs(cfg, a, 2)  # wq/wk/wv, w1/w3
    ffn = 4 * a * F  # w1 out, silu out, w3 out, their product (w2's input)
    if not sparse:
        attn = a * (d + 2 * G * hd) + a * d + FP32 * H  # q, k, v; output (wo's input); lse
        if cp > 1:
            attn += a * d  # the ring keeps its [B, H, S, D] output besides the returned copy
        return norms + linears + ffn + attn
    frac = spec_of(cfg).selected_length(cfg.train.seq_len) / cfg.train.seq_len
    gathered = a * (2 * d + 2 * G * hd) + FP32 * H + INDEX * G  # q, k, v, output, lse, indices
    if cp > 1 and cfg.lighthouse.selection == "global":
        gathered += a * d  # the ring's q is a copy out of the all-to-all rows it also keeps
    return norms + linears + ffn + frac * gathered + a * d  # + the scattered output


def head_bytes_per_token(cfg: Config, a: int) -> tuple[float, float]:
    """(kept, transient) bytes per token of the final norm and the chunked loss
    (lhdist/train/loss.py), which never holds [tokens, vocab] logits.

    Kept: the last block's fp32 output, the norm's fp32 normed values and rsqrt, and the hidden
    state's gradient that the loss computed in its forward (compute dtype). Transient: in the
    backward, the fp32 hidden gradient and the norm's fp32 gradients (three [dim] tensors)."""
    d = cfg.model.dim
    return 2 * FP32 * d + FP32 + a * d, 3 * FP32 * d


def loss_forward_transient(cfg: Config, a: int, tokens: int) -> int:
    """Bytes the chunked loss holds on top of the kept tensors while its forward runs: the
    norm's fp32 output and one chunk's fp32 logits (turned in place into their gradient); under
    autocast also the chunk's bf16 logits or gradient and rows, and the weight's bf16 cast and
    per-chunk bf16 gradient product. Its fp32 weight gradient becomes the weight's .grad, which
    `gradients` counts."""
    m = cfg.model
    c = min(cfg.train.loss_chunk_tokens, tokens)
    chunk = FP32 * c * m.vocab_size
    if a != FP32:
        chunk += a * c * (m.vocab_size + m.dim) + 2 * a * m.vocab_size * m.dim
    return FP32 * m.dim * tokens + chunk


def block_transient_per_token(cfg: Config, a: int) -> float:
    """A block's backward working set: the SwiGLU's gradients (three [ffn_dim] tensors), or the
    attention's (dq, dk, dv plus the ring's fp32 accumulators), whichever is larger."""
    m = cfg.model
    d, hd, G = m.dim, m.dim // m.num_heads, m.num_kv_heads
    ffn = 3 * a * m.ffn_dim
    attn = a * (d + 2 * G * hd) + FP32 * (d + 2 * 2 * G * hd)
    return max(ffn, attn)


def recompute_split(cfg: Config, a: int, sparse: bool, mode: str) -> tuple[float, float]:
    """(kept, recomputed) bytes per token of one block under activation-checkpointing `mode`.

    full: the block keeps only its fp32 input and recomputes everything in its backward. ffn:
    the second half (ffn_norm + SwiGLU) keeps only its fp32 input, which is the residual that
    `block_bytes_per_token` already counts, so the norm's normed values and rsqrt, the linears'
    inputs and the SwiGLU's four tensors go."""
    block = block_bytes_per_token(cfg, a, sparse)
    if mode == "none":
        return block, 0.0
    if mode == "full":
        return FP32 * cfg.model.dim, block
    d, F = cfg.model.dim, cfg.model.ffn_dim
    ffn = FP32 * d + FP32 + _linear_inputs(cfg, a, 2) + 4 * a * F
    return block - ffn, ffn


def estimate_memory(
    cfg: Config, device_type: str = "cuda", plan: list[str] | None = None
) -> MemoryEstimate:
    """Per-rank memory of `cfg` (resolved) on its dp x cp world, per stage (1: Lighthouse in the
    sparse layers, 2: dense everywhere). `plan`: each layer's recompute mode (none, ffn, full);
    default: `recompute_plan` without a memory limit."""
    t, m = cfg.train, cfg.model
    plan = plan or recompute_plan(cfg, device_type)
    world = cfg.parallel.dp_degree * cfg.parallel.cp_degree
    a = compute_bytes(cfg, device_type)
    params, grads, opt, how = state_bytes(cfg, world)
    tokens = t.micro_batch_size * t.seq_len // cfg.parallel.cp_degree  # per rank
    head_kept, head_transient = head_bytes_per_token(cfg, a)
    loss_transient = loss_forward_transient(cfg, a, tokens)
    block_transient = block_transient_per_token(cfg, a)
    sparse = set(cfg.sparse_layers())
    activations, transient = {}, {}
    stages = (1, 2) if sparse and t.stage1_steps > 0 else (2,)
    for stage in stages:
        split = [
            recompute_split(cfg, a, stage == 1 and i in sparse, plan[i])
            for i in range(m.num_layers)
        ]
        # A recomputing block's backward holds its recomputed tensors, one block at a time.
        kept = sum(k for k, _ in split) + head_kept
        worst = max(head_transient, max(r for _, r in split) + block_transient - head_kept)
        activations[stage] = int(kept * tokens)
        transient[stage] = int(max(worst * tokens, loss_transient, 0))
    notes = [how, f"activations: {'bf16' if a == 2 else 'fp32'}, {tokens:,} tokens per rank"]
    if any(mode != "none" for mode in plan):
        notes.append(f"activation checkpointing: {describe_plan(plan)}")
    return MemoryEstimate(params, grads, opt, activations, transient, notes)


# --- activation checkpointing: which blocks recompute what ----------------------------------------

# `auto` plans for this share of the device's memory: the estimate leaves out the allocator's
# fragmentation, the CUDA context and kernel workspaces.
AUTO_MEMORY_FRACTION = 0.85
UNIFORM_MODES = ("none", "ffn", "full")


def recompute_plan(cfg: Config, device_type: str, device_memory: int | None = None) -> list[str]:
    """Each layer's recompute mode for train.activation_checkpointing. `auto`: the first plan of
    the ladder none -> ffn in layers 0.. -> full in layers 0.. whose estimated peak fits
    AUTO_MEMORY_FRACTION of `device_memory` (none without a known memory; all full if nothing
    fits, and the preflight warns)."""
    mode, layers = recompute_mode(cfg), cfg.model.num_layers
    if mode != "auto":
        return [mode] * layers
    plan = ["none"] * layers
    if not device_memory:
        return plan
    budget = AUTO_MEMORY_FRACTION * device_memory
    for step in ("ffn", "full"):
        for layer in range(layers):
            if estimate_memory(cfg, device_type, plan).peak <= budget:
                return plan
            plan = plan[:layer] + [step] + plan[layer + 1 :]
    return plan


def describe_plan(plan: list[str]) -> str:
    """'full in 24 of 24 blocks', 'ffn in 10, full in 2 of 24 blocks', 'none'."""
    counts = [(mode, plan.count(mode)) for mode in ("ffn", "full") if mode in plan]
    if not counts:
        return "none"
    return ", ".join(f"{mode} in {n}" for mode, n in counts) + f" of {len(plan)} blocks"


def recompute_options(cfg: Config, device_type: str) -> dict[str, int]:
    """Estimated peak bytes per rank with each uniform mode: what `lhdist check` compares."""
    return {
        mode: estimate_memory(cfg, device_type, [mode] * cfg.model.num_layers).peak
        for mode in UNIFORM_MODES
    }


# --- communication --------------------------------------------------------------------------------


def ring_bytes(kv_bytes: int, world: int, a: int) -> tuple[int, int]:
    """(forward, backward) bytes one rank sends in one ring attention call: W-1 k/v hops each
    way, plus W-1 hops of the dk/dv accumulators in the backward (the first, one block's
    share, in the activation dtype; later ones fp32)."""
    if world == 1:
        return 0, 0
    return (world - 1) * kv_bytes, world * kv_bytes + (world - 2) * kv_bytes * FP32 // a


def layer_comm(cfg: Config, a: int, kind: str) -> dict[str, tuple[int, int]]:
    """(forward, backward) bytes one rank sends in one attention layer of `kind` (dense, tile,
    global) for one micro-batch, per collective kind (CommStats' names)."""
    m, w = cfg.model, cfg.parallel.cp_degree
    B, N = cfg.train.micro_batch_size, cfg.train.seq_len
    hd, H, G = m.dim // m.num_heads, m.num_heads, m.num_kv_heads
    if w == 1:
        return {}
    if kind == "dense":
        return {"ring": ring_bytes(2 * B * (N // w) * G * hd * a, w, a)}
    spec = spec_of(cfg)
    S = spec.selected_length(N)
    out = {"ring": ring_bytes(2 * B * (S // w) * G * hd * a, w, a)}
    local_chunks = cfg.cp_chunks() // w
    halo = (w - 1) * local_chunks * B * (spec.num_levels - 1) * H * hd * a
    out["all_gather"] = (halo, 0)  # the spills of each chunk's last windows
    out["reduce_scatter"] = (0, halo)
    if kind == "global":
        # Candidate scores of the levels L..2 (coarsest: all windows; finer: p children of the
        # k selected), 2 fp32 per (batch, kv head) window, one all-reduce (sum) per level.
        levels = [N // spec.coarsest_window] + [spec.topk * spec.pooling_factor] * (
            spec.num_levels - 2
        )
        scores = sum(2 * (w - 1) * -(-2 * B * G * c // w) * FP32 for c in levels)
        out["all_reduce"] = (scores, 0)
        # q/k/v rows of a kv group travel from their owner to the rank attending them, outputs
        # back, and the backward mirrors both. Data-dependent: rows stay home while each chunk
        # holds its share of the causal order. Pessimistic: every fine-level entry moves.
        rows = B * G * (S - N // spec.coarsest_window) // w
        moved = rows * (2 * (H // G) * hd + 2 * hd) * a
        out["all_to_all"] = (moved, moved)
    return out


@dataclass
class CommEstimate:
    """Bytes one rank sends per optimizer step: attention traffic per stage and kind, and the
    gradient synchronisation."""

    attention: dict[int, dict[str, int]]
    gradients: int
    gradient_note: str

    def total(self, stage: int) -> int:
        return sum(self.attention[stage].values()) + self.gradients


def gradient_bytes(cfg: Config) -> tuple[int, str]:
    """Bytes one rank sends to synchronise gradients per optimizer step (ring algorithms:
    an all-reduce sends 2(W-1)/W of the buffer, a reduce-scatter or all-gather (W-1)/W)."""
    t = cfg.train
    w = cfg.parallel.dp_degree * cfg.parallel.cp_degree
    if w == 1:
        return 0, "one rank: no gradient traffic"
    share = FP32 * param_count(cfg) * (w - 1) // w
    if t.engine == "torch" or t.zero_stage in (0, 1):
        name = "all-reduce" if t.engine == "torch" or t.zero_stage == 0 else "reduce-scatter + "
        if name != "all-reduce":
            name += "all-gather of the updated parameters"
        return 2 * share, f"fp32 gradients over {w} ranks, {name}, once per step"
    if t.zero_stage == 2:
        return (t.grad_accum_steps + 1) * share, (
            f"ZeRO-2 over {w} ranks: reduce-scatter per micro-batch + parameter all-gather"
        )
    return 3 * t.grad_accum_steps * share, (
        f"ZeRO-3 over {w} ranks: parameter all-gather (fwd, bwd) + reduce-scatter per micro-batch"
    )


def estimate_comm(
    cfg: Config, device_type: str = "cuda", plan: list[str] | None = None
) -> CommEstimate:
    """Per-rank traffic of one optimizer step of `cfg` (resolved), per stage."""
    a = compute_bytes(cfg, device_type)
    t = cfg.train
    sparse = set(cfg.sparse_layers())
    plan = plan or recompute_plan(cfg, device_type)
    attention = {}
    for stage in (1, 2) if sparse and t.stage1_steps > 0 else (2,):
        totals: dict[str, int] = {}
        for layer in range(cfg.model.num_layers):
            repeats = 2 if plan[layer] == "full" else 1  # a full recompute repeats the forward
            kind = cfg.lighthouse.selection if stage == 1 and layer in sparse else "dense"
            for name, (fwd, bwd) in layer_comm(cfg, a, kind).items():
                key = f"{name} ({'dense' if kind == 'dense' else 'lighthouse'})"
                totals[key] = totals.get(key, 0) + (repeats * fwd + bwd) * t.grad_accum_steps
        attention[stage] = totals
    grads, note = gradient_bytes(cfg)
    return CommEstimate(attention, grads, note)


# --- report ---------------------------------------------------------------------------------------


def gib(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (GiB at most)."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{int(n)} B"


def describe_layout(cfg: Config) -> list[str]:
    p, t, m = cfg.parallel, cfg.train, cfg.model
    chunks = cfg.cp_chunks()
    lines = [
        f"layout      dp {p.dp_degree} x cp {p.cp_degree} = {p.dp_degree * p.cp_degree} rank(s), "
        f"{p.layout}: {chunks} chunk(s) of {t.seq_len // chunks:,} tokens, "
        f"{t.seq_len // p.cp_degree:,} tokens per rank",
        f"model       {m.flavor}: {m.num_layers} layers, dim {m.dim}, {m.num_heads} heads / "
        f"{m.num_kv_heads} kv heads (head dim {m.dim // m.num_heads}), ffn {m.ffn_dim}, "
        f"vocab {m.vocab_size}; {param_count(cfg) / 1e6:,.1f}M parameters",
        f"batch       {t.micro_batch_size} x {t.seq_len:,} tokens x {t.grad_accum_steps} "
        f"micro-batches x dp {p.dp_degree} = "
        f"{t.micro_batch_size * t.seq_len * t.grad_accum_steps * p.dp_degree:,} tokens per step",
    ]
    sparse = cfg.sparse_layers()
    if sparse and t.stage1_steps > 0:
        spec = spec_of(cfg)
        lh = cfg.lighthouse
        S = spec.selected_length(t.seq_len)
        per = spec.entries_per_level(t.seq_len)
        detail = (
            f"{spec.num_tiles} tiles, {spec.num_tiles // chunks} per chunk"
            if lh.selection == "tile"
            else "one cascade over the sequence"
        )
        lines.append(
            f"attention   Lighthouse {lh.selection} L={lh.num_levels} p={lh.pooling_factor} "
            f"k={lh.topk} in {len(sparse)} of {m.num_layers} layers for {t.stage1_steps:,} "
            f"steps ({detail}), then dense"
        )
        lines.append(
            f"            S = {' + '.join(f'{n:,}' for n in per)} = {S:,} selected entries "
            f"({100 * S / t.seq_len:.1f}% of N), {S // p.cp_degree:,} per rank"
        )
    else:
        lines.append("attention   dense causal attention in every layer")
    return lines


def format_report(cfg: Config, device_type: str = "cuda", device_memory: int | None = None) -> str:
    """What `lhdist check` prints for a valid, resolved config (`device_memory`: bytes per
    device, for train.activation_checkpointing=auto and what fits)."""
    plan = recompute_plan(cfg, device_type, device_memory)
    mem, comm = estimate_memory(cfg, device_type, plan), estimate_comm(cfg, device_type, plan)
    t = cfg.train
    lines = describe_layout(cfg)
    lines.append(describe_recompute(cfg, device_type, device_memory, plan))
    lines.append(f"memory per rank ({device_type}; {'; '.join(mem.notes)})")
    lines += [
        f"  parameters      {gib(mem.parameters)}",
        f"  gradients       {gib(mem.gradients)}",
        f"  optimizer       {gib(mem.optimizer)}",
    ]
    for stage in mem.activations:
        lines.append(
            f"  activations     {gib(mem.activations[stage])} stage {stage} "
            f"(+ {gib(mem.transient[stage])} transient) -> peak {gib(mem.peak_at(stage))}"
        )
    lines.append(f"  peak (est.)     {gib(mem.peak)}")
    lines.append(f"communication per rank per step ({t.grad_accum_steps} micro-batch(es))")
    for stage, kinds in comm.attention.items():
        parts = ", ".join(f"{k} {gib(v)}" for k, v in sorted(kinds.items())) or "none (cp=1)"
        lines.append(f"  stage {stage} attention   {parts}")
    if any("all_to_all" in k for kinds in comm.attention.values() for k in kinds):
        lines.append("  (all_to_all: pessimistic, every fine-level entry changing rank)")
    lines.append(f"  gradients         {gib(comm.gradients)} ({comm.gradient_note})")
    for stage in comm.attention:
        lines.append(f"  stage {stage} total       {gib(comm.total(stage))}")
    return "\n".join(lines)


def describe_recompute(
    cfg: Config, device_type: str, device_memory: int | None, plan: list[str]
) -> str:
    """One line: the peak with each activation-checkpointing mode, which fit, what runs."""
    options = recompute_options(cfg, device_type)
    peaks = ", ".join(f"{mode} {gib(peak)}" for mode, peak in options.items())
    line = f"recompute   peak with activation_checkpointing={{{peaks}}}"
    if device_memory:
        fits = [m for m, peak in options.items() if peak <= AUTO_MEMORY_FRACTION * device_memory]
        line += (f"; fit {AUTO_MEMORY_FRACTION:.0%} of {gib(device_memory)}: "
                 f"{', '.join(fits) or 'none of them'}")  # fmt: skip
    mode = recompute_mode(cfg)
    line += f"; {mode}: {describe_plan(plan)}"
    if mode == "auto" and not device_memory:
        line += " (no device memory known: pass --gpu-memory-gib)"
    return line


def preflight(
    cfg: Config,
    world_size: int,
    device_type: str,
    device_memory: int | None = None,
    log: Callable[[str], None] | None = None,
) -> MemoryEstimate:
    """The job-start check: ValueError (numbers and rule) unless the resolved `cfg` can run on
    `world_size` ranks; `log` (rank 0) receives the report and a warning when the estimated
    peak exceeds `device_memory` bytes. Pure arithmetic: no process group, no device."""
    validate(cfg, world_size)
    mem = estimate_memory(cfg, device_type, recompute_plan(cfg, device_type, device_memory))
    if log is not None:
        report = format_report(cfg, device_type, device_memory)
        log("[check] " + report.replace("\n", "\n[check] "))
        if device_memory and mem.peak > device_memory:
            log(
                f"[check] warning: estimated peak {gib(mem.peak)} per rank exceeds the device's "
                f"{gib(device_memory)}; consider train.activation_checkpointing=auto or full, a "
                f"larger parallel.cp_degree or train.zero_stage"
            )
    return mem


def job_preflight(cfg: Config, is_rank0: bool) -> MemoryEstimate:
    """`preflight` at the start of a job, before any collective: the world size from the process
    group or torchrun's WORLD_SIZE, the device the loop will pick and its memory. Every rank
    runs the same arithmetic (so every rank stops on an invalid layout, none waits for a
    peer); rank 0 prints the report."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
    want = cfg.train.device
    cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    memory = None
    if cuda and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        memory = torch.cuda.get_device_properties(local_rank).total_memory
    log = (lambda text: print(text, flush=True)) if is_rank0 else None
    return preflight(cfg, world, "cuda" if cuda else "cpu", memory, log)


# --- command line ---------------------------------------------------------------------------------


def load_for_check(path: str | None, overrides: list[str], world_size: int | None) -> Config:
    """Defaults < YAML < overrides, resolved on `world_size` (default: the config's
    dp_degree x cp_degree when dp_degree is set, else $WORLD_SIZE, else cp_degree)."""
    cfg = Config()
    if path is not None:
        apply_mapping(cfg, read_config_file(path), origin=str(path))
    mapping: dict[str, dict] = {}
    for key, value in parse_overrides(overrides):
        section, _, name = key.partition(".")
        mapping.setdefault(section, {})[name] = value
    apply_mapping(cfg, mapping, origin="command line")
    if world_size is None:
        p = cfg.parallel
        if p.dp_degree > 0:
            world_size = p.dp_degree * p.cp_degree
        else:
            world_size = int(os.environ.get("WORLD_SIZE", p.cp_degree))
    return resolve(cfg, world_size)


def main(argv: list[str] | None = None) -> int:
    from lhdist.errors import OneLineParser

    parser = OneLineParser(
        prog="lhdist check",
        allow_abbrev=False,
        add_help=False,
        description="Dry-run a layout without GPUs: validate the config for WORLD_SIZE ranks and "
        "print per-rank memory and per-step communication.\nExit code 0 when valid, 2 "
        "(with the numbers) when not.",
        epilog="Config keys:\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the sections to change")
    parser.add_argument("--world-size", type=int, default=None, help="ranks of the job")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="device the job runs on when train.device is auto (sets the activation dtype)",
    )
    parser.add_argument(
        "--gpu-memory-gib",
        type=float,
        default=0.0,
        help="fail (exit 2) when the estimated peak per rank exceeds this",
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    args, overrides = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        return 0
    try:
        cfg = load_for_check(args.config, overrides, args.world_size)
        world = cfg.parallel.dp_degree * cfg.parallel.cp_degree
        device_type = device_type_of(cfg, args.device)
        limit = int(args.gpu_memory_gib * GIB)
        mem = preflight(cfg, world, device_type, limit or None)
    except (ValueError, FileNotFoundError) as e:
        print(f"lhdist check: invalid: {e}", file=sys.stderr)
        return 2
    where = args.config or "defaults"
    print(f"lhdist check: {where} on {world} rank(s): valid")
    print(format_report(cfg, device_type, limit or None))
    if limit and mem.peak > limit:
        print(
            f"lhdist check: invalid: estimated peak {gib(mem.peak)} per rank exceeds "
            f"--gpu-memory-gib={args.gpu_memory_gib:g}",
            file=sys.stderr,
        )
        return 2
    return 0
