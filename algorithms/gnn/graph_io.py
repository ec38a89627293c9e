"""Graphs on disk: the CSR directory every GNN job reads, its out-of-core builder, and the OGB-style converter.

**The CSR directory (format 1).** ``meta.json`` holds ``format`` (1), ``num_nodes``, ``num_edges`` (stored
entries of ``indices``), ``num_classes``, ``feature_dim``, ``dtypes`` (indptr/indices/labels/splits int64,
features float32) and, for generated graphs, the generator's spec. Beside it: ``indptr.npy`` (int64 [n+1]),
``indices.npy`` (int64 [m]; row ``i`` lists the nodes ``i`` aggregates from, sorted, no repeats), ``features.npy``
(float32 [n, d]), ``labels.npy`` (int64 [n], -1 = unlabeled) and ``split/{train,valid,test}.npy`` (int64 node ids,
ascending). ``meta.json`` is written last, atomically: a directory without it is incomplete. Every array opens as
a memory map, so a graph larger than RAM costs only the pages a worker touches.

**Odd input, treated once, here.** Self-loops are dropped: ``Â = D̃^(r-1)(A+I)D̃^(-r)`` adds every node's own loop
itself, so a node counts itself exactly once whether or not its input listed the loop. Repeated edges are merged.
Isolated nodes are kept with empty rows: the ``+I`` makes their propagated features their own features.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from numba import njit, prange

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.proto.atomic_file import atomic_write

FORMAT = 1
SPLITS = ("train", "valid", "test")
_ROWS = 1 << 20  # rows per chunk when streaming arrays (edges, feature rows)
_TEXT_BLOCK = 1 << 24  # bytes of CSV text parsed at once


@dataclass(frozen=True)
class GraphData:
    """A graph with node features, labels (-1 = unlabeled) and a disjoint train/valid/test split; the arrays are
    memory maps when loaded from disk, and ``meta`` is the directory's ``meta.json`` (with ``timings``: the seconds
    each phase of generating or converting it took)."""

    graph: CSRGraph
    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    train_idx: np.ndarray
    valid_idx: np.ndarray
    test_idx: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def iter_chunks(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering ``range(total)`` in steps of ``chunk``."""
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)


# ------------------------------------------------------------------------------------------ out-of-core CSR
@njit(cache=True, nogil=True)
def _count(src, dst, symmetrize, counts):  # pragma: no cover - compiled
    for e in range(len(src)):
        counts[dst[e]] += 1
        if symmetrize:
            counts[src[e]] += 1


@njit(cache=True, nogil=True)
def _place(src, dst, symmetrize, cursor, indices):  # pragma: no cover - compiled
    for e in range(len(src)):
        s, d = src[e], dst[e]
        indices[cursor[d]] = s
        cursor[d] += 1
        if symmetrize:
            indices[cursor[s]] = d
            cursor[s] += 1


@njit(cache=True, nogil=True, parallel=True)
def _sort_dedupe_rows(indptr, indices, distinct):  # pragma: no cover - compiled
    """Sort each row in place and move its distinct entries to the row's front; distinct[i] = their count."""
    for i in prange(len(indptr) - 1):
        lo, hi = indptr[i], indptr[i + 1]
        if hi - lo > 1:
            indices[lo:hi] = np.sort(indices[lo:hi])
        w = lo
        for k in range(lo, hi):
            if k == lo or indices[k] != indices[w - 1]:
                indices[w] = indices[k]
                w += 1
        distinct[i] = w - lo


@njit(cache=True, nogil=True, parallel=True)
def _compact(indptr, indices, new_indptr, out):  # pragma: no cover - compiled
    for i in prange(len(indptr) - 1):
        lo = new_indptr[i]
        out[lo:new_indptr[i + 1]] = indices[indptr[i]:indptr[i] + new_indptr[i + 1] - lo]


def _check_ids(ids: np.ndarray, num_nodes: int, where: str) -> None:
    """GraphError naming the first id outside ``[0, num_nodes)`` and its position in ``ids``."""
    if len(ids) and (ids.min() < 0 or ids.max() >= num_nodes):
        pos = int(np.flatnonzero((ids < 0) | (ids >= num_nodes))[0])
        raise GraphError(f"{where}: id {int(ids[pos])} at position {pos} is out of range: node ids must lie in "
                         f"[0, {num_nodes - 1}] for a graph of {num_nodes} nodes")


