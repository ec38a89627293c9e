"""Which worker owns which nodes: contiguous ranges balanced by propagation cost, METIS (through DGL), or random.

Every partition comes with a relabeling (``new_to_old``/``old_to_new``) that lists worker 0's nodes first, then
worker 1's, and so on, keeping the old order inside a worker. Hop propagation on the PS works on contiguous node
ranges (``job.node_ranges``, ``propagation.partition_block``), so a METIS partition is used by writing the graph
once in the new ids (:func:`relabel_graph`) and giving worker ``w`` the range ``bounds[w]..bounds[w+1]``: the
cut edges, and so the halo rows each worker pulls per hop, are METIS's. For a range partition the relabeling is
the identity.

A worker's propagation cost is the stored entries of ``Ã = A + I`` in its rows (edges plus one per node), so range
cuts balance ``indptr[i] + i``, not the node count: on a power-law graph equal node counts can differ in edges
several times over.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit, prange

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.graph_io import (GraphData, SPLITS, begin_graph_dir, iter_chunks, open_features,
                                              write_node_data)

_ROWS = 1 << 16  # feature rows copied at once by relabel_graph


@dataclass(frozen=True)
class Partition:
    """``assignment[v]``: the worker of old node v; in the new ids worker w owns ``[bounds[w], bounds[w+1])``."""

    assignment: np.ndarray  # int64 [n]
    new_to_old: np.ndarray  # int64 [n]: old id of each new id
    old_to_new: np.ndarray  # int64 [n]
    bounds: np.ndarray  # int64 [W + 1]

    @property
    def num_parts(self) -> int:
        return len(self.bounds) - 1

    def nodes(self, worker: int) -> np.ndarray:
        """Old ids of ``worker``'s nodes, ascending."""
        return self.new_to_old[self.bounds[worker]:self.bounds[worker + 1]]

    def ranges(self) -> list[tuple[int, int]]:
        """Each worker's contiguous range of new ids."""
        return [(int(self.bounds[w]), int(self.bounds[w + 1])) for w in range(self.num_parts)]


def from_assignment(assignment: np.ndarray, num_parts: int) -> Partition:
    """The partition (and its relabeling) of any node-to-worker assignment."""
    assignment = np.asarray(assignment, np.int64)
    if assignment.ndim != 1 or (len(assignment) and (assignment.min() < 0 or assignment.max() >= num_parts)):
        raise GraphError(f"an assignment must be a vector of worker ids in [0, {num_parts - 1}]")
    new_to_old = np.argsort(assignment, kind="stable").astype(np.int64)
    old_to_new = np.empty_like(new_to_old)
    old_to_new[new_to_old] = np.arange(len(assignment), dtype=np.int64)
    bounds = np.zeros(num_parts + 1, np.int64)
    np.cumsum(np.bincount(assignment, minlength=num_parts), out=bounds[1:])
    return Partition(assignment, new_to_old, old_to_new, bounds)


def _check_parts(graph: CSRGraph, num_parts: int) -> None:
    if not 1 <= num_parts <= max(graph.num_nodes, 1):
        raise GraphError(f"num_parts must lie in [1, {graph.num_nodes}] (one node per worker at least), got "
                         f"{num_parts}")


def range_partition(graph: CSRGraph, num_parts: int) -> Partition:
    """Contiguous node ranges holding about equal shares of ``Ã``'s entries (a row is never split)."""
    _check_parts(graph, num_parts)
    n = graph.num_nodes
    cost = np.asarray(graph.indptr) + np.arange(n + 1, dtype=np.int64)
    cuts = np.searchsorted(cost, np.linspace(0, cost[-1], num_parts + 1)[1:-1])
    bounds = np.concatenate([[0], np.clip(cuts, 0, n), [n]]).astype(np.int64)
    bounds = np.maximum.accumulate(bounds)
    identity = np.arange(n, dtype=np.int64)
    return Partition(np.repeat(np.arange(num_parts, dtype=np.int64), np.diff(bounds)), identity, identity, bounds)


def random_partition(graph: CSRGraph, num_parts: int, seed: int = 0) -> Partition:
    """Nodes dealt to workers uniformly at random (the baseline a partitioner must beat)."""
    _check_parts(graph, num_parts)
    assignment = np.random.default_rng(seed).integers(0, num_parts, graph.num_nodes)
    return from_assignment(assignment, num_parts)


