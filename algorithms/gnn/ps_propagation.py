"""The K hops as a distributed job: every worker computes its node range of each hop from rows pulled off the PS.

Hop ``l`` of rows ``[lo, hi)`` needs hop ``l-1`` of those rows and of their halo (the neighbours outside the
range). A worker walks its range in chunks of ``chunk_rows`` rows so the gathered block stays bounded whatever
the graph's size; each chunk pulls its sources, runs the compiled kernel and writes its rows of hop ``l``. A
barrier (the PS clock under BSP) separates hops, so nobody reads a hop before every worker has written it.
A chunk's block is built again at every hop rather than kept: keeping every block would hold the whole range's
edge list, which is the memory the chunking exists to bound.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.hop_tables import HopTables
from seraphim.algorithms.gnn.propagation import normalization, partition_block, propagate_block


def propagate_partition(graph: CSRGraph, tables: HopTables, lo: int, hi: int, r: float, barrier: Callable[[], object],
                        teleport: float = 0.0, first_level: int = 1, chunk_rows: int = 65536,
                        on_level: Callable[[int, float], None] | None = None) -> None:
    """Fill levels ``first_level..tables.levels-1`` for rows ``[lo, hi)``; level 0 must already be on the PS.

    ``teleport`` > 0 makes the levels personalized-PageRank iterates, ``(1-α) Â X^(l-1) + α X^(0)``;
    ``on_level(l, seconds)`` is told when level ``l`` is complete on every worker.
    """
    if chunk_rows < 1:
        raise GraphError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not 0.0 <= teleport < 1.0:
        raise GraphError(f"teleport probability must lie in [0, 1), got {teleport}")
    scales = normalization(graph, r)
    bounds = [(c0, min(c0 + chunk_rows, hi)) for c0 in range(lo, hi, chunk_rows)]
    for level in range(first_level, tables.levels):
        start = time.perf_counter()
        for c0, c1 in bounds:
            block = partition_block(graph, c0, c1, r, scales)
            rows = propagate_block(block, tables.read(level - 1, block.sources))
            if teleport:
                rows *= np.float32(1.0 - teleport)
                rows += np.float32(teleport) * tables.read(0, block.sources[: c1 - c0])
            tables.write(level, c0, rows)
        barrier()
        if on_level is not None:
            on_level(level, time.perf_counter() - start)