def build_csr(edge_chunks: Iterable[tuple[np.ndarray, np.ndarray]], num_nodes: int, out_dir: str | Path,
              symmetrize: bool = True, timings: dict[str, float] | None = None) -> CSRGraph:
    """Write ``indptr.npy``/``indices.npy`` from chunks of (src, dst) edges with memory bounded by a chunk plus
    ``O(n)``: chunks are spilled to a scratch file while degrees are counted, then placed through a memory map,
    and every row sorted and merged (compiled).

    An edge ``(src, dst)`` puts ``src`` in row ``dst`` (``dst`` aggregates from ``src``); with ``symmetrize`` also
    ``dst`` in row ``src``. Self-loops are dropped and repeats merged (see the module docstring). ``timings`` gets
    ``edges_s`` (drawing or reading the chunks, and spilling them) and ``csr_s`` (placing, sorting, merging).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / "edges.scratch"
    counts = np.zeros(num_nodes, np.int64)
    total = 0
    start = time.perf_counter()
    try:
        with open(scratch, "wb") as f:
            for k, (src, dst) in enumerate(edge_chunks):
                src, dst = np.asarray(src, np.int64).reshape(-1), np.asarray(dst, np.int64).reshape(-1)
                if len(src) != len(dst):
                    raise GraphError(f"edge chunk {k} has {len(src)} sources but {len(dst)} destinations")
                _check_ids(src, num_nodes, f"edge chunk {k}: edge source")
                _check_ids(dst, num_nodes, f"edge chunk {k}: edge destination")
                keep = src != dst
                pairs = np.empty((int(keep.sum()), 2), np.int64)
                pairs[:, 0], pairs[:, 1] = src[keep], dst[keep]
                _count(pairs[:, 0], pairs[:, 1], symmetrize, counts)
                pairs.tofile(f)
                total += len(pairs)
        spilled_at = time.perf_counter()
        indptr = np.zeros(num_nodes + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        del counts
        placed = np.lib.format.open_memmap(out_dir / "indices.tmp.npy", "w+", np.int64, (int(indptr[-1]),))
        cursor = indptr[:-1].copy()
        if total:
            spilled = np.memmap(scratch, np.int64, "r", shape=(total, 2))
            for e0, e1 in iter_chunks(total, _ROWS * 4):
                chunk = np.array(spilled[e0:e1])
                _place(chunk[:, 0], chunk[:, 1], symmetrize, cursor, placed)
            del spilled
    finally:
        scratch.unlink(missing_ok=True)
    distinct = cursor  # reused: the placement cursors are spent
    _sort_dedupe_rows(indptr, placed, distinct)
    new_indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(distinct, out=new_indptr[1:])
    del cursor, distinct
    indices = np.lib.format.open_memmap(out_dir / "indices.npy", "w+", np.int64, (int(new_indptr[-1]),))
    _compact(indptr, placed, new_indptr, indices)
    indices.flush()
    del placed, indices
    os.unlink(out_dir / "indices.tmp.npy")
    np.save(out_dir / "indptr.npy", new_indptr)
    if timings is not None:
        timings.update(edges_s=spilled_at - start, csr_s=time.perf_counter() - spilled_at)
    return CSRGraph(new_indptr, np.load(out_dir / "indices.npy", mmap_mode="r"))


def csr_from_edges(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> CSRGraph:
    """The undirected graph ``build_csr`` would write (both directions, self-loops dropped, repeats merged, rows
    sorted), held in RAM: for graphs that fit there and need no directory (tests, benchmarks, edge rewiring)."""
    src, dst = np.asarray(src, np.int64).reshape(-1), np.asarray(dst, np.int64).reshape(-1)
    if len(src) != len(dst):
        raise GraphError(f"edge list has {len(src)} sources but {len(dst)} destinations")
    _check_ids(src, num_nodes, "edge source")
    _check_ids(dst, num_nodes, "edge destination")
    keep = src != dst
    src, dst = src[keep], dst[keep]
    keys = np.concatenate([dst * num_nodes + src, src * num_nodes + dst])  # row * n + column, both directions
    keys.sort()  # sort + mask of repeats: many times faster than np.unique on large edge lists
    first = np.ones(len(keys), bool)
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    keys = keys[first]
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(keys // num_nodes, minlength=num_nodes), out=indptr[1:])
    return CSRGraph(indptr, keys % num_nodes)


# ------------------------------------------------------------------------------------------ the CSR directory
def begin_graph_dir(out_dir: str | Path) -> Path:
    """Make ``out_dir`` ready for a (re)write: ``meta.json`` goes first, so an interrupted rewrite never looks like
    a complete graph (``write_node_data`` writes it last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    return out_dir


def open_features(out_dir: str | Path, num_nodes: int, dim: int) -> np.ndarray:
    """A writable float32 [n, d] memory map at ``out_dir/features.npy`` for writers that fill it row block by
    row block."""
    return np.lib.format.open_memmap(Path(out_dir) / "features.npy", "w+", np.float32, (num_nodes, dim))


def write_node_data(out_dir: str | Path, labels: np.ndarray, num_classes: int, split: dict[str, np.ndarray],
                    extra_meta: dict[str, Any] | None = None) -> GraphData:
    """Finish a graph directory whose CSR and ``features.npy`` exist: write labels and split, validate the whole,
    then ``meta.json`` (last, atomically), and open it. Invalid data leaves no ``meta.json``."""
    out_dir = Path(out_dir)
    np.save(out_dir / "labels.npy", np.asarray(labels, np.int64))
    (out_dir / "split").mkdir(exist_ok=True)
    for name in SPLITS:
        np.save(out_dir / "split" / f"{name}.npy", np.sort(np.asarray(split[name], np.int64).reshape(-1)))
    data = _open_arrays(out_dir, num_classes)
    validate(data)
    meta = {"format": FORMAT, "num_nodes": data.graph.num_nodes, "num_edges": data.graph.num_edges,
            "num_classes": int(num_classes), "feature_dim": int(data.features.shape[1]),
            "dtypes": {"indptr": "int64", "indices": "int64", "features": "float32", "labels": "int64",
                       "split": "int64"},
            **(extra_meta or {})}
    atomic_write(out_dir / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return _open_arrays(out_dir, num_classes, meta)


def _open_arrays(path: Path, num_classes: int, meta: dict[str, Any] | None = None) -> GraphData:
    def arr(name: str) -> np.ndarray:
        if not (path / name).exists():
            raise GraphError(f"{path} is missing {name}")
        return np.load(path / name, mmap_mode="r")

    graph = CSRGraph(arr("indptr.npy"), arr("indices.npy"))
    return GraphData(graph, arr("features.npy"), arr("labels.npy"), num_classes,
                     *(arr(f"split/{s}.npy") for s in SPLITS), meta=meta or {})


def load_graph(path: str | Path) -> GraphData:
    """Open a CSR graph directory with memory maps and check it is consistent (O(n) work: neighbour indices are
    checked when the CSR is built, not on every open)."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise GraphError(f"{path} is not a complete graph directory: no meta.json (convert OGB-style arrays with "
                         f"convert_ogb, or generate a graph)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise GraphError(f"{meta_file}: format {meta.get('format')!r} is not {FORMAT}")
    data = _open_arrays(path, int(meta["num_classes"]), meta)
    found = {"num_nodes": data.graph.num_nodes, "num_edges": data.graph.num_edges,
             "feature_dim": data.features.shape[1] if data.features.ndim == 2 else None}
    for key, value in found.items():
        if meta.get(key) != value:
            raise GraphError(f"{meta_file} says {key}={meta.get(key)} but the arrays hold {value}")
    validate(data)
    return data


def validate(data: GraphData) -> None:
    """Dtypes are right, lengths agree, indptr is monotone, splits are in range, disjoint and labeled."""
    g, n = data.graph, data.graph.num_nodes
    if len(g.indptr) > 1 and np.any(np.diff(g.indptr) < 0):
        row = int(np.flatnonzero(np.diff(g.indptr) < 0)[0])
        raise GraphError(f"indptr decreases at row {row} ({int(g.indptr[row])} -> {int(g.indptr[row + 1])})")
    if data.features.dtype != np.float32 or data.features.ndim != 2 or data.features.shape[0] != n:
        raise GraphError(f"features are {data.features.dtype} {tuple(data.features.shape)} but the graph has {n} "
                         f"nodes: expected float32 [{n}, d]")
    if data.labels.dtype != np.int64 or data.labels.shape != (n,):
        raise GraphError(f"labels are {data.labels.dtype} {tuple(data.labels.shape)} but the graph has {n} nodes: "
                         f"expected int64 [{n}]")
    if data.num_classes < 2:
        raise GraphError(f"num_classes must be >= 2, got {data.num_classes}")
    parts = (data.train_idx, data.valid_idx, data.test_idx)
    for name, ids in zip(SPLITS, parts):
        if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) == 0:
            raise GraphError(f"split {name} must be a non-empty 1-D int64 array of node ids, got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        if ids.min() < 0 or ids.max() >= n:
            bad = int(ids[(ids < 0) | (ids >= n)][0])
            raise GraphError(f"split {name} holds node id {bad}, outside [0, {n - 1}]")
        labels = np.asarray(data.labels[ids])
        if labels.min() < 0 or labels.max() >= data.num_classes:
            bad = int(ids[(labels < 0) | (labels >= data.num_classes)][0])
            raise GraphError(f"split {name} holds node {bad} whose label {int(data.labels[bad])} is not in "
                             f"[0, {data.num_classes - 1}]")
    ids = np.concatenate(parts)
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    repeated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(repeated):
        first = repeated[0]
        a, b = SPLITS[owner[order[first]]], SPLITS[owner[order[first + 1]]]
        where = f"both {a} and {b}" if a != b else f"{a} twice"
        raise GraphError(f"the split is not disjoint: {len(np.unique(sorted_ids[repeated]))} node id(s) appear more "
                         f"than once across train/valid/test, e.g. node {int(sorted_ids[first])} is in {where}")


# ------------------------------------------------------------------------------------------ OGB-style arrays
_STEMS = {"edges": ("edge_index", "edge"), "features": ("node_feat", "node-feat"),
          "labels": ("node_label", "node-label")}
_SUFFIXES = (".npy", ".csv", ".csv.gz")


def _find(base: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for suffix in _SUFFIXES:
            if (base / f"{stem}{suffix}").exists():
                return base / f"{stem}{suffix}"
    raise GraphError(f"{base}: found none of " + ", ".join(f"{s}{x}" for s in stems for x in _SUFFIXES))


def _split_dir(src: Path) -> Path:
    """``split/`` itself, or its one subfolder (OGB ships ``split/<scheme>/train.csv.gz``)."""
    base = src / "split"
    if not base.is_dir():
        raise GraphError(f"{src}: no split/ folder with train, valid and test node ids")
    if any((base / f"train{x}").exists() for x in _SUFFIXES):
        return base
    subs = [d for d in base.iterdir() if d.is_dir() and any((d / f"train{x}").exists() for x in _SUFFIXES)]
    if len(subs) != 1:
        raise GraphError(f"{base}: expected train/valid/test files there or in exactly one subfolder, found "
                         f"{len(subs)} subfolders with them")
    return subs[0]


def _is_header(line: bytes) -> bool:
    """A first line none of whose fields is a number (``src,dst``; ``nan`` is a number) names the columns."""
    def number(field: bytes) -> bool:
        try:
            float(field)
            return True
        except ValueError:
            return False

    fields = line.strip().split(b",")
    return bool(line.strip()) and not any(number(f) for f in fields)


def _text_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text of whole lines) blocks of a CSV (optionally gzip), a header line skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    line, rest, first = 1, b"", True
    with opener(path, "rb") as f:
        while True:
            raw = f.read(_TEXT_BLOCK)
            data = rest + raw
            cut = len(data) if not raw else data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            if first and block:
                head_end = block.find(b"\n") + 1 or len(block)
                if _is_header(block[:head_end]):
                    block, line = block[head_end:], line + 1
                first = False
            if block:
                try:
                    text = block.decode()
                except UnicodeDecodeError as exc:
                    bad_line = line + block[:exc.start].count(b"\n")
                    raise GraphError(f"{path}:{bad_line}: not UTF-8 text") from None
                yield line, text
                line += block.count(b"\n")
            if not raw:
                return


def _locate(path: Path, first_line: int, text: str, columns: int | None, kind: str) -> GraphError:
    """The precise error for a block numpy refused: the first line with a wrong column count or a bad value."""
    convert = int if kind == "integer" else float
    for offset, row in enumerate(text.splitlines()):
        if not row.strip():
            continue
        fields = [x.strip() for x in row.split(",")]
        where = f"{path}:{first_line + offset}"
        columns = len(fields) if columns is None else columns
        if len(fields) != columns:
            return GraphError(f"{where}: expected {columns} {kind} column(s), got {len(fields)}: {row[:80]!r} "
                              f"(columns are separated by commas)")
        for field in fields:
            try:
                value = convert(field)
                if kind == "integer" and not -2**63 <= value < 2**63:
                    raise ValueError
            except ValueError:
                noun = "an integer" if kind == "integer" else "a number"
                return GraphError(f"{where}: not {noun}: {field[:40]!r}")
    return GraphError(f"{path}: cannot parse lines {first_line}.. as {kind} CSV")


def _line_of_row(text: str, first_line: int, row: int) -> int:
    """Line number of data row ``row`` (0-based, blank lines skipped) in a text block."""
    seen = -1
    for offset, line in enumerate(text.splitlines()):
        if line.strip():
            seen += 1
            if seen == row:
                return first_line + offset
    return first_line


def _csv_chunks(path: Path, columns: int | None, dtype: type) -> Iterator[tuple[int, str, np.ndarray]]:
    """(first line, block text, rows [k, columns]) for each block of a comma-separated file; a malformed line is a
    GraphError naming the file, the line and what is wrong. ``columns=None`` takes the first row's count."""
    kind = "integer" if dtype is np.int64 else "numeric"
    for first_line, text in _text_blocks(path):
        try:
            rows = np.loadtxt(io.StringIO(text), dtype=dtype, delimiter=",", ndmin=2, comments=None)
        except ValueError:
            raise _locate(path, first_line, text, columns, kind) from None
        if not len(rows):
            continue
        if columns is None:
            columns = rows.shape[1]
        if rows.shape[1] != columns:
            raise _locate(path, first_line, text, columns, kind)
        yield first_line, text, rows


def _read_column(path: Path, dtype: type, what: str) -> np.ndarray:
    """A 1-D array from a .npy (any shape with one column) or a one-column CSV."""
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[1] != 1):
            raise GraphError(f"{path}: {what} must be a vector or an [n, 1] array, got shape {arr.shape}")
        return np.asarray(arr).reshape(-1)
    chunks = [rows.reshape(-1) for _, _, rows in _csv_chunks(path, 1, dtype)]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype)


