"""Graphs on disk: the CSR directory every GNN job reads, its out-of-core builder, and the OGB-style loader.

The CSR directory (format 1) holds ``meta.json`` (num_nodes, num_edges, num_classes, feature_dim, format),
``indptr.npy`` (int64 [n+1]), ``indices.npy`` (int64 [m]), ``features.npy`` (float32 [n, d]), ``labels.npy``
(int64 [n], -1 for unlabeled) and ``split/{train,valid,test}.npy`` (int64 node ids). It is opened with memory
maps, so a graph larger than RAM costs only the pages a worker touches.

Treatment of odd input, documented once: self-loops are dropped (``Â = D̃^(r-1)(A+I)D̃^(-r)`` adds every node's
own loop itself), repeated edges are merged, and isolated nodes are kept (the ``+I`` keeps their own features).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from numba import njit

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError

FORMAT = 1
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class GraphData:
    """A graph with node features, labels and a train/valid/test split (arrays may be memory maps)."""

    graph: CSRGraph
    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    train_idx: np.ndarray
    valid_idx: np.ndarray
    test_idx: np.ndarray


# ------------------------------------------------------------------------------------------ out-of-core CSR
@njit(cache=True)
def _fill(src, dst, cursor, indices):  # pragma: no cover - compiled
    for e in range(len(src)):
        s = src[e]
        indices[cursor[s]] = dst[e]
        cursor[s] += 1


@njit(cache=True)
def _sort_dedupe_rows(indptr, indices, new_counts):  # pragma: no cover - compiled
    """Sort each row in place and move its distinct entries to the row's front; new_counts[i] = distinct count."""
    for i in range(len(indptr) - 1):
        lo, hi = indptr[i], indptr[i + 1]
        if hi - lo > 1:
            indices[lo:hi] = np.sort(indices[lo:hi])
        w = lo
        for k in range(lo, hi):
            if k == lo or indices[k] != indices[w - 1]:
                indices[w] = indices[k]
                w += 1
        new_counts[i] = w - lo


@njit(cache=True)
def _compact(indptr, indices, new_indptr, out):  # pragma: no cover - compiled
    for i in range(len(indptr) - 1):
        n = new_indptr[i + 1] - new_indptr[i]
        out[new_indptr[i]:new_indptr[i] + n] = indices[indptr[i]:indptr[i] + n]


