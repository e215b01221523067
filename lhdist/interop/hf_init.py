"""`checkpoint.init_from: HF_DIR`: start a run from a Hugging Face Llama checkpoint. Everything
is checked before the first collective (config.json against the model config, every tensor's
name and shape from the file headers); the weights are read into the built model afterwards."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lhdist.interop.hf_config import check_model_matches, read_hf_config
from lhdist.interop.llama_keys import from_hf_tensor, hf_name, to_hf_state
from lhdist.interop.safetensors_io import SafetensorsFolder

# Buffers some older checkpoints saved; transformers recomputes them, so does lhdist.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class HFInit:
    """A checked Hugging Face folder, ready to be read into a model of `model_cfg`."""

    folder: Path
    tensors: SafetensorsFolder
    notes: list[str]
    """RoPE settings in which the run differs from the checkpoint (a context extension)."""

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the weights into `model` (lhdist Transformer), in its dtype and on its device;
        a model built under DeepSpeed ZeRO-3 is filled one gathered parameter at a time."""
        # named_parameters lists a tied output.weight once, as tok_embeddings.weight.
        with torch.no_grad():
            for name, p in model.named_parameters():  # one tensor in memory at a time
                tensor = from_hf_tensor(self.tensors, model.args, name)
                with gathered(p):
                    p.copy_(tensor)


def gathered(p: torch.nn.Parameter):
    """The whole parameter for the duration (rank 0's writes kept), for a ZeRO-3 partition."""
    if not hasattr(p, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p], modifier_rank=0)


def check_init_from(cfg: Any) -> HFInit:
    """ValueError (one line) for a folder that is not a Llama checkpoint lhdist can start from:
    wrong model type, dims that differ from the config, missing, extra or misshapen tensors."""
    from lhdist.model import build_model

    folder = Path(cfg.checkpoint.init_from)
    hf = read_hf_config(folder)
    notes = check_model_matches(cfg.model, hf, folder)
    tensors = SafetensorsFolder(folder)
    expected = build_model(cfg.model, device="meta").state_dict()
    wanted = {name: tuple(t.shape) for name, t in to_hf_state(expected, cfg.model).items()}
    where = f"checkpoint.init_from={folder}"
    for name, shape in wanted.items():
        if name not in tensors:
            raise ValueError(f"{where}: tensor {name} is missing from its safetensors")
        if tensors.shapes[name] != shape:
            raise ValueError(
                f"{where}: tensor {name} has shape {tensors.shapes[name]}, the model needs {shape}"
            )
    tied_head = hf_name("output.weight") if cfg.model.tie_embeddings else None
    extra = [
        n
        for n in tensors
        if n not in wanted and n != tied_head and not n.endswith(IGNORED_SUFFIXES)
    ]
    if extra:
        raise ValueError(f"{where}: tensor {extra[0]} is not part of a Llama of these dims")
    return HFInit(folder, tensors, notes)
