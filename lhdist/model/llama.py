"""Llama-3 blocks: RMSNorm, RoPE by position ids, GQA, SwiGLU, tied or untied embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lhdist.config import ModelConfig
from lhdist.model.attention import AttentionFn, causal_attention
from lhdist.model.rope import apply_rope, rope_angles
from lhdist.train.loss import DEFAULT_CHUNK_TOKENS, IGNORE_INDEX, chunked_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (bf16 mean of squares drifts), return in the input dtype.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = args.num_heads, args.num_kv_heads
        self.head_dim = args.dim // args.num_heads
        self.wq = nn.Linear(args.dim, self.num_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.num_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.num_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.num_heads * self.head_dim, args.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionFn
    ) -> torch.Tensor:
        q = self.wq(x).unflatten(-1, (self.num_heads, self.head_dim))  # [B, N, H, D]
        k = self.wk(x).unflatten(-1, (self.num_kv_heads, self.head_dim))  # [B, N, G, D]
        v = self.wv(x).unflatten(-1, (self.num_kv_heads, self.head_dim))  # [B, N, G, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attn(q, k, v, self.layer_idx)  # [B, N, H, D]
        return self.wo(out.flatten(-2))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, layer_idx)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionFn
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, attn)
        return x + self.feed_forward_branch(x)

    def feed_forward_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The block's second residual branch (a unit of selective activation checkpointing)."""
        return self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Causal LM: token ids [B, N] and their global positions [N] or [B, N] -> logits [B, N, V],
    or, given labels [B, N], the summed token loss without materialising the logits.

    `self.attention` is the injected attention function; it defaults to dense causal SDPA on
    one device.
    """

    def __init__(self, args: ModelConfig) -> None:
        super().__init__()
        self.args = args
        self.head_dim = args.dim // args.num_heads
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.num_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.attention: AttentionFn = causal_attention
        self.reset_parameters()

    def set_attention(self, attn: AttentionFn) -> None:
        self.attention = attn

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            self.init_parameter(name, p)

    @torch.no_grad()
    def init_parameter(self, name: str, p: torch.Tensor) -> None:
        """Initialise one parameter in place (reset_parameters' order fixes the RNG stream; a
        ZeRO-3 build calls this on each gathered parameter in that order)."""
        std = self.args.init_std
        if p.dim() == 1:
            nn.init.ones_(p)
        elif name.endswith(("wo.weight", "w2.weight")):
            # Residual-branch outputs shrink with depth: the residual stream keeps O(1) variance.
            nn.init.normal_(p, std=std / math.sqrt(2 * self.args.num_layers))
        else:
            nn.init.normal_(p, std=std)

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The final normed hidden state [B, N, dim]: what the output projection reads."""
        a = self.args
        cos, sin = rope_angles(positions, self.head_dim, a.rope_theta, a.rope_scaling)
        h = self.tok_embeddings(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, self.attention)
        return self.norm(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ) -> torch.Tensor:
        """Logits [B, N, V]; with `labels` [B, N] the fp32 SUM of the token losses (labels
        IGNORE_INDEX count nothing), computed `loss_chunk_tokens` rows at a time.

        The loss is computed here, not by the caller, so that under ZeRO-3 the output weight is
        read inside the engine's forward, where DeepSpeed gathers it."""
        hidden = self.hidden_states(input_ids, positions)
        if labels is None:
            return self.output(hidden)
        return chunked_cross_entropy(
            hidden, self.output.weight, labels, IGNORE_INDEX, loss_chunk_tokens
        )


def build_model(
    args: ModelConfig, seed: int = 0, device: torch.device | str = "cpu"
) -> Transformer:
    """A freshly initialised model, identical on every rank for the same `seed`.

    Built directly on `device` (an 8B model would not fit host memory once per rank). Reseeds
    torch's global RNG.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        return Transformer(args)
