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

    def write(self, level: int, lo: int, values: np.ndarray) -> Future:
        """Store ``values`` as rows ``lo..lo+len(values)-1`` of hop ``level`` (asynchronously; clock() waits)."""
        keys = np.arange(lo, lo + len(values), dtype=np.int64)
        return self.tables[level].push_async(keys, np.ascontiguousarray(values, dtype=np.float32), mode="assign")

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
