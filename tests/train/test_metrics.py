"""Metrics: JSONL records and events, plain console lines when not on a terminal."""

import io
import json

from lhdist.train.metrics import JSONL, MetricsLogger, format_line

RECORD = {
    "step": 3,
    "stage": 1,
    "loss": 2.5,
    "lr": 1e-3,
    "grad_norm": 0.7,
    "tokens": 2048,
    "tokens_per_s": 1000.0,
    "tokens_per_s_per_device": 500.0,
    "mfu_dense": 0.2,
    "mfu_executed": 0.1,
    "memory_gib": 1.5,
}


def test_metrics_plain_lines_and_jsonl_on_rank0(tmp_path):
    stream = io.StringIO()  # not a TTY: no progress bar, plain lines
    logger = MetricsLogger(
        tmp_path, True, total_steps=10, start_step=0, tensorboard=False, stream=stream
    )
    logger.event("stage_switch", 4, from_stage=1, to_stage=2)
    logger.step(RECORD, show=True)
    logger.step({**RECORD, "step": 4}, show=False)
    logger.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["[stage_switch] step 4 from_stage=1 to_stage=2", format_line(RECORD, 10)]
    assert "step 3/10 | stage 1 | loss 2.5000" in lines[1] and "1,000 tok/s" in lines[1]
    records = [json.loads(line) for line in (tmp_path / JSONL).read_text().splitlines()]
    assert [r.get("event") for r in records] == ["stage_switch", None, None]
    assert records[1]["mfu_executed"] == 0.1


def test_metrics_other_ranks_write_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "run", False, 10, 0, tensorboard=True)
    logger.step(RECORD, show=True)
    logger.event("done", 10)
    logger.close()
    assert not (tmp_path / "run").exists()
