"""Context parallelism: dp x cp mesh, collectives, sharding, ring and Lighthouse CP attention."""

from lhdist.parallel.collectives import (
    CommStats,
    RingComm,
    all_gather,
    all_to_all,
    check_same_across_ranks,
    reduce_scatter,
)
from lhdist.parallel.dims import ParallelDims, destroy_distributed, init_distributed
from lhdist.parallel.lighthouse_cp import lighthouse_cp_attention
from lhdist.parallel.ring_attention import ring_attention
from lhdist.parallel.sharding import shard_positions, shard_sequence, unshard_sequence

__all__ = [
    "CommStats",
    "ParallelDims",
    "RingComm",
    "all_gather",
    "all_to_all",
    "check_same_across_ranks",
    "destroy_distributed",
    "init_distributed",
    "lighthouse_cp_attention",
    "reduce_scatter",
    "ring_attention",
    "shard_positions",
    "shard_sequence",
    "unshard_sequence",
]