def _convert_features(path: Path, out_dir: Path) -> int:
    """Stream node features into ``out_dir/features.npy`` (float32, finite); returns the node count."""
    if path.suffix == ".npy":
        src = np.load(path, mmap_mode="r")
        if src.ndim != 2 or src.dtype.kind not in "fiu":
            raise GraphError(f"{path}: node features must be a numeric [n, d] array, got {src.dtype} {src.shape}")
        out = open_features(out_dir, src.shape[0], src.shape[1])
        for r0, r1 in iter_chunks(src.shape[0], _ROWS):
            block = np.asarray(src[r0:r1], np.float32)
            _check_finite(block, path, lambda r: f"row {r0 + r}")
            out[r0:r1] = block
        out.flush()
        return src.shape[0]
    spill = out_dir / "features.scratch"
    rows_total, dim = 0, 0
    try:
        with open(spill, "wb") as f:
            for first_line, text, rows in _csv_chunks(path, None, np.float64):
                block = rows.astype(np.float32)
                _check_finite(block, path, lambda r: f"line {_line_of_row(text, first_line, r)}")
                block.tofile(f)
                rows_total, dim = rows_total + len(block), block.shape[1]
        if rows_total == 0:
            raise GraphError(f"{path}: no feature rows")
        out = open_features(out_dir, rows_total, dim)
        spilled = np.memmap(spill, np.float32, "r", shape=(rows_total, dim))
        for r0, r1 in iter_chunks(rows_total, _ROWS):
            out[r0:r1] = spilled[r0:r1]
        out.flush()
        del spilled, out
    finally:
        spill.unlink(missing_ok=True)
    return rows_total


