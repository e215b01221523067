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


def test_gpu_graph_segments_run_nccl_exchanges_between_them(tmp_path):
    """The global cascade's score exchanges run as eager NCCL all-reduces between captured
    segments (a one-rank group here): values as eager, each replay counted once, the replay
    that verifies the capture not counted."""
    import functools

    import torch.distributed as dist

    from lhdist.ops.selection_graph import replay_graph
    from lhdist.parallel.collectives import CommStats, all_reduce_sum_

    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
        device_id=torch.device("cuda", torch.cuda.current_device()),
    )  # fmt: skip
    try:
        exchange = functools.partial(all_reduce_sum_, group=dist.group.WORLD)
        uncounted = functools.partial(exchange, count=False)

        def fn(x, between):
            y = between(x.cumsum(0))
            return between(y * 2) + 1

        x = torch.arange(8.0, device="cuda")
        with CommStats() as stats:
            first = replay_graph(fn, (x,), ("test_nccl_segments",), exchange, uncounted)
            again = replay_graph(fn, (x + 1,), ("test_nccl_segments",), exchange, uncounted)
        assert torch.equal(first, x.cumsum(0) * 2 + 1)
        assert torch.equal(again, (x + 1).cumsum(0) * 2 + 1)
        assert stats.num_calls("all_reduce") == 4  # warm-up 2, replay 2 (verification: none)
    finally:
        dist.destroy_process_group()
