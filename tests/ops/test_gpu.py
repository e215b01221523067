"""The op on CUDA equals the CPU path (run on an H200 through the device tool; never in CI)."""

from __future__ import annotations

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention, lighthouse_select
from tests.ops.cases import GRID, Case, make_qkv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BIG = [
    Case(B=1, N=65536, H=8, G=8, D=64, L=3, p=4, k=2048, selection="tile"),
    Case(B=1, N=65536, H=8, G=2, D=64, L=4, p=4, k=1024, selection="global"),
    Case(B=2, N=16384, H=4, G=4, D=32, L=2, p=8, k=512, selection="tile"),
]


@pytest.mark.parametrize("case", GRID + BIG, ids=lambda c: c.id)
def test_gpu_indices_equal_cpu_fp32(case: Case):
    q, k, _ = make_qkv(case, seed=31)
    cpu = lighthouse_select(q, k, case.spec)
    gpu = lighthouse_select(q.cuda(), k.cuda(), case.spec)
    assert torch.equal(gpu.cpu(), cpu)


def test_gpu_graphed_selection_replays_new_scores(monkeypatch):
    """The captured cascade reads each call's scores: equal to eager on two different inputs."""
    case = BIG[0]
    for seed in (41, 42):
        q, k, _ = make_qkv(case, seed=seed)
        q, k = q.cuda(), k.cuda()
        graphed = lighthouse_select(q, k, case.spec)
        with monkeypatch.context() as m:
            m.setenv("LHDIST_SELECTION_GRAPH", "off")
            eager = lighthouse_select(q, k, case.spec)
        assert torch.equal(graphed, eager)


@pytest.mark.parametrize("case", GRID[:4] + BIG[:2], ids=lambda c: c.id)
def test_gpu_bf16_close_to_fp32_reference(case: Case):
    q, k, v = make_qkv(case, seed=32)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(33))
    idx = lighthouse_select(q, k, case.spec)

    def run(tensors, g, idx):
        xs = [t.detach().clone().requires_grad_() for t in tensors]
        out = lighthouse_attention(*xs, case.spec, idx)
        out.backward(g)
        return [out.detach().float().cpu()] + [x.grad.float().cpu() for x in xs]

    ref = run((q, k, v), grad, idx)  # fp32 on CPU
    low = run([t.cuda().bfloat16() for t in (q, k, v)], grad.cuda().bfloat16(), idx.cuda())
    for name, a, b in zip(("out", "dq", "dk", "dv"), low, ref):
        scale = b.abs().max()
        err = ((a - b).abs().max() / scale).item()
        assert err < 3e-2, f"{name}: bf16 error {err:.3g} of max magnitude"


def test_gpu_fp32_matches_cpu_fp32():
    case = GRID[1]
    q, k, v = make_qkv(case, seed=34)
    cpu = lighthouse_attention(q, k, v, case.spec)
    gpu = lighthouse_attention(q.cuda(), k.cuda(), v.cuda(), case.spec).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-5, rtol=1e-4)


def test_gpu_compiled_block_has_no_graph_break():
    """A Llama block with Lighthouse attention compiles whole (fullgraph) and runs fwd+bwd."""
    from lhdist.config import ModelConfig
    from lhdist.model.llama import Block
    from lhdist.model.rope import rope_angles

    torch._dynamo.reset()
    spec = LighthouseSpec(3, 4, 256)
    cfg = ModelConfig(flavor="tiny", dim=256, num_layers=1, num_heads=4, num_kv_heads=2,
                      ffn_dim=512, rope_theta=10000.0, tie_embeddings=False)  # fmt: skip
    block = Block(cfg, 0).cuda().bfloat16()

    def attn(q, k, v, layer_idx):
        return lighthouse_attention(q, k, v, spec)

    N = 8192
    x = torch.randn(1, N, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rope_angles(torch.arange(N, device="cuda"), 64, 10000.0)
    # Selection inside the graph: fullgraph=True fails on any graph break.
    compiled = torch.compile(lambda x: block(x, cos, sin, attn), fullgraph=True)
    out = compiled(x)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # Same selection in both (bf16 norms may tie differently once fused): outputs agree.
    fixed = {}

    def attn_fixed(q, k, v, layer_idx):
        if "idx" not in fixed:
            fixed["idx"] = lighthouse_select(q.detach(), k.detach(), spec)
        return lighthouse_attention(q, k, v, spec, fixed["idx"])

    eager = block(x, cos, sin, attn_fixed)
    torch._dynamo.reset()
    compiled_fixed = torch.compile(lambda x: block(x, cos, sin, attn_fixed), fullgraph=True)
    torch.testing.assert_close(compiled_fixed(x).float(), eager.float(), atol=6e-2, rtol=6e-2)


def test_gpu_graph_that_differs_from_eager_is_dropped():
    """A capture whose replay does not reproduce the eager warm-up is dropped with a warning:
    the first call returns the eager result and later calls run eager (here the function reads
    host state, which a graph freezes at capture time)."""
    from lhdist.ops.selection_graph import graph_dropped, replay_graph

    calls = []

    def host_dependent(x):
        calls.append(None)
        return x + len(calls)  # warm-up adds 1, the capture freezes 2

    x = torch.zeros(4, device="cuda")
    with pytest.warns(RuntimeWarning, match="did not reproduce"):
        first = replay_graph(host_dependent, (x,), ("test_drop",))
    assert torch.equal(first, torch.full_like(x, 1.0))  # the eager warm-up's value
    assert graph_dropped(("test_drop",), (x,))
    assert torch.equal(replay_graph(host_dependent, (x,), ("test_drop",)), x + 3)  # eager again


def test_gpu_graph_segments_run_the_op_between_them_eagerly():
    """With `between`, the capture is cut where fn hands a tensor to it and the op runs eagerly
    between the segments on every replay (a collective there is never captured): here the op
    adds a host counter, which a captured op would freeze."""
    from lhdist.ops.selection_graph import replay_graph

    calls = []

    def count_in(y):  # in place, host-dependent: differs on every call
        calls.append(None)
        return y.add_(100 * len(calls))

    def fn(x, between):
        y = between(x * 2)
        return between(y + 1) * 3, y.sum()

    verify = []

    def same_op_uncounted(y):  # what the warm-up did, without touching `calls`
        verify.append(None)
        return y.add_(100 * len(verify))

    x = torch.arange(4.0, device="cuda")
    first = replay_graph(fn, (x,), ("test_segments",), count_in, same_op_uncounted)
    # Warm-up eager (calls 1, 2), capture (no op), verified replay with the uncounted op.
    assert len(calls) == 2 and len(verify) == 2
    assert torch.equal(first[0], ((x * 2 + 100) + 1 + 200) * 3)
    for n in range(2):  # each replay runs the segments and the op twice, with fresh counts
        before = len(calls)
        out, total = replay_graph(fn, (x + n,), ("test_segments",), count_in)
        a, b = 100 * (before + 1), 100 * (before + 2)
        assert torch.equal(out, (((x + n) * 2 + a) + 1 + b) * 3)
        assert torch.equal(total, ((x + n) * 2 + a).sum())