def _check_finite(block: np.ndarray, path: Path, where: Callable[[int], str]) -> None:
    bad = ~np.isfinite(block)
    if bad.any():
        r = int(np.flatnonzero(bad.any(axis=1))[0])
        raise GraphError(f"{path}: {where(r)} holds a NaN or infinite feature; features must be finite (impute "
                         f"missing values first)")


def _convert_labels(path: Path, num_nodes: int, features_path: Path) -> tuple[np.ndarray, int]:
    """Integer class ids with -1 for unlabeled (OGB writes NaN there), and the class count."""
    labels = _read_column(path, np.float64, "node labels")
    if len(labels) != num_nodes:
        raise GraphError(f"node_feat has {num_nodes} rows but node_label has {len(labels)} entries ({features_path} "
                         f"and {path}); features and labels must describe the same nodes")
    if labels.dtype.kind == "f":
        known = ~np.isnan(labels)
        fractional = known & (labels != np.round(labels))
        if fractional.any():
            node = int(np.flatnonzero(fractional)[0])
            raise GraphError(f"{path}: node {node} has label {labels[node]}, not an integer class id (use NaN or "
                             f"-1 for unlabeled)")
        labels = np.where(known, labels, -1)
    labels = labels.astype(np.int64)
    if labels.min(initial=0) < -1:
        node = int(np.flatnonzero(labels < -1)[0])
        raise GraphError(f"{path}: node {node} has label {int(labels[node])}; labels must be >= 0 or -1 (unlabeled)")
    if not (labels >= 0).any():
        raise GraphError(f"{path}: no node is labeled")
    return labels, int(labels.max()) + 1