def build_csr(edge_chunks: Iterable[tuple[np.ndarray, np.ndarray]], num_nodes: int, out_dir: Path,
              symmetrize: bool = True) -> CSRGraph:
    """Write ``indptr.npy``/``indices.npy`` from chunks of (src, dst) edges with memory bounded by a chunk plus
    ``O(n)``: the chunks go to a scratch file, degrees are counted, edges placed, rows sorted and merged.

    Row ``i`` lists the nodes ``i`` aggregates from: an edge ``(src, dst)`` puts ``src`` in row ``dst``; with
    ``symmetrize`` both directions are stored. Self-loops are dropped; ids outside ``[0, n)`` are an error.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "edges.scratch"
    counts = np.zeros(num_nodes, np.int64)
    total = 0
    with open(scratch, "wb") as f:
        for src, dst in edge_chunks:
            src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
            _check_ids(src, num_nodes, "source")
            _check_ids(dst, num_nodes, "destination")
            keep = src != dst
            rows, cols = dst[keep], src[keep]
            if symmetrize:
                rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
            counts += np.bincount(rows, minlength=num_nodes)
            np.stack([rows, cols]).T.astype(np.int64).tofile(f)
            total += len(rows)
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    placed = np.lib.format.open_memmap(out_dir / "indices.tmp.npy", "w+", np.int64, (total,))
    cursor = indptr[:-1].copy()
    pairs = np.memmap(scratch, np.int64, "r", shape=(total, 2)) if total else np.empty((0, 2), np.int64)
    step = 1 << 22
    for e0 in range(0, total, step):
        chunk = np.asarray(pairs[e0:e0 + step])
        _fill(chunk[:, 0], chunk[:, 1], cursor, placed)
    del pairs
    new_counts = np.zeros(num_nodes, np.int64)
    _sort_dedupe_rows(indptr, placed, new_counts)
    new_indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(new_counts, out=new_indptr[1:])
    indices = np.lib.format.open_memmap(out_dir / "indices.npy", "w+", np.int64, (int(new_indptr[-1]),))
    _compact(indptr, placed, new_indptr, indices)
    indices.flush()
    del placed, indices
    os.unlink(out_dir / "indices.tmp.npy")
    os.unlink(scratch)
    np.save(out_dir / "indptr.npy", new_indptr)
    return CSRGraph(new_indptr, np.load(out_dir / "indices.npy", mmap_mode="r"))


def _check_ids(ids: np.ndarray, n: int, what: str) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)][0]
        raise GraphError(f"edge {what} id {int(bad)} is out of range: node ids must lie in [0, {n - 1}]")


# ------------------------------------------------------------------------------------------ the CSR directory
def write_node_data(out_dir: Path, features: np.ndarray, labels: np.ndarray, num_classes: int,
                    split: dict[str, np.ndarray]) -> None:
    """Write labels, split and meta.json beside an existing CSR; ``features`` may already be ``features.npy``."""
    out_dir = Path(out_dir)
    indptr = np.load(out_dir / "indptr.npy", mmap_mode="r")
    n = len(indptr) - 1
    if not (out_dir / "features.npy").exists():
        np.save(out_dir / "features.npy", np.asarray(features, np.float32))
    np.save(out_dir / "labels.npy", np.asarray(labels, np.int64))
    (out_dir / "split").mkdir(exist_ok=True)
    for name in SPLITS:
        np.save(out_dir / "split" / f"{name}.npy", np.asarray(split[name], np.int64))
    meta = {"format": FORMAT, "num_nodes": n, "num_edges": int(indptr[-1]), "num_classes": int(num_classes),
            "feature_dim": int(np.load(out_dir / "features.npy", mmap_mode="r").shape[1])}
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out_dir / "meta.json")  # written last, atomically: its presence means the directory is complete


def load_graph(path: str | Path) -> GraphData:
    """Open a CSR graph directory with memory maps and check it is consistent."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise GraphError(f"{path} is not a graph directory: no meta.json (convert OGB-style arrays with "
                         f"convert_ogb, or generate a graph)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise GraphError(f"{meta_file}: format {meta.get('format')!r} is not {FORMAT}")
    graph = CSRGraph(np.load(path / "indptr.npy", mmap_mode="r"), np.load(path / "indices.npy", mmap_mode="r"))
    data = GraphData(graph, np.load(path / "features.npy", mmap_mode="r"), np.load(path / "labels.npy"),
                     int(meta["num_classes"]), *(np.load(path / "split" / f"{s}.npy") for s in SPLITS))
    validate(data)
    return data


def validate(data: GraphData) -> None:
    """Lengths agree, ids are in range, the split is disjoint and its nodes are labeled."""
    n = data.graph.num_nodes
    if data.features.ndim != 2 or data.features.shape[0] != n:
        raise GraphError(f"features have shape {tuple(data.features.shape)} but the graph has {n} nodes "
                         f"(expected [{n}, d])")
    if data.labels.shape != (n,):
        raise GraphError(f"labels have {len(data.labels)} entries but the graph has {n} nodes")
    if data.num_classes < 2:
        raise GraphError(f"num_classes must be >= 2, got {data.num_classes}")
    parts = (data.train_idx, data.valid_idx, data.test_idx)
    for name, ids in zip(SPLITS, parts):
        if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) == 0:
            raise GraphError(f"split {name} must be a non-empty 1-D int64 array of node ids")
        if ids.min() < 0 or ids.max() >= n:
            bad = ids[(ids < 0) | (ids >= n)][0]
            raise GraphError(f"split {name} holds node id {int(bad)}, outside [0, {n - 1}]")
        labels = data.labels[ids]
        if labels.min() < 0 or labels.max() >= data.num_classes:
            bad = ids[(labels < 0) | (labels >= data.num_classes)][0]
            raise GraphError(f"split {name} holds node {int(bad)} whose label {int(data.labels[bad])} is not in "
                             f"[0, {data.num_classes - 1}]")
    ids = np.concatenate(parts)
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    order = np.argsort(ids, kind="stable")
    repeated = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
    if len(repeated):
        first = repeated[0]
        a, b = SPLITS[owner[order[first]]], SPLITS[owner[order[first + 1]]]
        raise GraphError(f"the split is not disjoint: {len(repeated)} repeated node id(s); node "
                         f"{int(ids[order][first])} is in both {a} and {b}")


