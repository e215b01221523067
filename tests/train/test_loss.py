"""The chunked output projection + cross-entropy against F.cross_entropy on full logits: loss and
gradients (hidden, weight), ignored labels, chunk sizes, bf16 autocast, tied embeddings."""

import pytest
import torch
import torch.nn.functional as F

from lhdist.config import load_config
from lhdist.model import build_model
from lhdist.train.loss import IGNORE_INDEX, chunked_cross_entropy

B, N, DIM, VOCAB = 2, 37, 24, 50  # 74 tokens: chunks of 8 leave a 2-row tail


def problem(seed: int = 0, ignored: int = 9):
    """Random hidden [B, N, DIM] (fp32, wide enough logits to matter), weight, labels with
    `ignored` labels set to IGNORE_INDEX."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, N, DIM, generator=gen)
    weight = torch.randn(VOCAB, DIM, generator=gen) / DIM**0.5 * 3
    labels = torch.randint(0, VOCAB, (B, N), generator=gen)
    drop = torch.randperm(B * N, generator=gen)[:ignored]
    labels.view(-1)[drop] = IGNORE_INDEX
    return hidden, weight, labels


def reference(hidden, weight, labels, scale=1.0):
    """(loss, d hidden, d weight) of the full-logits loss the training loop used to compute."""
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    logits = F.linear(hidden, weight)
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    (loss * scale).backward()
    return loss.detach(), hidden.grad, weight.grad


def chunked(hidden, weight, labels, chunk_tokens, scale=1.0):
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = chunked_cross_entropy(hidden, weight, labels, IGNORE_INDEX, chunk_tokens)
    (loss * scale).backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_tokens", [1, 8, 37, 74, 1000], ids=lambda c: f"chunk{c}")
def test_chunked_loss_and_grads_equal_full_logits_fp32(chunk_tokens):
    hidden, weight, labels = problem()
    scale = 1 / 65.0  # the loop's 1 / global token count reaches the gradients
    want = reference(hidden, weight, labels, scale)
    got = chunked(hidden, weight, labels, chunk_tokens, scale)
    assert got[0].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    # Ignored labels really count nothing: the loss of the kept rows alone is the same.
    assert not torch.allclose(got[0], reference(hidden, weight, labels.clamp(min=0))[0])


def test_chunked_loss_bf16_autocast_matches_full_logits_loosely():
    hidden, weight, labels = problem(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference(hidden, weight, labels)
        got = chunked(hidden, weight, labels, chunk_tokens=16)
    exact = reference(hidden.double(), weight.double(), labels)
    # Both compute bf16 logits (same rounding) and fp32 log-softmax.
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
    for g, w, e in zip(got[1:], want[1:], exact[1:], strict=True):
        assert g.dtype == torch.float32  # the leaves' dtype, as autocast's casts hand back
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)
        # No worse than the full-logits bf16 gradients, measured against fp64.
        assert (g.double() - e).norm() <= 1.5 * (w.double() - e).norm() + 1e-6


def test_chunked_loss_all_ignored_is_zero_with_zero_grads():
    hidden, weight, labels = problem()
    loss, dh, dw = chunked(hidden, weight, torch.full_like(labels, IGNORE_INDEX), 8)
    assert loss.item() == 0.0 and not dh.any() and not dw.any()


def test_chunked_loss_tied_weight_accumulates_with_the_embedding():
    """The weight also embeds the inputs: its gradient is the sum of both uses."""
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(VOCAB, DIM, generator=gen)
    ids = torch.randint(0, VOCAB, (B, N), generator=gen)
    labels = torch.randint(0, VOCAB, (B, N), generator=gen)

    def grad(loss_fn):
        weight = table.clone().requires_grad_()
        hidden = torch.tanh(F.embedding(ids, weight) * 0.5)
        loss_fn(hidden, weight).backward()
        return weight.grad

    want = grad(
        lambda h, w: F.cross_entropy(
            F.linear(h, w).flatten(0, 1), labels.flatten(), reduction="sum"
        )
    )
    got = grad(lambda h, w: chunked_cross_entropy(h, w, labels, chunk_tokens=10))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_loss_without_grad_and_a_second_backward():
    hidden, weight, labels = problem()
    with torch.no_grad():
        plain = chunked_cross_entropy(hidden, weight.requires_grad_(), labels, chunk_tokens=8)
    torch.testing.assert_close(plain, reference(hidden, weight, labels)[0])
    loss = chunked_cross_entropy(hidden.requires_grad_(), weight, labels, chunk_tokens=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_model_loss_with_labels_equals_cross_entropy_of_its_logits(tie):
    """Transformer(ids, positions, labels) is the loop's old loss on Transformer(ids, positions),
    with the same gradient on every parameter."""
    cfg = load_config(overrides=["--model.num_layers=2", f"--model.tie_embeddings={tie}"])
    ids = torch.randint(
        0, cfg.model.vocab_size, (2, 65), generator=torch.Generator().manual_seed(4)
    )
    labels = ids[:, 1:].clone()
    labels[0, :5] = IGNORE_INDEX
    positions = torch.arange(64)

    def grads(loss_of):
        model = build_model(cfg.model, seed=5)
        loss = loss_of(model)
        (loss / 100).backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    want = grads(
        lambda m: F.cross_entropy(
            m(ids[:, :-1], positions).float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    )
    got = grads(lambda m: m(ids[:, :-1], positions, labels=labels, loss_chunk_tokens=48))
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=1e-6, msg=name)
