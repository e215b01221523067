"""Output projection + cross-entropy over chunks of tokens, never holding [tokens, vocab] logits.

The loss is the last node of the graph, so each chunk's gradients can be computed right in the
forward: d(loss)/d(logits) = softmax - one-hot, then times the weight (hidden's gradient) and
its transpose times the hidden rows (the weight's, summed over chunks). What outlives the
forward is the hidden gradient ([tokens, dim] in the compute dtype) and the weight gradient
([vocab, dim] fp32); the backward only scales them by the incoming gradient. The working set is
one chunk's logits, instead of the full logits, their fp32 copy and their gradient.
"""

from __future__ import annotations

import torch

from lhdist.config import TrainConfig

IGNORE_INDEX = -100  # F.cross_entropy's default: a label that counts no loss and no token
# 8192 rows: a ~1.5 GiB working set at a 32K vocab under bf16 (fp32 logits, bf16 gradient).
DEFAULT_CHUNK_TOKENS = TrainConfig.loss_chunk_tokens


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """Sum over tokens of cross_entropy(hidden @ weight.T, labels), an fp32 scalar.

    hidden [..., dim], weight [vocab, dim], labels [...] (`ignore_index` rows add nothing).
    Logits are computed in the autocast dtype when autocast is on (as nn.Linear would), else in
    hidden's dtype; log-softmax in fp32. A weight shared with the embedding (tied) gets this
    gradient added to the embedding's, as autograd does for any shared leaf. Its backward runs
    once (the gradients were computed in the forward and are handed over, not kept).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} differ")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = hidden.dtype
    grad_enabled = torch.is_grad_enabled()
    return ChunkedLinearCrossEntropy.apply(
        hidden,
        weight,
        labels,
        ignore_index,
        chunk_tokens,
        dtype,
        grad_enabled and hidden.requires_grad,
        grad_enabled and weight.requires_grad,
    )


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, labels, ignore_index, chunk_tokens, dtype, grad_hidden, grad_weight
    ):
        ctx.hidden_shape, ctx.hidden_dtype = hidden.shape, hidden.dtype
        ctx.weight_dtype = weight.dtype
        x = hidden.reshape(-1, hidden.shape[-1])
        y = labels.reshape(-1)
        w = weight.to(dtype)  # one cast for all chunks, as autocast caches it for nn.Linear
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        dx = torch.empty(x.shape, dtype=dtype, device=x.device) if grad_hidden else None
        dw = (
            torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if grad_weight else None
        )
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are chosen by hand
            for start in range(0, x.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                xc, yc = x[rows].to(dtype), y[rows]
                logits = (xc @ w.T).float()
                valid = yc != ignore_index
                target = torch.where(valid, yc, 0).unsqueeze(1)
                lse = torch.logsumexp(logits, dim=1)
                loss += ((lse - logits.gather(1, target).squeeze(1)) * valid).sum()
                if dx is None and dw is None:
                    del logits
                    continue
                # In place: the logits become their gradient, softmax - one-hot (0 if ignored).
                probs = logits.sub_(lse.unsqueeze(1)).exp_()
                probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))
                dlogits = probs.mul_(valid.unsqueeze(1)).to(dtype)
                del logits, probs  # one chunk's logits alive at a time
                if dx is not None:
                    torch.mm(dlogits, w, out=dx[rows])
                if dw is not None and dw.dtype == dlogits.dtype:
                    dw.addmm_(dlogits.T, xc)  # fp32: no [vocab, dim] temporary
                elif dw is not None:
                    dw += dlogits.T @ xc  # bf16 product, summed over chunks in fp32
                del dlogits
        ctx.grads = (dx, dw)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError(
                "chunked_cross_entropy's backward ran twice: its gradients are computed in the "
                "forward and handed over once"
            )
        dx, dw = ctx.grads
        ctx.grads = None  # hand them over: nothing of the loss outlives this backward
        if dx is not None:
            # In place when the dtype already matches (fp32 runs): no second [tokens, dim] copy.
            dx = dx.to(ctx.hidden_dtype).mul_(grad_loss).view(ctx.hidden_shape)
        if dw is not None:
            dw = dw.mul_(grad_loss).to(ctx.weight_dtype)
        return dx, dw, None, None, None, None, None, None