def _edge_chunks(path: Path, num_nodes: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(src, dst) chunks of an ``edge_index`` [2, m] (or [m, 2]) .npy or a ``src,dst`` CSV, ids range-checked
    with the column or line of the first bad one."""
    limit = f"node ids must lie in [0, {num_nodes - 1}] ({num_nodes} nodes have features)"
    if path.suffix == ".npy":
        edges = np.load(path, mmap_mode="r")
        if edges.ndim != 2 or 2 not in edges.shape or edges.dtype.kind not in "iu":
            raise GraphError(f"{path}: expected an integer array of shape [2, m], got {edges.dtype} {edges.shape}")
        by_column = edges.shape[0] == 2
        m = edges.shape[1] if by_column else edges.shape[0]
        for e0, e1 in iter_chunks(m, _ROWS * 4):
            src, dst = (edges[:, e0:e1] if by_column else edges[e0:e1].T).astype(np.int64)
            for side, ids in (("source", src), ("destination", dst)):
                bad = (ids < 0) | (ids >= num_nodes)
                if bad.any():
                    e = int(np.flatnonzero(bad)[0])
                    raise GraphError(f"{path}: edge {e0 + e}: edge {side} id {int(ids[e])} is out of range: {limit}")
            yield src, dst
        return
    for first_line, text, rows in _csv_chunks(path, 2, np.int64):
        bad = (rows < 0) | (rows >= num_nodes)
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            raise GraphError(f"{path}:{_line_of_row(text, first_line, r)}: edge {('source', 'destination')[c]} id "
                             f"{int(rows[r, c])} is out of range: {limit}")
        yield rows[:, 0], rows[:, 1]


def convert_ogb(src: str | Path, out_dir: str | Path, symmetrize: bool = True) -> GraphData:
    """Convert an OGB-style node-property directory into a CSR graph directory and open it.

    ``src`` holds ``edge_index`` (``.npy`` [2, m], or ``.csv``/``.csv.gz`` ``src,dst`` rows), ``node_feat`` (``.npy``
    [n, d] or CSV rows), ``node_label`` (``.npy`` or one value per line; NaN or -1 = unlabeled) and
    ``split/{train,valid,test}`` (``.npy``, or CSV one id per line, as OGB ships; also ``split/<scheme>/``). OGB's
    raw names ``edge``, ``node-feat``, ``node-label`` work too. The features define n. With ``symmetrize`` every
    edge is stored both ways (undirected); without, node ``dst`` aggregates from ``src`` only. Memory: a chunk of
    rows plus O(n); a malformed input is a GraphError naming the file and the line, column or id.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise GraphError(f"{src} is not a directory of OGB-style arrays")
    begin_graph_dir(out_dir)
    start = time.perf_counter()
    features_path = _find(src, _STEMS["features"])
    n = _convert_features(features_path, out_dir)
    labels, num_classes = _convert_labels(_find(src, _STEMS["labels"]), n, features_path)
    timings = {"features_s": time.perf_counter() - start}
    build_csr(_edge_chunks(_find(src, _STEMS["edges"]), n), n, out_dir, symmetrize, timings)
    split_dir = _split_dir(src)
    split = {s: _read_column(_find(split_dir, (s,)), np.int64, f"split {s}") for s in SPLITS}
    for name, ids in split.items():
        if ids.dtype.kind not in "iu":
            raise GraphError(f"split {name} must hold integer node ids, got {ids.dtype}")
    return write_node_data(out_dir, labels, num_classes, split,
                           {"source": {"ogb": str(src.resolve())}, "timings": timings})
