"""Typed run config: dataclass sections, YAML + `--section.key=value` overrides, validation."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lhdist.config_ranges import check_ranges

# Dims of each model flavor (Llama-3 style). `None` fields of ModelConfig are filled from here.
MODEL_FLAVORS: dict[str, dict[str, Any]] = {
    # CPU-sized: trains in minutes on 2 cores.
    "tiny": dict(
        dim=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        ffn_dim=384,
        rope_theta=10000.0,
        tie_embeddings=True,
    ),
    # Our pick for the paper's 270M ablation model: 24 x 1024, ~264M non-embedding parameters.
    "270m": dict(
        dim=1024,
        num_layers=24,
        num_heads=16,
        num_kv_heads=8,
        ffn_dim=2560,
        rope_theta=500000.0,
        tie_embeddings=False,
    ),
    # Our pick for the paper's 530M model: 30 layers (the paper keeps 0, 1, 28, 29 dense),
    # head dim 128, ~516M non-embedding parameters.
    "530m": dict(
        dim=1280,
        num_layers=30,
        num_heads=10,
        num_kv_heads=2,
        ffn_dim=3456,
        rope_theta=500000.0,
        tie_embeddings=False,
    ),
    # Llama-3.2-1B dims.
    "1b": dict(
        dim=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        ffn_dim=8192,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
    # Llama-3-8B dims.
    "8b": dict(
        dim=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        ffn_dim=14336,
        rope_theta=500000.0,
        tie_embeddings=False,
    ),
}

LAYOUTS = ("zigzag", "contiguous")
ENGINES = ("deepspeed", "torch")
LR_SCHEDULES = ("constant", "cosine", "linear", "wsd")
DECAY_SHAPES = ("linear", "cosine")
DTYPES = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
RECOMPUTE_MODES = ("none", "full", "ffn", "auto")
SDPA_PRIORITIES = ("cudnn", "default")


@dataclass
class ModelConfig:
    """The Llama-3 model; dims left at None come from `flavor`."""

    flavor: str = "tiny"
    """One of tiny, 270m, 530m, 1b, 8b; supplies every dim not set explicitly."""
    dim: int | None = None
    """Hidden size."""
    num_layers: int | None = None
    """Transformer blocks."""
    num_heads: int | None = None
    """Query heads H."""
    num_kv_heads: int | None = None
    """Key/value heads G (GQA); must divide num_heads."""
    ffn_dim: int | None = None
    """SwiGLU hidden size."""
    rope_theta: float | None = None
    """RoPE base; positions are global token positions, so CP shards need no rank logic."""
    tie_embeddings: bool | None = None
    """Share the input embedding with the output projection."""
    vocab_size: int = 320
    """Embedding rows; at least the tokenizer's vocabulary (byte-level: 256 + specials)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal weight init (output projections scaled by 1/sqrt(2*num_layers))."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE frequency scaling as in a Hugging Face config.json: {rope_type: llama3, factor,
    low_freq_factor, high_freq_factor, original_max_position_embeddings} or {rope_type: yarn,
    factor, original_max_position_embeddings, beta_fast, beta_slow, ...}; None: plain RoPE."""
    hf_config: str = ""
    """A Hugging Face Llama folder whose config.json supplies every dim, the vocabulary, norm_eps
    and (unless set here) the RoPE; dims set here must agree with it."""


@dataclass
class LighthouseConfig:
    """Lighthouse attention in the sparse layers during stage 1 (paper's names)."""

    enabled: bool = True
    """Use Lighthouse in stage 1; false trains dense attention throughout (the baseline)."""
    num_levels: int = 3
    """Pyramid levels L >= 2."""
    pooling_factor: int = 4
    """Window growth p per level (power of two)."""
    topk: int = 128
    """Selection budget k per level (multiple of 128)."""
    selection: str = "tile"
    """'tile' (paper, reference-exact) or 'global'."""
    scorer: str = "norm"
    """Parameter-free scorer ('norm')."""
    competition: str = "topk"
    """'topk' (paper: a window competes with its whole tile) or 'causal' (only with windows that
    end before it, so stage 1 never looks ahead; tile selection only)."""
    scatter: str = "sum"
    """How a position combines its 1..L entry outputs: 'sum' (paper) or 'mean' (one process)."""
    full_attn_layers: list[int] | None = None
    """Layers that stay dense; None: first two and last two (first and last below 8 layers)."""
    dense_every: int = 0
    """Every n-th stage-1 step trains with dense attention in every layer (0: never), so the
    stage-1 model stays usable with dense attention and the resume starts closer to it."""


@dataclass
class ParallelConfig:
    """Process layout: world = dp_degree x cp_degree."""

    dp_degree: int = -1
    """Data-parallel replicas; -1: world_size / cp_degree."""
    cp_degree: int = 1
    """Context-parallel ranks that share one sequence."""
    layout: str = "zigzag"
    """How a sequence is cut over CP ranks: 'zigzag' (2*cp chunks, balanced) or 'contiguous'."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on GPU, gloo on CPU), nccl or gloo."""
    timeout_s: int = 600
    """Collective timeout in seconds."""


@dataclass
class DataConfig:
    """Training data."""

    path: str = ""
    """Prepared MDS dataset directory (`lhdist data prepare`); empty: the built-in corpus."""
    val_path: str = ""
    """Held-out dataset; empty: <data.path>/val when it exists (`data prepare --val-fraction`),
    or the built-in corpus's held-out files."""
    seed: int = 0
    """Shuffle seed of the data loader."""
    verify_hashes: bool = True
    """Hash every shard at start (rank 0 only; other ranks check presence and sizes)."""
    prefetch_batches: int = 2
    """Batches read (and sharded, pinned) ahead by a background thread while the step runs; 0:
    read in the loop. Either way the same batches in the same order."""


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-3
    """Peak learning rate (1e-3: 3e-3 gave loss spikes at 25M/32K; lhdist/train/README.md)."""
    min_lr_ratio: float = 0.1
    """Final lr / peak lr for the cosine and linear schedules."""
    schedule: str = "constant"
    """After warmup: 'constant', 'cosine' or 'linear' decay to min_lr_ratio*lr at train.steps, or
    'wsd' (warmup, stable, decay over the last optim.decay_steps)."""
    warmup_steps: int = 20
    """Linear warmup from 0 to lr."""
    decay_steps: int = 0
    """wsd: steps of the final decay to min_lr_ratio*lr (they end at train.steps)."""
    decay_shape: str = "linear"
    """wsd: shape of the final decay, 'linear' or 'cosine'."""
    resume_warmup_steps: int = 0
    """Linear re-warmup of the lr over this many steps after the switch to dense; 0: none."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to norms)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables (under DeepSpeed ZeRO-1/2 it also skips
    the norm and the host read DeepSpeed makes of it every step: grad_norm is then null)."""


@dataclass
class TrainConfig:
    """The run: steps, stages, batch, engine, logging."""

    steps: int = 400
    """Total optimizer steps (stage 1 + stage 2)."""
    stage1_steps: int = 250
    """Steps with Lighthouse in the sparse layers; afterwards every layer is dense (the default
    leaves the paper's 37.5% to the dense resume)."""
    seq_len: int = 2048
    """Tokens per sequence N (global, before CP sharding)."""
    micro_batch_size: int = 1
    """Sequences per data-parallel replica per forward/backward."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; global batch = dp_degree x grad_accum x micro_batch."""
    engine: str = "deepspeed"
    """'deepspeed' (ZeRO) or 'torch' (plain all-reduce over dp x cp)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3."""
    activation_checkpointing: bool | str = False
    """What the backward recomputes instead of keeping: false/'none', true/'full' (every block),
    'ffn' (every block's SwiGLU only) or 'auto' (the least that `lhdist check` estimates to fit
    the device's memory, block by block)."""
    compile: bool = False
    """torch.compile each transformer block (one graph per attention kind, shared by all blocks;
    the Lighthouse op traces whole; CP attention runs eager between the compiled parts)."""
    sdpa_priority: str = "cudnn"
    """CUDA SDPA kernel order for the dense and Lighthouse attention calls: 'cudnn' (cuDNN, then
    flash, memory-efficient, math: the first that takes the inputs) or 'default' (torch's)."""
    profile_steps: list[int] = field(default_factory=list)
    """[first, last] (or several such pairs): a torch.profiler trace of each window of steps into
    <run_dir>/profile/ (chrome trace JSON, for Perfetto or chrome://tracing); empty: none."""
    loss_chunk_tokens: int = 8192
    """Tokens per chunk of the output projection + cross-entropy (full logits never exist)."""
    dtype: str = "auto"
    """Compute dtype: auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    seed: int = 0
    """Seed of the weight init and every RNG."""
    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace), so a rerun
    of one seed on the same machine reproduces its losses; slower on GPU."""
    run_dir: str = "runs/tiny_cpu"
    """Where the resolved config, metrics.jsonl, TensorBoard and checkpoints go."""
    log_every: int = 10
    """A console line every this many steps (JSONL and the progress bar get every step)."""
    tensorboard: bool = True
    """Write TensorBoard events when tensorboard is installed."""
    peak_tflops: float = 0.0
    """Per-device peak for MFU; 0: known GPU table, or a short matmul probe on CPU."""
    num_threads: int = 0
    """torch intra-op threads per process on CPU; 0: cores / local processes."""
    max_bad_steps: int = 0
    """Steps with a non-finite loss or gradient norm tolerated (skipped where the engine can)
    before the run stops; 0: stop at the first."""


@dataclass
class EvalConfig:
    """Held-out loss during training and the long-context checks at the end."""

    every: int = 0
    """Held-out eval every this many steps; 0: only at the last step."""
    batches: int = 4
    """Held-out micro-batches per eval (the val set's first ones, the same at every eval and in
    every run with the same data); 0: no held-out eval."""
    causal_reselection: bool = True
    """Also report the held-out loss with causal competition (lighthouse.competition=causal) in
    stage 1: how much the selection's look-ahead lowers the Lighthouse loss."""
    final: bool = True
    """After the last step, passkey retrieval and loss by position (`lhdist eval`) into
    <run_dir>/eval_final.json (one process per CP group; skipped under cp>1 or ZeRO-3)."""
    passkey_lengths: list[int] | None = None
    """Passkey prompt lengths (<= train.seq_len); None: seq_len/4, seq_len/2 and seq_len, those
    that fit the Lighthouse rules."""
    passkey_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Where the passkey sits in the filler, as a fraction of the prompt."""
    passkey_trials: int = 4
    """Random passkeys per (length, depth)."""
    passkey_digits: int = 5
    """Digits of each passkey."""
    position_buckets: int = 8
    """Equal position buckets of the held-out loss by position."""


@dataclass
class CheckpointConfig:
    """Atomic checkpoints and automatic resume."""

    enabled: bool = True
    """Save checkpoints."""
    every: int = 200
    """Save every this many steps (and at the last step)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    dir: str = ""
    """Checkpoint directory; empty: <run_dir>/checkpoints."""
    resume: str = "auto"
    """'auto' (latest in dir, if any), 'none', or a checkpoint path."""
    init_from: str = ""
    """A Hugging Face Llama folder (config.json + safetensors) whose weights start a fresh run
    (ignored when resuming); the model dims must match its config.json."""


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    lighthouse: LighthouseConfig = field(default_factory=LighthouseConfig)
    """Sparse attention of stage 1."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """dp x cp layout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and lr schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, batch, engine, logging."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out and long-context evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""

    # --- derived values (all config-only; no torch) ---------------------------------------------

    def sparse_layers(self) -> list[int]:
        """Layers that run Lighthouse in stage 1 (empty when Lighthouse is disabled)."""
        if not self.lighthouse.enabled:
            return []
        dense = set(self.lighthouse.full_attn_layers or [])
        return [i for i in range(self.model.num_layers) if i not in dense]

    def bf16_compute(self, device_type: str) -> bool:
        """Whether the forward runs under bf16 autocast on `device_type` (cpu or cuda); the
        weights, gradients and optimizer state stay fp32 either way."""
        dtype = self.train.dtype
        return dtype == "bf16" or (dtype == "auto" and device_type == "cuda")

    def cp_chunks(self) -> int:
        """Equal pieces a sequence is cut into for CP: 2*cp (zigzag) or cp (contiguous)."""
        cp = self.parallel.cp_degree
        return 2 * cp if self.parallel.layout == "zigzag" and cp > 1 else cp

    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or os.path.join(self.train.run_dir, "checkpoints"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = typing.get_type_hints(Config)  # section name -> its dataclass


# --- docs ----------------------------------------------------------------------------------------


def field_docs() -> dict[str, str]:
    """`section.key` -> the field's one-line docstring (read from this module's source)."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(Config)))
    docs: dict[str, str] = {}
    section_of = {cls.__name__: name for name, cls in SECTIONS.items()}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or node.name not in section_of:
            continue
        body = node.body
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            ):
                doc = " ".join(str(nxt.value.value).split())  # one line in --help
                docs[f"{section_of[node.name]}.{stmt.target.id}"] = doc
    return docs


def describe_keys() -> str:
    """Every `--section.key` with its default and docstring, for `--help`."""
    docs, default, lines = field_docs(), Config(), []
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(default, section)):
            key = f"{section}.{f.name}"
            value = getattr(getattr(default, section), f.name)
            lines.append(f"  --{key + '=' + repr(value):<38} {docs.get(key, '')}")
    return "\n".join(lines)


# --- typed assignment ----------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ValueError naming `key`, the type and the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}={value!r} must be {_type_name(tp)}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}={value!r} must be a list of {_type_name(item)}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    got = type(value).__name__
    raise ValueError(f"{key}={value!r} must be of type {_type_name(tp)}, got {got}")


def _set_key(cfg: Config, key: str, value: Any, origin: str) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ValueError(
            f"unknown config key {key!r} (from {origin}); keys are <section>.<field> with "
            f"sections: {', '.join(SECTIONS)}"
        )
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        valid = ", ".join(f"{section}.{n}" for n in hints)
        raise ValueError(f"unknown config key {key!r} (from {origin}); valid keys: {valid}")
    try:
        setattr(obj, name, _coerce(value, hints[name], key))
    except ValueError as e:
        valid = ", ".join(f"{section}.{n}: {_type_name(t)}" for n, t in hints.items())
        raise ValueError(f"{e} (from {origin}); valid keys: {valid}") from None


def apply_mapping(cfg: Config, mapping: dict[str, Any], origin: str) -> None:
    """Set every `section: {key: value}` of `mapping` on `cfg`, strictly."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{origin} must hold a mapping of sections, got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section not in SECTIONS:
            raise ValueError(
                f"unknown config section {section!r} (from {origin}); valid sections: "
                f"{', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ValueError(f"section {section!r} (from {origin}) must be a mapping of keys")
        for name, value in values.items():
            _set_key(cfg, f"{section}.{name}", value, origin)


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """`['--train.steps=10', '--optim.lr', '1e-3']` -> `[('train.steps', 10), ('optim.lr', ...)]`.

    Values are read as YAML scalars/lists, so `true`, `3`, `[0, 3]` get their natural types.
    """
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ValueError(f"expected --section.key=value, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{arg} needs a value")
            key, raw = arg[2:], args[i + 1]
            i += 1
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ValueError(
                f"override --{key}={raw}: the value is not valid YAML ({yaml_problem(e)}); quote "
                "strings that hold YAML syntax"
            ) from None
        pairs.append((key, value))
        i += 1
    return pairs


def yaml_problem(error: Exception) -> str:
    """'line 3, column 7: mapping values are not allowed here' from a PyYAML error."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The `section: {key: value}` mapping of a YAML config file, or one ValueError naming it."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"--config {file} is a directory; name a YAML file (e.g. {file}/X.yaml)")
    if not file.is_file():
        raise ValueError(f"--config {file} does not exist")
    try:
        mapping = yaml.safe_load(file.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"--config {file} is not a text (YAML) file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {file} is not valid YAML: {yaml_problem(e)}") from None
    return mapping or {}


# --- resolution and validation -------------------------------------------------------------------


def resolve(cfg: Config, world_size: int) -> Config:
    """Fill flavor dims, dp_degree and full_attn_layers in place, then validate. Returns cfg."""
    m = cfg.model
    if m.hf_config:  # before the flavor: the folder's dims win over the flavor's
        from lhdist.interop.hf_config import fill_model_from_hf

        fill_model_from_hf(m)
    if m.flavor not in MODEL_FLAVORS:
        raise ValueError(f"model.flavor={m.flavor!r} must be one of {list(MODEL_FLAVORS)}")
    for key, value in MODEL_FLAVORS[m.flavor].items():
        if getattr(m, key) is None:
            setattr(m, key, value)
    p = cfg.parallel
    if p.cp_degree < 1:
        raise ValueError(f"parallel.cp_degree={p.cp_degree} must be >= 1")
    if p.dp_degree == -1:
        if world_size % p.cp_degree:
            raise ValueError(
                f"world_size={world_size} is not divisible by parallel.cp_degree={p.cp_degree}"
            )
        p.dp_degree = world_size // p.cp_degree
    if cfg.lighthouse.full_attn_layers is None:
        n = m.num_layers
        edge = 2 if n >= 8 else 1
        cfg.lighthouse.full_attn_layers = sorted(set(range(edge)) | set(range(n - edge, n)))
    validate(cfg, world_size)
    return cfg


def validate(cfg: Config, world_size: int) -> None:
    """Raise ValueError (numbers and rule) for any setting that cannot run on `world_size`."""
    m, lh, p, t = cfg.model, cfg.lighthouse, cfg.parallel, cfg.train
    o, c = cfg.optim, cfg.checkpoint
    check_ranges(cfg)
    for key in ("dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size"):
        if getattr(m, key) < 1:
            raise ValueError(f"model.{key}={getattr(m, key)} must be >= 1")
    if m.num_heads % m.num_kv_heads:
        raise ValueError(
            f"model.num_heads={m.num_heads} must be divisible by model.num_kv_heads="
            f"{m.num_kv_heads} (GQA shares each kv head among num_heads/num_kv_heads queries)"
        )
    if m.dim % m.num_heads or (m.dim // m.num_heads) % 2:
        raise ValueError(
            f"model.dim={m.dim} must be num_heads={m.num_heads} x an even head dim (RoPE rotates "
            f"pairs)"
        )
    from lhdist.model.rope_scaling import check_rope_scaling

    check_rope_scaling(m.rope_scaling)
    if p.dp_degree < 1 or p.dp_degree * p.cp_degree != world_size:
        raise ValueError(
            f"parallel.dp_degree={p.dp_degree} x parallel.cp_degree={p.cp_degree} = "
            f"{p.dp_degree * p.cp_degree} must equal the world size {world_size}"
        )
    if p.layout not in LAYOUTS:
        raise ValueError(f"parallel.layout={p.layout!r} must be one of {LAYOUTS}")
    if p.backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"parallel.backend={p.backend!r} must be auto, nccl or gloo")
    if p.backend == "nccl" and t.device == "cpu":
        raise ValueError(
            "parallel.backend=nccl runs on CUDA devices but train.device=cpu; use "
            "parallel.backend=gloo (or auto)"
        )
    chunks = cfg.cp_chunks()
    if t.seq_len < 2 or t.seq_len % chunks:
        rule = "2*cp_degree" if p.layout == "zigzag" and p.cp_degree > 1 else "cp_degree"
        raise ValueError(
            f"train.seq_len={t.seq_len} must be divisible by {rule}={chunks} "
            f"(layout={p.layout}, cp_degree={p.cp_degree})"
        )
    for layer in lh.full_attn_layers or []:
        if not 0 <= layer < m.num_layers:
            raise ValueError(
                f"lighthouse.full_attn_layers has {layer}, outside [0, num_layers={m.num_layers})"
            )
    if cfg.sparse_layers():
        check_lighthouse_layout(cfg)
    if not 0 <= t.stage1_steps <= t.steps:
        raise ValueError(f"train.stage1_steps={t.stage1_steps} must be in [0, steps={t.steps}]")
    for key in ("steps", "micro_batch_size", "grad_accum_steps", "log_every", "loss_chunk_tokens"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}={getattr(t, key)} must be >= 1")
    for key, value, options in (
        ("train.engine", t.engine, ENGINES),
        ("train.dtype", t.dtype, DTYPES),
        ("train.device", t.device, DEVICES),
        ("optim.schedule", o.schedule, LR_SCHEDULES),
    ):
        if value not in options:
            raise ValueError(f"{key}={value!r} must be one of {options}")
    if not 0 <= t.zero_stage <= 3:
        raise ValueError(f"train.zero_stage={t.zero_stage} must be 0, 1, 2 or 3")
    validate_speed(cfg)
    if o.lr <= 0 or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1 or o.grad_clip < 0:
        raise ValueError(
            f"optim.lr={o.lr} must be > 0, optim.warmup_steps={o.warmup_steps} >= 0, "
            f"optim.min_lr_ratio={o.min_lr_ratio} in [0, 1], optim.grad_clip={o.grad_clip} >= 0"
        )
    if o.schedule == "wsd" and not 0 < o.decay_steps <= t.steps - o.warmup_steps:
        raise ValueError(
            f"optim.schedule=wsd needs 0 < optim.decay_steps={o.decay_steps} <= train.steps - "
            f"optim.warmup_steps = {t.steps - o.warmup_steps}"
        )
    if o.decay_shape not in DECAY_SHAPES:
        raise ValueError(f"optim.decay_shape={o.decay_shape!r} must be one of {DECAY_SHAPES}")
    if o.decay_steps < 0 or o.resume_warmup_steps < 0:
        raise ValueError(
            f"optim.decay_steps={o.decay_steps} and optim.resume_warmup_steps="
            f"{o.resume_warmup_steps} must be >= 0"
        )
    validate_eval(cfg)
    if c.every < 1 or c.keep_last < 1:
        raise ValueError(
            f"checkpoint.every={c.every} and checkpoint.keep_last={c.keep_last} must be >= 1"
        )


def recompute_mode(cfg: Config) -> str:
    """train.activation_checkpointing as one of RECOMPUTE_MODES (the booleans of older configs
    are 'none' and 'full')."""
    value = cfg.train.activation_checkpointing
    if isinstance(value, bool):
        return "full" if value else "none"
    return value


def no_grad_norm(cfg: Config) -> bool:
    """DeepSpeed ZeRO-1/2 without clipping: the engine computes no gradient norm, so its step
    never reads one back to the host (DeepSpeed does, every step, to detect overflow)."""
    t = cfg.train
    return t.engine == "deepspeed" and t.zero_stage in (1, 2) and cfg.optim.grad_clip == 0


def validate_speed(cfg: Config) -> None:
    """Activation checkpointing mode, SDPA priority, profiled steps and prefetch depth."""
    t = cfg.train
    if recompute_mode(cfg) not in RECOMPUTE_MODES:
        raise ValueError(
            f"train.activation_checkpointing={t.activation_checkpointing!r} must be true, false "
            f"or one of {RECOMPUTE_MODES}"
        )
    if t.compile and t.engine == "deepspeed" and t.zero_stage == 3:
        raise ValueError(
            "train.compile=true with train.engine=deepspeed and train.zero_stage=3 is not "
            "supported: ZeRO-3 gathers each parameter in hooks that would run inside every "
            "compiled block; use zero_stage <= 2, train.engine=torch, or train.compile=false"
        )
    if no_grad_norm(cfg) and t.max_bad_steps > 0:
        raise ValueError(
            f"train.max_bad_steps={t.max_bad_steps} needs the gradient norm, which DeepSpeed "
            f"ZeRO-{t.zero_stage} skips when optim.grad_clip=0: set optim.grad_clip > 0 or "
            "train.max_bad_steps=0"
        )
    if t.sdpa_priority not in SDPA_PRIORITIES:
        raise ValueError(
            f"train.sdpa_priority={t.sdpa_priority!r} must be one of {SDPA_PRIORITIES}"
        )
    steps = t.profile_steps
    ordered = all(a <= b for a, b in zip(steps, steps[1:]))
    if len(steps) % 2 or not ordered or (steps and not 1 <= steps[0] <= steps[-1] <= t.steps):
        raise ValueError(
            f"train.profile_steps={steps} must be [first, last] (or several such pairs, in "
            f"order) with 1 <= first <= last <= train.steps={t.steps}"
        )
    if any(a == b for a, b in zip(steps[1::2], steps[2::2])):
        raise ValueError(f"train.profile_steps={steps}: a window must start after the last ends")
    if cfg.data.prefetch_batches < 0:
        raise ValueError(f"data.prefetch_batches={cfg.data.prefetch_batches} must be >= 0")


def validate_eval(cfg: Config) -> None:
    """Ranges of the eval section; passkey lengths must fit seq_len and the Lighthouse rules."""
    e, n = cfg.eval, cfg.train.seq_len
    for key in ("every", "batches"):
        if getattr(e, key) < 0:
            raise ValueError(f"eval.{key}={getattr(e, key)} must be >= 0")
    for key in ("passkey_trials", "passkey_digits", "position_buckets"):
        if getattr(e, key) < 1:
            raise ValueError(f"eval.{key}={getattr(e, key)} must be >= 1")
    if not 1 <= e.passkey_digits <= 18:
        raise ValueError(f"eval.passkey_digits={e.passkey_digits} must be in [1, 18]")
    if not e.passkey_depths or any(not 0.0 <= d <= 1.0 for d in e.passkey_depths):
        raise ValueError(f"eval.passkey_depths={e.passkey_depths} must be fractions in [0, 1]")
    if e.position_buckets > n:
        raise ValueError(f"eval.position_buckets={e.position_buckets} must be <= train.seq_len={n}")
    for length in e.passkey_lengths or []:
        if not 0 < length <= n:
            raise ValueError(
                f"eval.passkey_lengths has {length}: lengths must be in (0, train.seq_len={n}]"
                " (the model never saw longer positions)"
            )
        if cfg.sparse_layers():
            try:
                lighthouse_spec_of(cfg).check_seq_len(length)
            except ValueError as err:
                raise ValueError(
                    f"eval.passkey_lengths has {length}, which Lighthouse cannot select from: {err}"
                ) from None


def default_passkey_lengths(cfg: Config) -> list[int]:
    """seq_len/4, seq_len/2 and seq_len, those the Lighthouse rules accept (seq_len always)."""
    n = cfg.train.seq_len
    lengths = []
    for length in (n // 4, n // 2, n):
        if length < 64:
            continue
        if cfg.sparse_layers() and length != n:
            try:
                lighthouse_spec_of(cfg).check_seq_len(length)
            except ValueError:
                continue
        lengths.append(length)
    return lengths or [n]


def lighthouse_spec_of(cfg: Config):
    """The single-device LighthouseSpec of `cfg` (torch-only import)."""
    from lhdist.ops.spec import LighthouseSpec

    lh = cfg.lighthouse
    try:
        return LighthouseSpec(
            lh.num_levels, lh.pooling_factor, lh.topk, lh.selection, lh.scorer, lh.competition,
            lh.scatter,
        )  # fmt: skip
    except ValueError as e:  # the spec's own words are its field names, the config's keys
        raise ValueError(f"lighthouse.{e}") from None


def check_lighthouse_layout(cfg: Config) -> None:
    """Lighthouse rules per CP chunk: every chunk must select on its own (tile) or hold whole
    coarsest windows (global)."""
    n, chunks = cfg.train.seq_len, cfg.cp_chunks()
    spec = lighthouse_spec_of(cfg)  # torch-only import; the ops' own rules live there
    if spec.scatter == "mean" and cfg.parallel.cp_degree > 1:
        raise ValueError(
            f"lighthouse.scatter=mean runs on one process per sequence; parallel.cp_degree="
            f"{cfg.parallel.cp_degree} needs lighthouse.scatter=sum"
        )
    where = f"(cp_degree={cfg.parallel.cp_degree}, layout={cfg.parallel.layout}: {chunks} chunks)"
    if spec.selection == "global" or chunks == 1:
        try:
            spec.check_seq_len(n)
        except ValueError as e:
            raise ValueError(f"train.{e} (lighthouse.num_levels and pooling_factor)") from None
        if (n // chunks) % spec.coarsest_window:
            raise ValueError(
                f"train.seq_len={n} / {chunks} chunks = {n // chunks} tokens per chunk must be a "
                f"multiple of pooling_factor**(num_levels-1)={spec.coarsest_window} {where}"
            )
        selected = spec.selected_length(n)
        if selected % chunks:
            raise ValueError(
                f"the selected length S={selected} (N/p^(L-1) + (L-1)*p*k) must split into the "
                f"{chunks} CP chunks {where}"
            )
        return
    # Tile mode: each chunk runs its own tiles, so the tiles must split evenly over chunks.
    if spec.num_tiles % chunks:
        raise ValueError(
            f"lighthouse.topk={spec.topk} gives {spec.num_tiles} tiles (topk/128), which must be a "
            f"multiple of the {chunks} CP chunks {where}; {tile_fixes(cfg, 128 * chunks)}"
        )
    chunk_spec = dataclasses.replace(spec, topk=spec.topk // chunks)
    try:
        chunk_spec.check_seq_len(n // chunks)
    except ValueError as e:
        raise ValueError(f"per CP chunk of train.seq_len={n} {where}: {e}") from None


def tile_fixes(cfg: Config, tile_multiple: int) -> str:
    """Advice for a topk that does not split over the CP chunks, each option verified to pass
    the whole layout check (a fix that then fails on another rule is no fix)."""
    import copy

    fixes = []
    for topk in range(tile_multiple, 64 * tile_multiple + 1, tile_multiple):
        if topk < cfg.lighthouse.topk:
            continue
        trial = copy.deepcopy(cfg)
        trial.lighthouse.topk = topk
        try:
            check_lighthouse_layout(trial)
        except ValueError:
            continue
        fixes.append(f"--lighthouse.topk={topk}")
        break
    trial = copy.deepcopy(cfg)
    trial.lighthouse.selection = "global"
    try:
        check_lighthouse_layout(trial)
        fixes.append("--lighthouse.selection=global")
    except ValueError:
        pass
    if not fixes:
        return (
            f"topk must be a multiple of {tile_multiple}, and no such topk nor selection=global "
            f"fits train.seq_len={cfg.train.seq_len}: use a longer sequence or fewer CP chunks"
        )
    return "it works with " + " or with ".join(fixes)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    world_size: int | None = None,
) -> Config:
    """Defaults < YAML at `path` < `--section.key=value` overrides; resolved and validated.

    `world_size` defaults to $WORLD_SIZE (torchrun) or 1.
    """
    cfg = Config()
    if path is not None:
        apply_mapping(cfg, read_config_file(path), origin=str(path))
    for key, value in parse_overrides(list(overrides or [])):
        _set_key(cfg, key, value, origin="command line")
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return resolve(cfg, world_size)


def config_from_dict(mapping: dict[str, Any], world_size: int = 1) -> Config:
    """Rebuild a resolved config (e.g. the one stored in a checkpoint)."""
    cfg = Config()
    apply_mapping(cfg, mapping, origin="dict")
    return resolve(cfg, world_size)
