"""The K hops as a distributed job: every worker computes its node range of each hop from rows pulled off the PS.

Hop ``l`` of rows ``[lo, hi)`` needs hop ``l-1`` of every source those rows list. A worker builds its
:class:`~seraphim.algorithms.gnn.source_tiles.SourceTiles` once (its entries of ``Ã`` cut by source range) and,
at every hop, pulls each tile's distinct sources once (the next tile's pull in flight while this one is added),
adds them into one accumulator for its rows, scales, and writes its rows of hop ``l`` (``HopTables.write`` sends
them in pieces). So a worker reads each source row at most once per hop whatever the graph's locality, and holds
its accumulator, its tiles' entries and two tiles of rows. A barrier (the PS clock under BSP) separates hops, so
nobody reads a hop before every worker has written it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.hop_tables import WRITE_ROWS, HopTables
from seraphim.algorithms.gnn.source_tiles import SourceTiles, source_tiles


@dataclass(frozen=True)
class HopTiming:
    """Where one worker's hop went: waiting for pulled tiles, adding them, writing its rows and waiting at the
    barrier for the other workers; ``rows_pulled`` counts the source rows it read."""

    level: int
    seconds: float
    pull_wait_s: float
    add_s: float
    write_s: float
    barrier_s: float
    rows_pulled: int


def propagate_partition(graph: CSRGraph, tables: HopTables, lo: int, hi: int, r: float,
                        barrier: Callable[[], object], teleport: float = 0.0, first_level: int = 1,
                        tile_rows: int = 1 << 19, on_level: Callable[[HopTiming], None] | None = None,
                        tiles: SourceTiles | None = None) -> None:
    """Fill levels ``first_level..tables.levels-1`` for rows ``[lo, hi)``; level 0 must already be on the PS.

    ``teleport`` > 0 makes the levels personalized-PageRank iterates, ``(1-α) Â X^(l-1) + α X^(0)``;
    ``on_level(timing)`` is told when a level is complete on every worker. Pass ``tiles`` (built for the
    same range and ``r``) to reuse them across calls; otherwise they are built here with ``tile_rows``.
    """
    if not 0.0 <= teleport < 1.0:
        raise GraphError(f"teleport probability must lie in [0, 1), got {teleport}")
    tiles = tiles if tiles is not None else source_tiles(graph, lo, hi, tile_rows, r)
    if (tiles.lo, tiles.hi) != (lo, hi):
        raise GraphError(f"tiles were built for rows [{tiles.lo}, {tiles.hi}), not [{lo}, {hi})")
    order = tiles.nonempty()
    rows_pulled = sum(len(tiles.sources(t)) for t in order)
    for level in range(first_level, tables.levels):
        start = time.perf_counter()
        wait_s = add_s = 0.0
        acc = tiles.accumulator(tables.dim)
        pending = tables.read_async(level - 1, tiles.sources(order[0])) if order else None
        for k, t in enumerate(order):
            t0 = time.perf_counter()
            rows = pending.result()
            if k + 1 < len(order):
                pending = tables.read_async(level - 1, tiles.sources(order[k + 1]))
            t1 = time.perf_counter()
            tiles.add(t, rows, acc)
            wait_s, add_s = wait_s + t1 - t0, add_s + time.perf_counter() - t1
        written = time.perf_counter()
        out = tiles.finish(acc)
        if teleport:
            out *= np.float32(1.0 - teleport)
            for w0 in range(0, hi - lo, WRITE_ROWS):
                own = np.arange(lo + w0, min(lo + w0 + WRITE_ROWS, hi), dtype=np.int64)
                out[w0:w0 + len(own)] += np.float32(teleport) * tables.read(0, own)
        tables.write(level, lo, out)
        del acc, out
        tables.flush()
        arrived = time.perf_counter()
        barrier()
        if on_level is not None:
            end = time.perf_counter()
            on_level(HopTiming(level, end - start, wait_s, add_s, arrived - written, end - arrived, rows_pulled))