def metis_partition(graph: CSRGraph, num_parts: int, balance_edges: bool = True) -> Partition:
    """METIS k-way min-cut through DGL (``dgl.metis_partition_assignment`` on the symmetrized graph); with
    ``balance_edges`` each part also gets about equal edges, as propagation cost needs. Holds the graph in RAM."""
    from seraphim.algorithms.gnn.dgl_compat import import_dgl

    _check_parts(graph, num_parts)
    if num_parts == 1:
        return from_assignment(np.zeros(graph.num_nodes, np.int64), 1)
    dgl = import_dgl()
    import torch

    indptr = torch.from_numpy(np.array(graph.indptr, np.int64))
    indices = torch.from_numpy(np.array(graph.indices, np.int64))
    g = dgl.graph(("csc", (indptr, indices, torch.empty(0, dtype=torch.int64))), num_nodes=graph.num_nodes)
    with contextlib.redirect_stdout(io.StringIO()):  # DGL prints its timings
        assignment = dgl.metis_partition_assignment(g, num_parts, balance_edges=balance_edges)
    return from_assignment(assignment.numpy(), num_parts)


@njit(cache=True, nogil=True, parallel=True)
def _cut(indptr, indices, assignment):  # pragma: no cover - compiled
    cut = 0
    for i in prange(len(indptr) - 1):
        own = assignment[i]
        for k in range(indptr[i], indptr[i + 1]):
            if assignment[indices[k]] != own:
                cut += 1
    return cut


def edge_cut(graph: CSRGraph, partition: Partition) -> int:
    """Stored entries whose two endpoints live on different workers (each is a halo read per hop)."""
    return int(_cut(graph.indptr, graph.indices, partition.assignment))


@njit(cache=True, nogil=True, parallel=True)
def _relabel_rows(indptr, indices, new_to_old, old_to_new, new_indptr, out):  # pragma: no cover - compiled
    for i in prange(len(new_indptr) - 1):
        old = new_to_old[i]
        lo = new_indptr[i]
        hi = new_indptr[i + 1]
        src = indptr[old]
        for k in range(hi - lo):
            out[lo + k] = old_to_new[indices[src + k]]
        out[lo:hi] = np.sort(out[lo:hi])


def relabel(graph: CSRGraph, partition: Partition, out: np.ndarray | None = None) -> CSRGraph:
    """The graph in the partition's new ids (rows sorted); ``out`` may be an int64 [m] memory map to fill."""
    n = graph.num_nodes
    if len(partition.new_to_old) != n:
        raise GraphError(f"the partition covers {len(partition.new_to_old)} nodes but the graph has {n}")
    new_indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.diff(graph.indptr)[partition.new_to_old], out=new_indptr[1:])
    out = np.empty(graph.num_edges, np.int64) if out is None else out
    _relabel_rows(graph.indptr, graph.indices, partition.new_to_old, partition.old_to_new, new_indptr, out)
    return CSRGraph(new_indptr, out)


def relabel_graph(data: GraphData, partition: Partition, out_dir: str | Path) -> GraphData:
    """Write ``data`` as a new graph directory in the partition's ids (features, labels and split follow), so
    worker ``w`` owns the contiguous range ``partition.ranges()[w]``; memory O(n) plus a block of rows."""
    out_dir = begin_graph_dir(out_dir)
    indices = np.lib.format.open_memmap(out_dir / "indices.npy", "w+", np.int64, (data.graph.num_edges,))
    graph = relabel(data.graph, partition, indices)
    indices.flush()
    np.save(out_dir / "indptr.npy", graph.indptr)
    del indices, graph
    n, d = data.features.shape
    features = open_features(out_dir, n, d)
    for r0, r1 in iter_chunks(n, _ROWS):
        features[r0:r1] = data.features[partition.new_to_old[r0:r1]]
    features.flush()
    del features
    split = {s: partition.old_to_new[ids] for s, ids in zip(SPLITS, (data.train_idx, data.valid_idx,
                                                                     data.test_idx))}
    return write_node_data(out_dir, np.asarray(data.labels)[partition.new_to_old], data.num_classes, split,
                           {"partition": {"bounds": partition.bounds.tolist()}})


def load_bounds(path: str | Path) -> list[tuple[int, int]] | None:
    """The worker ranges a relabeled graph directory was written for (None when it was not)."""
    meta = json.loads((Path(path) / "meta.json").read_text())
    bounds = meta.get("partition", {}).get("bounds")
    return None if bounds is None else [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
