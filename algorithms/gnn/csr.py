"""The one graph type every GNN module passes around: CSR over int64, so graphs past 2^31 edges never overflow.

Row ``i`` lists the nodes ``i`` aggregates from: ``indices[indptr[i]:indptr[i+1]]``. An undirected graph stores
both directions. Propagation ``X' = Â X`` therefore reads row ``i`` to build ``X'[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seraphim.proto.errors import FatalJobError


class GraphError(FatalJobError, ValueError):
    """A graph, feature, label or split input that cannot be used as given; the message says what and where."""


@dataclass(frozen=True)
class CSRGraph:
    """Adjacency of ``num_nodes`` nodes in CSR: ``indptr`` int64 [n+1], ``indices`` int64 [m]."""

    indptr: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        if self.indptr.dtype != np.int64 or self.indices.dtype != np.int64:
            raise GraphError(f"CSRGraph needs int64 indptr and indices, got {self.indptr.dtype} and "
                             f"{self.indices.dtype}")
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0:
            raise GraphError("CSRGraph indptr must be one-dimensional and start at 0")
        if self.indptr[-1] != len(self.indices):
            raise GraphError(f"CSRGraph indptr ends at {int(self.indptr[-1])} but there are {len(self.indices)} "
                             f"indices")

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_edges(self) -> int:
        return len(self.indices)

    def degrees(self) -> np.ndarray:
        """Row lengths (in-degrees under the convention above), int64 [n]."""
        return np.diff(self.indptr)
