"""CP Lighthouse on one CUDA device (W=1, both layouts): the CUDA-graph-captured global cascade
equals the eager one and the single-device op (run on an H200 through the device tool)."""

from __future__ import annotations

import pytest
import torch

from lhdist.ops import LighthouseSpec, lighthouse_attention
from lhdist.parallel.lighthouse_cp import lighthouse_cp_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
@pytest.mark.parametrize("selection", ["global", "tile"])
def test_gpu_cp_single_rank_equals_op_graph_and_eager(layout, selection, monkeypatch):
    spec = LighthouseSpec(3, 4, 1024, selection)
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (torch.randn(1, 32768, h, 64, device="cuda", generator=gen) for h in (8, 2, 2))
    grad = torch.randn(q.shape, device="cuda", generator=gen)

    def run(fn):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*xs)
        out.backward(grad)
        return [out.detach()] + [x.grad for x in xs]

    reference = run(lambda *xs: lighthouse_attention(*xs, spec))
    for _ in range(2):  # the first call captures, the second replays
        graphed = run(lambda *xs: lighthouse_cp_attention(*xs, spec, None, layout))
        for got, want in zip(graphed, reference):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    with monkeypatch.context() as m:
        m.setenv("LHDIST_SELECTION_GRAPH", "off")
        eager = run(lambda *xs: lighthouse_cp_attention(*xs, spec, None, layout))
    for got, want in zip(eager, graphed):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