# ------------------------------------------------------------------------------------------ OGB-style arrays
def _read_int_rows(path: Path, columns: int) -> np.ndarray:
    """A CSV (optionally .gz) of integer rows, `columns` per line, with the line of any malformed entry named."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != columns:
                raise GraphError(f"{path}:{lineno}: expected {columns} integer column(s), got {len(parts)}: "
                                 f"{line[:60]!r}")
            try:
                rows.append([int(p) for p in parts])
            except ValueError:
                raise GraphError(f"{path}:{lineno}: not an integer: {line[:60]!r}") from None
    return np.array(rows, np.int64).reshape(-1, columns)


def _find(base: Path, stem: str) -> Path:
    for suffix in (".npy", ".csv", ".csv.gz"):
        if (base / f"{stem}{suffix}").exists():
            return base / f"{stem}{suffix}"
    raise GraphError(f"{base}: no {stem}.npy, {stem}.csv or {stem}.csv.gz")


def _edges(base: Path) -> np.ndarray:
    path = _find(base, "edge_index")
    if path.suffix == ".npy":
        edges = np.load(path)
        if edges.ndim != 2 or 2 not in edges.shape or not np.issubdtype(edges.dtype, np.integer):
            raise GraphError(f"{path}: expected an integer array of shape [2, m], got {edges.dtype} {edges.shape}")
        return (edges if edges.shape[0] == 2 else edges.T).astype(np.int64)
    return _read_int_rows(path, 2).T


def _node_array(base: Path, stem: str) -> np.ndarray:
    path = _find(base, stem)
    if path.suffix == ".npy":
        return np.load(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        try:
            return np.loadtxt(f, delimiter=",", ndmin=2)
        except ValueError as exc:
            raise GraphError(f"{path}: {exc}") from None


def convert_ogb(src: str | Path, out_dir: str | Path, symmetrize: bool = True) -> GraphData:
    """Convert an OGB-style node-property directory (``edge_index``, ``node_feat``, ``node_label`` as .npy or
    .csv[.gz], ``split/{train,valid,test}.csv`` one id per line) into a CSR graph directory and open it."""
    src, out_dir = Path(src), Path(out_dir)
    features = np.asarray(_node_array(src, "node_feat"), np.float32)
    labels = np.asarray(_node_array(src, "node_label")).reshape(-1)
    if labels.dtype.kind == "f":  # OGB marks unlabeled nodes with NaN
        known = ~np.isnan(labels)
        if not np.all(labels[known] == np.round(labels[known])):
            raise GraphError(f"{src}: node_label must hold integer class ids (NaN for unlabeled)")
        labels = np.where(known, labels, -1)
    labels = labels.astype(np.int64)
    n = features.shape[0]
    if len(labels) != n:
        raise GraphError(f"{src}: node_feat has {n} rows but node_label has {len(labels)} entries")
    edges = _edges(src)
    build_csr([(edges[0], edges[1])], n, out_dir, symmetrize)
    split = {s: np.load(f).astype(np.int64).reshape(-1) if f.suffix == ".npy" else _read_int_rows(f, 1).reshape(-1)
             for s, f in ((s, _find(src / "split", s)) for s in SPLITS)}
    np.save(out_dir / "features.npy", features)
    num_classes = int(labels.max()) + 1 if (labels >= 0).any() else 0
    write_node_data(out_dir, features, labels, num_classes, split)
    return load_graph(out_dir)


def iter_chunks(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering ``range(total)`` in steps of ``chunk``."""
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)
