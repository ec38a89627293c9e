"""Hop matrices on the parameter servers: ``X^(0..K)`` of a graph as dense PS tables, one per hop.

Each hop is a dense ``[num_nodes, dim]`` float32 table, range-partitioned over the PS shards, so hops of a graph
larger than the PS RAM budget spill to LMDB page by page. Workers write their node range of a hop (``assign``)
and read any node's rows back for the next hop's halo or for a training mini-batch.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from seraphim.algorithms.gnn.csr import GraphError
from seraphim.worker.client import DenseTable, PSClient

#: rows per push: a push is encoded before it is sent, and one of a whole range (a gigabyte at 10M rows) would cost
#: the worker that much again and the PS several times that while it decodes and applies it
WRITE_ROWS = 65536


class HopTables:
    """Levels ``0..levels-1`` of one propagated signal (features or labels) under the table prefix ``name``."""

    def __init__(self, ps: PSClient, name: str, num_nodes: int, dim: int, levels: int) -> None:
        if levels < 1:
            raise GraphError(f"hop tables {name!r} need at least one level, got {levels}")
        self.ps, self.name, self.num_nodes, self.dim = ps, name, num_nodes, dim
        self.tables: list[DenseTable] = [ps.dense_table(f"{name}_hop{l}", (num_nodes, dim)) for l in range(levels)]

    @property
    def levels(self) -> int:
        return len(self.tables)

    @property
    def nbytes(self) -> int:
        """The float32 bytes every level holds together."""
        return self.levels * self.num_nodes * self.dim * 4

    def write(self, level: int, lo: int, values: np.ndarray) -> None:
        """Store ``values`` as rows ``lo..lo+len(values)-1`` of hop ``level``, ``WRITE_ROWS`` at a time and
        asynchronously (flush() or the clock waits). Each piece is read and encoded only when its push is issued,
        so ``values`` may be a memory map, and the client's bound on requests in flight bounds the memory."""
        for w0 in range(0, len(values), WRITE_ROWS):
            piece = np.ascontiguousarray(values[w0:w0 + WRITE_ROWS], dtype=np.float32)
            keys = np.arange(lo + w0, lo + w0 + len(piece), dtype=np.int64)
            self.tables[level].push_async(keys, piece, mode="assign")

    def flush(self) -> None:
        """Wait until every write issued so far is on the PS."""
        self.ps.flush()

    def read(self, level: int, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of hop ``level``: float32 [len(ids), dim]."""
        return self.tables[level].pull(ids)

    def read_async(self, level: int, ids: np.ndarray) -> Future:
        """Like read, but returns at once a Future of the rows (the next block's pull while this one computes)."""
        return self.tables[level].pull_async(ids)

    def read_levels(self, ids: np.ndarray, levels: range | None = None) -> list[np.ndarray]:
        """Rows ``ids`` of several hops, every pull in flight at once."""
        futures = [self.tables[l].pull_async(ids) for l in (levels or range(self.levels))]
        return [f.result() for f in futures]
