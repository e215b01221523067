"""Long-context checks of one model on one device, with each attention mode (dense, Lighthouse):
passkey retrieval over lengths and depths, and the held-out loss by position bucket.

Passkey: a prompt of exactly `length` tokens, held-out filler with the needle sentence at a
depth and the question at the end, so the answer is its last `digits` tokens. One
teacher-forced forward scores it: correct iff the argmax at every answer position is the true
digit. That is greedy decoding's exact match (greedy emits the same tokens up to its first
mistake), at a fixed sequence length, as Lighthouse's shape rules need.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lhdist.config import Config, default_passkey_lengths
from lhdist.model import AttentionFn
from lhdist.parallel.parallelize import (
    STAGE_DENSE,
    STAGE_SPARSE,
    AttentionRouter,
    attention_functions,
    lighthouse_spec,
)
from lhdist.train.data import DatasetInfo, TokenLoader
from lhdist.train.loss import IGNORE_INDEX
from lhdist.train.tokenizer import ByteTokenizer

NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is {key}"
# Fixed rather than data.seed: runs of different seeds are then scored on the same prompts.
PASSKEY_SEED = 1234
DEFAULT_POSITION_SAMPLES = 4  # when eval.batches is 0 (otherwise: the training eval's samples)
FILLER_POOL_FACTOR = 4  # filler read: this many times the longest prompt, so trials differ


# --- attention modes ------------------------------------------------------------------------


def attention_modes(cfg: Config) -> dict[str, AttentionFn]:
    """{"dense": every layer dense, "lighthouse": the run's stage-1 attention} on one device;
    only "dense" when the config has no Lighthouse layers."""
    sparse_layers = cfg.sparse_layers()
    spec = lighthouse_spec(cfg) if sparse_layers else None
    sparse, dense = attention_functions(spec, None, cfg)
    modes: dict[str, AttentionFn] = {}
    for name, stage in (("dense", STAGE_DENSE), ("lighthouse", STAGE_SPARSE)):
        if stage == STAGE_SPARSE and not sparse_layers:
            continue
        router = AttentionRouter(sparse, dense, sparse_layers)
        router.set_stage(stage)
        modes[name] = router
    return modes


# --- passkey prompts ------------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeySettings:
    lengths: list[int]
    depths: list[float]
    trials: int
    digits: int
    seed: int = PASSKEY_SEED


def passkey_overhead(digits: int, tokenizer: ByteTokenizer | None = None) -> int:
    """Tokens of the needle and the question: the shortest possible prompt."""
    tok = tokenizer or ByteTokenizer()
    key = "0" * digits
    return len(tok.encode(NEEDLE.format(key=key))) + len(tok.encode(QUESTION.format(key=key)))


def check_passkey_lengths(lengths: list[int], digits: int) -> None:
    shortest = passkey_overhead(digits)
    for length in lengths:
        if length < shortest:
            raise ValueError(
                f"passkey length {length} is shorter than its needle and question "
                f"({shortest} tokens with {digits} digits): use lengths >= {shortest}"
            )


def passkey_prompt(
    filler: np.ndarray, length: int, depth: float, key: str, tokenizer: ByteTokenizer | None = None
) -> np.ndarray:
    """int64 [length]: filler[:room] with the needle at round(depth * room), then the question;
    its last len(key) tokens are the key's digits."""
    tok = tokenizer or ByteTokenizer()
    needle, question = tok.encode(NEEDLE.format(key=key)), tok.encode(QUESTION.format(key=key))
    room = length - len(needle) - len(question)
    if room < 0 or len(filler) < room:
        raise ValueError(
            f"passkey length {length} needs {room} filler tokens beside the needle and "
            f"question; {len(filler)} given"
        )
    cut = int(round(depth * room))
    return np.concatenate([filler[:cut], needle, filler[cut:room], question]).astype(np.int64)


def passkey_trials(
    pool: np.ndarray, length: int, depth: float, settings: PasskeySettings
) -> Iterator[tuple[np.ndarray, str]]:
    """(prompt, key) for each trial at (length, depth): the same for the same seed, whatever
    the other lengths and depths (the generator is seeded from all three)."""
    rng = np.random.default_rng([settings.seed, length, int(round(depth * 1e6))])
    room = length - passkey_overhead(settings.digits)
    for _ in range(settings.trials):
        key = str(int(rng.integers(10 ** (settings.digits - 1), 10**settings.digits)))
        start = int(rng.integers(0, len(pool)))
        filler = np.take(pool, np.arange(start, start + room), mode="wrap")  # short pools repeat
        yield passkey_prompt(filler, length, depth, key), key


def answer_hits(model: Any, prompt: torch.Tensor, digits: int) -> torch.Tensor:
    """bool [digits]: whether the argmax prediction of each of the prompt's last `digits`
    tokens, read from the position before it, is that token. Logits exist only for those rows."""
    n = prompt.numel()
    positions = torch.arange(n, device=prompt.device)
    hidden = model.hidden_states(prompt[None], positions)[0]  # [N, dim]
    predicted = model.output(hidden[n - digits - 1 : n - 1]).argmax(-1)
    return predicted == prompt[n - digits :]


def passkey_rows(
    model: Any, mode: str, pool: np.ndarray, settings: PasskeySettings, device, progress
) -> list[dict[str, Any]]:
    rows = []
    for length in settings.lengths:
        start, exact = time.perf_counter(), []
        for depth in settings.depths:
            correct = digits_right = 0
            for prompt, _ in passkey_trials(pool, length, depth, settings):
                hits = answer_hits(model, torch.from_numpy(prompt).to(device), settings.digits)
                correct += bool(hits.all())
                digits_right += int(hits.sum())
                progress.advance()
            rows.append({
                "attention": mode, "length": length, "depth": depth, "trials": settings.trials,
                "accuracy": correct / settings.trials,
                "digit_accuracy": digits_right / (settings.trials * settings.digits),
            })  # fmt: skip
            exact.append(rows[-1]["accuracy"])
        progress.note(
            f"[eval] passkey {mode} length={length}: accuracy {sum(exact) / len(exact):.3f} "
            f"({len(settings.depths)} depths x {settings.trials} trials, "
            f"{time.perf_counter() - start:.1f} s)"
        )
    return rows


# --- loss by position -----------------------------------------------------------------------


def bucket_edges(seq_len: int, buckets: int) -> list[int]:
    """buckets+1 edges of equal position buckets covering [0, seq_len) exactly."""
    return [i * seq_len // buckets for i in range(buckets + 1)]


def token_losses(model: Any, sample: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """fp64 [N]: the loss of each position of a [N+1]-token sample (0 where the label is
    ignored), the output projection run `chunk_tokens` rows at a time."""
    input_ids, labels = sample[:-1], sample[1:]
    n = input_ids.numel()
    hidden = model.hidden_states(input_ids[None], torch.arange(n, device=sample.device))[0]
    losses = torch.empty(n, dtype=torch.float64, device=sample.device)
    for a in range(0, n, chunk_tokens):
        logits = model.output(hidden[a : a + chunk_tokens]).float()
        losses[a : a + chunk_tokens] = F.cross_entropy(
            logits, labels[a : a + chunk_tokens], reduction="none", ignore_index=IGNORE_INDEX
        )
    return losses


def position_loss_rows(
    model: Any, mode: str, samples: list[torch.Tensor], buckets: int, chunk_tokens: int, progress
) -> list[dict[str, Any]]:
    n = samples[0].numel() - 1
    loss_sum = torch.zeros(n, dtype=torch.float64)
    tokens = torch.zeros(n, dtype=torch.int64)
    for sample in samples:
        loss_sum += token_losses(model, sample, chunk_tokens).cpu()
        tokens += (sample[1:] != IGNORE_INDEX).cpu()
        progress.advance()
    rows, edges = [], bucket_edges(n, buckets)
    for b, (start, end) in enumerate(zip(edges, edges[1:])):
        count = int(tokens[start:end].sum())
        loss = float(loss_sum[start:end].sum()) / count if count else None
        rows.append({"attention": mode, "bucket": b, "start": start, "end": end,
                     "loss": finite_or_none(loss), "tokens": count})  # fmt: skip
    shown = " ".join("-" if r["loss"] is None else f"{r['loss']:.3f}" for r in rows)
    progress.note(f"[eval] loss by position {mode} ({len(samples)} samples): {shown}")
    return rows


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # JSON has no NaN


# --- the whole eval -------------------------------------------------------------------------


class Progress:
    """tqdm on a terminal; elsewhere (logs, the training console) one line per finished piece."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="lhdist eval", unit="fwd", file=sys.stderr)
            except ImportError:
                pass

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def long_context_eval(
    model: Any,
    attention: dict[str, AttentionFn],
    *,
    samples: list[torch.Tensor],
    pool: np.ndarray | None,
    passkey: PasskeySettings,
    buckets: int,
    chunk_tokens: int,
    device: torch.device,
    use_bf16: bool,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """{"passkey": rows, "position_loss": rows} of `model` with each attention of `attention`.

    `samples`: held-out [seq_len+1]-token sequences for the loss by position; `pool`: filler
    token ids (bytes), or None to skip the passkey. The model's own attention is restored."""
    prompts = len(passkey.lengths) * len(passkey.depths) * passkey.trials if pool is not None else 0
    bar = Progress(len(attention) * (prompts + len(samples)), progress)
    samples = [s.to(device) for s in samples]
    report: dict[str, list[dict[str, Any]]] = {"passkey": [], "position_loss": []}
    saved = model.attention
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for mode, fn in attention.items():
                model.set_attention(fn)
                if pool is not None:
                    report["passkey"] += passkey_rows(model, mode, pool, passkey, device, bar)
                if samples:
                    report["position_loss"] += position_loss_rows(
                        model, mode, samples, buckets, chunk_tokens, bar
                    )
    finally:
        model.set_attention(saved)
        bar.close()
    return report


def heldout_samples(info: DatasetInfo, seq_len: int) -> Iterator[torch.Tensor]:
    """The held-out set's [seq_len+1]-token samples in stored order (the training eval's)."""
    loader = TokenLoader(
        info, seq_len=seq_len, micro_batch_size=1, dp_rank=0, dp_degree=1, seed=0, shuffle=False
    )
    for _ in range(info.num_samples):
        input_ids, labels = next(loader)
        yield torch.cat([input_ids[0], labels[0, -1:]])


def filler_pool(info: DatasetInfo, seq_len: int, need: int) -> np.ndarray:
    """At least `need` text bytes of held-out text (fewer if the set is smaller), in stored
    order, with EOS and every other special id dropped."""
    pieces, have = [], 0
    for sample in heldout_samples(info, seq_len):
        text = sample.numpy()
        pieces.append(text[text < 256])
        have += len(pieces[-1])
        if have >= need:
            break
    if have == 0:
        raise ValueError(f"held-out set {info.path} has no text bytes for the passkey filler")
    return np.concatenate(pieces)


def passkey_skip_reason(tokenizer: str | None) -> str | None:
    """Why the passkey cannot run on a held-out set of this tokenizer, or None."""
    if tokenizer in (None, ByteTokenizer.name):
        return None
    return (
        f"passkey needs the byte tokenizer (one token per digit); the held-out set is tokenized "
        f"with {tokenizer}: loss by position only"
    )


def default_position_samples(cfg: Config) -> int:
    """The training eval's held-out samples (eval.batches x micro_batch_size), so the mean of
    the dense buckets is its val_loss_dense; DEFAULT_POSITION_SAMPLES when that is 0."""
    return cfg.eval.batches * cfg.train.micro_batch_size or DEFAULT_POSITION_SAMPLES


def run_long_context_eval(
    model: Any,
    cfg: Config,
    *,
    val_info: DatasetInfo,
    device: torch.device | str,
    out_path: str | Path | None = None,
    progress: bool = True,
    position_samples: int | None = None,
    seed: int = PASSKEY_SEED,
    checkpoint: str | Path | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Passkey retrieval and loss by position of `model` (one device, whole weights) with the
    settings of `cfg.eval`, in every attention mode of `cfg`; writes JSON (+ PNG) to `out_path`.

    `position_samples` None: `default_position_samples(cfg)`, at most the held-out set's size;
    a number larger than the set is a ValueError."""
    device, e, seq_len = torch.device(device), cfg.eval, cfg.train.seq_len
    lengths = list(e.passkey_lengths or [])
    if lengths:
        check_passkey_lengths(lengths, e.passkey_digits)
    else:  # the defaults that leave room for the needle
        shortest = passkey_overhead(e.passkey_digits)
        lengths = [n for n in default_passkey_lengths(cfg) if n >= shortest]
    settings = PasskeySettings(lengths, list(e.passkey_depths), e.passkey_trials,
                               e.passkey_digits, seed)  # fmt: skip
    if position_samples is None:
        position_samples = min(default_position_samples(cfg), val_info.num_samples)
    elif position_samples > val_info.num_samples:
        raise ValueError(
            f"held-out set {val_info.path} has {val_info.num_samples} samples of seq_len="
            f"{seq_len}, fewer than the {position_samples} the loss by position reads"
        )
    samples = [s for _, s in zip(range(position_samples), heldout_samples(val_info, seq_len))]
    skip = passkey_skip_reason(val_info.tokenizer)
    if not lengths and not skip:
        skip = f"no default passkey length of seq_len={seq_len} fits Lighthouse and the needle"
    pool = None if skip else filler_pool(val_info, seq_len, FILLER_POOL_FACTOR * max(lengths))
    t = cfg.train
    use_bf16 = t.dtype == "bf16" or (t.dtype == "auto" and device.type == "cuda")
    start = time.perf_counter()
    rows = long_context_eval(
        model, attention_modes(cfg), samples=samples, pool=pool, passkey=settings,
        buckets=e.position_buckets, chunk_tokens=t.loss_chunk_tokens, device=device,
        use_bf16=use_bf16, progress=progress,
    )  # fmt: skip
    config = cfg.to_dict()
    config["eval"]["passkey_lengths"] = lengths
    report = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "step": step,
        **rows,
        "config": config,
        "settings": {
            "attention": list(attention_modes(cfg)), "passkey_seed": seed,
            "position_samples": len(samples), "val_path": str(val_info.path),
            "tokenizer": val_info.tokenizer, "device": str(device),
            "dtype": "bf16" if use_bf16 else "fp32", "time_s": time.perf_counter() - start,
        },
    }  # fmt: skip
    if skip:
        report["passkey_skipped"] = skip
    if out_path is not None:
        write_report(report, out_path)
    return report


def write_report(report: dict[str, Any], out_path: str | Path) -> tuple[Path, Path | None]:
    """The JSON at `out_path` and, with matplotlib, the plots beside it (.png)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return out, write_heatmap(report, out.with_suffix(".png"))


# --- plots ----------------------------------------------------------------------------------


def write_heatmap(report: dict[str, Any], png_path: str | Path) -> Path | None:
    """One panel per attention mode (passkey accuracy over depth x length) and one of the loss
    by position; None when matplotlib is not installed or there is nothing to draw."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend state
    except ImportError:
        return None
    passkey, losses = report.get("passkey", []), report.get("position_loss", [])
    modes = list(dict.fromkeys(row["attention"] for row in passkey))
    panels = len(modes) + bool(losses)
    if panels == 0:
        return None
    fig = Figure(figsize=(4.6 * panels, 3.8))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        rows = [r for r in passkey if r["attention"] == mode]
        lengths = sorted({r["length"] for r in rows})
        depths = sorted({r["depth"] for r in rows})
        grid = np.full((len(depths), len(lengths)), np.nan)
        for r in rows:
            grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set(title=f"passkey accuracy, {mode}", xlabel="prompt length", ylabel="depth")
        fig.colorbar(image, ax=ax, fraction=0.046)
    if losses:
        ax = axes[-1]
        for mode in dict.fromkeys(r["attention"] for r in losses):
            rows = [r for r in losses if r["attention"] == mode and r["loss"] is not None]
            ax.plot([(r["start"] + r["end"]) / 2 for r in rows], [r["loss"] for r in rows],
                    marker="o", label=mode)  # fmt: skip
        ax.set(title="held-out loss by position", xlabel="position", ylabel="loss (nats)")
        ax.legend()
    step = report.get("step")
    fig.suptitle(f"{report.get('checkpoint') or 'model'}" + (f", step {step}" if step else ""),
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    png = Path(png_path)
    fig.savefig(png, dpi=110)
    return png
