"""The K hops as a distributed job: every worker computes its node range of each hop from rows pulled off the PS.

Hop ``l`` of rows ``[lo, hi)`` needs hop ``l-1`` of every source those rows list. A worker builds its
:class:`~seraphim.algorithms.gnn.source_tiles.SourceTiles` once (its entries of ``Ã`` cut by source range) and,
at every hop, pulls each tile's distinct sources once (the next tile's pull in flight while this one is added),
adds them into one accumulator for its rows, scales, and writes its rows of hop ``l`` in pieces of
``write_rows``. So a worker reads each source row at most once per hop whatever the graph's locality, and holds
its accumulator, its tiles' entries and two tiles of rows. A barrier (the PS clock under BSP) separates hops, so
nobody reads a hop before every worker has written it.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.hop_tables import HopTables
from seraphim.algorithms.gnn.source_tiles import SourceTiles, source_tiles

WRITE_ROWS = 65536  #: rows per write to the PS: bounds the encoded requests in flight


def propagate_partition(graph: CSRGraph, tables: HopTables, lo: int, hi: int, r: float,
                        barrier: Callable[[], object], teleport: float = 0.0, first_level: int = 1,
                        tile_rows: int = 1 << 19,
                        on_level: Callable[[int, float], None] | None = None,
                        tiles: SourceTiles | None = None) -> None:
    """Fill levels ``first_level..tables.levels-1`` for rows ``[lo, hi)``; level 0 must already be on the PS.

    ``teleport`` > 0 makes the levels personalized-PageRank iterates, ``(1-α) Â X^(l-1) + α X^(0)``;
    ``on_level(l, seconds)`` is told when level ``l`` is complete on every worker. Pass ``tiles`` (built for the
    same range and ``r``) to reuse them across calls; otherwise they are built here with ``tile_rows``.
    """
    if not 0.0 <= teleport < 1.0:
        raise GraphError(f"teleport probability must lie in [0, 1), got {teleport}")
    tiles = tiles if tiles is not None else source_tiles(graph, lo, hi, tile_rows, r)
    if (tiles.lo, tiles.hi) != (lo, hi):
        raise GraphError(f"tiles were built for rows [{tiles.lo}, {tiles.hi}), not [{lo}, {hi})")
    order = tiles.nonempty()
    for level in range(first_level, tables.levels):
        start = time.perf_counter()
        acc = tiles.accumulator(tables.dim)
        pending = tables.read_async(level - 1, tiles.sources(order[0])) if order else None
        for k, t in enumerate(order):
            rows = pending.result()
            if k + 1 < len(order):
                pending = tables.read_async(level - 1, tiles.sources(order[k + 1]))
            tiles.add(t, rows, acc)
        out = tiles.finish(acc)
        for w0 in range(0, hi - lo, WRITE_ROWS):
            piece = out[w0:w0 + WRITE_ROWS]
            if teleport:
                piece *= np.float32(1.0 - teleport)
                piece += np.float32(teleport) * tables.read(0, np.arange(lo + w0, lo + w0 + len(piece)))
            tables.write(level, lo + w0, piece)
        del acc, out
        barrier()
        if on_level is not None:
            on_level(level, time.perf_counter() - start)
