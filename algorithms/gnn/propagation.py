"""Parameter-free propagation ``X' = Â X`` with ``Â = D̃^(r-1) Ã D̃^(-r)``, ``Ã = A + I``: the precompute of GAMLP/PasCa.

Compiled with numba (rows in parallel, int64 offsets so graphs past 2^31 edges cannot overflow; every kernel here
and in the other GNN modules releases the GIL, so a kernel of many seconds never stalls a job process's heartbeat
thread). The hop is computed as ``X' = row_scale ⊙ (Ã (col_scale ⊙ X))`` with both scale vectors precomputed once
by :func:`normalization`; the ``I`` of ``Ã`` is applied inside the kernel, never materialized.

Conventions (see ``csr.py``): row ``i`` lists the nodes ``i`` aggregates from, and ``D̃[i]`` is the length of row
``i`` of ``Ã`` (the in-degree plus one; on undirected graphs, which store both directions, also the out-degree).
Self-loops already in the input are counted once: ``Ã[i, i] = 1`` whether or not row ``i`` lists ``i`` (the graph
loaders drop them; the kernels skip them). Repeated edges count with their multiplicity.

A worker that owns node range ``[lo, hi)`` computes its rows of every hop from a gathered block of source rows:
``block = partition_block(graph, lo, hi, r)``; pull ``X^(l-1)[block.sources]`` from the PS;
``propagate_block(block, pulled)`` is ``X^(l)[lo:hi]``. ``block.sources`` lists the own rows first, then the halo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .csr import CSRGraph, GraphError

__all__ = [
    "Scales", "PartitionBlock", "normalization", "propagate", "propagate_rows", "needed_sources", "partition_block",
    "propagate_block", "hops", "train_one_hot", "label_seed", "label_hops", "ppr", "s2gc", "heat_kernel",
]

Scales = tuple[np.ndarray, np.ndarray]  #: (row_scale, col_scale) = (D̃^(r-1), D̃^(-r)), float32 [n] each
_CHUNKS_PER_THREAD = 16  #: parallel work items per thread; each holds about the same number of edges
#: edges ahead whose source row (and scale) the kernel prefetches: the gathers are random DRAM reads, and issuing
#: them early doubled edges/s on a 1M-node R-MAT graph (d=64); 32 and 64 measured alike, 8-16 gave less.
PREFETCH_EDGES = 32


# ----------------------------------------------------------------------------------------------------- kernels
@intrinsic
def prefetch_line(typingctx, arr):
    """Hint the CPU to fetch the cache line holding arr's first element (llvm.prefetch: read, keep in all levels)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(data, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr), codegen


@njit(cache=True, nogil=True, parallel=True)
def _tilde_degrees(indptr, indices):
    """Row lengths of Ã (self-loops counted once) and how many indices fall outside [0, n)."""
    n = len(indptr) - 1
    deg = np.empty(n, np.float64)
    bad = 0
    for i in prange(n):
        count = 1
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j < 0 or j >= n:
                bad += 1
            elif j != i:
                count += 1
        deg[i] = count
    return deg, bad


@njit(cache=True, nogil=True)
def _accumulate(indptr, indices, i, s, col_scale, x, acc, prefetch_end):
    """acc = (Ã (col_scale ⊙ x)) for graph row i, whose own row sits at position s of x; prefetches the rows of
    the edges PREFETCH_EDGES ahead as long as they lie before prefetch_end."""
    d = x.shape[1]
    w = col_scale[s]
    for f in range(d):
        acc[f] = w * x[s, f]
    for e in range(indptr[i], indptr[i + 1]):
        if e + PREFETCH_EDGES < prefetch_end:
            q = indices[e + PREFETCH_EDGES]
            prefetch_line(col_scale[q:])
            for f in range(0, d, 16):
                prefetch_line(x[q, f:])
            prefetch_line(x[q, d - 1:])
        j = indices[e]
        if j != s:
            w = col_scale[j]
            for f in range(d):
                acc[f] += w * x[j, f]


@njit(cache=True, nogil=True)
def _store(acc, w, out, r, y, b):
    """out[r] = w * acc (+ b * y[r] when b is not zero)."""
    d = acc.shape[0]
    if b != 0.0:
        for f in range(d):
            out[r, f] = w * acc[f] + b * y[r, f]
    else:
        for f in range(d):
            out[r, f] = w * acc[f]


@njit(cache=True, nogil=True, parallel=True)
def _hop_range(indptr, indices, row0, self0, bounds, row_scale, col_scale, x, out, a, y, b):
    """out[r] = a * row_scale[row0+r] * (Ã (col_scale ⊙ x))[row0+r] + b * y[r] for the rows the bounds cover;
    the own row of graph row row0+r is x[self0+r]."""
    d = x.shape[1]
    for c in prange(len(bounds) - 1):
        acc = np.empty(d, np.float32)
        prefetch_end = indptr[row0 + bounds[c + 1]]
        for r in range(bounds[c], bounds[c + 1]):
            _accumulate(indptr, indices, row0 + r, self0 + r, col_scale, x, acc, prefetch_end)
            _store(acc, np.float32(a * row_scale[row0 + r]), out, r, y, b)


@njit(cache=True, nogil=True, parallel=True)
def _hop_list(indptr, indices, rows, bounds, row_scale, col_scale, x, out):
    """out[r] = row_scale[rows[r]] * (Ã (col_scale ⊙ x))[rows[r]] for an arbitrary list of graph rows."""
    d = x.shape[1]
    for c in prange(len(bounds) - 1):
        acc = np.empty(d, np.float32)
        for r in range(bounds[c], bounds[c + 1]):
            i = rows[r]
            _accumulate(indptr, indices, i, i, col_scale, x, acc, indptr[i + 1])
            _store(acc, row_scale[i], out, r, x, 0.0)


@njit(cache=True, nogil=True)
def _popcount(v):
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (v * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _mark_halo(indices, e0, e1, lo, hi, bits):
    """Set bit j of the bitmap for every neighbour j outside [lo, hi) of the edges e0..e1."""
    for e in range(e0, e1):
        j = indices[e]
        if j < lo or j >= hi:
            bits[j >> 6] |= np.uint64(1) << np.uint64(j & 63)


@njit(cache=True, nogil=True)
def _bitmap_ids(bits, word_rank, total):
    """The set bit positions of the bitmap, ascending."""
    ids = np.empty(total, np.int64)
    for w in range(len(bits)):
        v = bits[w]
        k = word_rank[w]
        b = 0
        while v != 0:
            if v & np.uint64(1):
                ids[k] = (w << 6) + b
                k += 1
            v >>= np.uint64(1)
            b += 1
    return ids


@njit(cache=True, nogil=True, parallel=True)
def _remap(indices, e0, e1, lo, hi, bits, word_rank, local):
    """Position in the gathered block (own rows first, then the halo ascending) of every neighbour of edges e0..e1."""
    own = hi - lo
    for e in prange(e0, e1):
        j = indices[e]
        if lo <= j < hi:
            local[e - e0] = j - lo
        else:
            below = bits[j >> 6] & ((np.uint64(1) << np.uint64(j & 63)) - np.uint64(1))
            local[e - e0] = own + word_rank[j >> 6] + np.int64(_popcount(below))


# ----------------------------------------------------------------------------------------------------- helpers
def _check_r(r: float) -> None:
    if not 0.0 <= r <= 1.0:
        raise GraphError(f"normalization exponent r must lie in [0, 1] (0.5 symmetric, 1 transition, 0 mean), "
                         f"got {r}")


def _check_hops(k: int) -> None:
    if k < 1:
        raise GraphError(f"hop count must be >= 1, got {k}")


def _features(x: np.ndarray, rows: int, what: str) -> np.ndarray:
    """x as a C-contiguous float32 [rows, d] array (no copy when it already is one)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise GraphError(f"{what} must be a 2-D float32 array, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} with shape {getattr(x, 'shape', None)}; "
                         f"cast with x.astype(np.float32)")
    if x.shape[0] != rows:
        raise GraphError(f"{what} has {x.shape[0]} rows but {rows} are needed")
    return np.ascontiguousarray(x)


def _output(out: np.ndarray | None, rows: int, d: int, x: np.ndarray) -> np.ndarray:
    if out is None:
        return np.empty((rows, d), np.float32)
    if (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (rows, d)
            or not out.flags.c_contiguous):
        raise GraphError(f"out must be a C-contiguous float32 array of shape {(rows, d)}, got "
                         f"{getattr(out, 'dtype', None)} {getattr(out, 'shape', None)}")
    if np.may_share_memory(out, x):
        raise GraphError("out must not overlap the input features (a hop reads every row while it writes)")
    return out


def _scales(graph: CSRGraph, r: float, scales: Scales | None) -> Scales:
    if scales is None:
        return normalization(graph, r)
    row_scale, col_scale = scales
    if row_scale.shape != (graph.num_nodes,) or col_scale.shape != (graph.num_nodes,):
        raise GraphError(f"scales must be two float32 vectors of length {graph.num_nodes} (from normalization), "
                         f"got shapes {row_scale.shape} and {col_scale.shape}")
    return row_scale.astype(np.float32, copy=False), col_scale.astype(np.float32, copy=False)


def _bounds(cost_prefix: np.ndarray) -> np.ndarray:
    """Cut rows 0..len-1 into parallel chunks holding at most 1/P of the rows and about 1/P of the edges each;
    ``cost_prefix`` is the edge prefix sum over the rows (an indptr view)."""
    nrows = len(cost_prefix) - 1
    parts = max(1, min(nrows, _CHUNKS_PER_THREAD * numba.get_num_threads()))
    row_cuts = np.linspace(0, nrows, parts + 1).astype(np.int64)
    targets = np.linspace(float(cost_prefix[0]), float(cost_prefix[-1]), parts + 1)
    edge_cuts = np.minimum(np.searchsorted(cost_prefix, targets), nrows)
    return np.unique(np.concatenate([row_cuts, edge_cuts]))


def _hop_full(graph: CSRGraph, x: np.ndarray, scales: Scales, out: np.ndarray,
              a: float = 1.0, y: np.ndarray | None = None, b: float = 0.0) -> np.ndarray:
    """out = a * Â x + b * y over all rows (x already validated)."""
    row_scale, col_scale = scales
    _hop_range(graph.indptr, graph.indices, 0, 0, _bounds(graph.indptr), row_scale, col_scale, x, out,
               np.float32(a), x if y is None else y, np.float32(b))
    return out


# ----------------------------------------------------------------------------------------------------- public API
def normalization(graph: CSRGraph, r: float = 0.5) -> Scales:
    """``(row_scale, col_scale) = (D̃^(r-1), D̃^(-r))`` as float32 [n]; also checks every index lies in [0, n)."""
    _check_r(r)
    deg, bad = _tilde_degrees(graph.indptr, graph.indices)
    if bad:
        raise GraphError(f"{bad} neighbour indices lie outside [0, {graph.num_nodes}); the CSR does not describe "
                         f"a graph of {graph.num_nodes} nodes")
    return (deg ** (r - 1.0)).astype(np.float32), (deg ** -r).astype(np.float32)


def propagate(graph: CSRGraph, x: np.ndarray, r: float = 0.5, out: np.ndarray | None = None,
              scales: Scales | None = None) -> np.ndarray:
    """One hop ``Â x`` for float32 ``x`` [n, d]; pass ``scales=normalization(graph, r)`` to reuse them over hops."""
    x = _features(x, graph.num_nodes, "x")
    return _hop_full(graph, x, _scales(graph, r, scales), _output(out, graph.num_nodes, x.shape[1], x))


def propagate_rows(graph: CSRGraph, x_source: np.ndarray, rows: slice | np.ndarray, r: float = 0.5,
                   out: np.ndarray | None = None, scales: Scales | None = None) -> np.ndarray:
    """Rows ``rows`` of ``Â x_source`` (``x_source`` holds all n rows of the previous hop): [len(rows), d]."""
    x = _features(x_source, graph.num_nodes, "x_source")
    row_scale, col_scale = _scales(graph, r, scales)
    n = graph.num_nodes
    if isinstance(rows, slice):
        lo, hi, step = rows.indices(n)
        if step != 1:
            return propagate_rows(graph, x, np.arange(lo, hi, step, dtype=np.int64), r, out, (row_scale, col_scale))
        hi = max(lo, hi)
        out = _output(out, hi - lo, x.shape[1], x)
        _hop_range(graph.indptr, graph.indices, lo, lo, _bounds(graph.indptr[lo:hi + 1]), row_scale, col_scale,
                   x, out, np.float32(1.0), x, np.float32(0.0))
        return out
    if not isinstance(rows, np.ndarray) or rows.dtype != np.int64 or rows.ndim != 1:
        raise GraphError(f"rows must be a slice or a 1-D int64 array, got {getattr(rows, 'dtype', type(rows))}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise GraphError(f"rows must lie in [0, {n}), got values from {rows.min()} to {rows.max()}")
    out = _output(out, len(rows), x.shape[1], x)
    prefix = np.concatenate([[0], np.cumsum(graph.indptr[rows + 1] - graph.indptr[rows])])
    _hop_list(graph.indptr, graph.indices, rows, _bounds(prefix), row_scale, col_scale, x, out)
    return out


@dataclass(frozen=True)
class PartitionBlock:
    """What a worker owning graph rows [lo, hi) needs to compute its rows of every hop from gathered source rows.

    ``sources``: global ids whose previous-hop rows to pull, the own rows ``lo..hi-1`` first, then the halo
    ascending; ``indptr``/``indices``: the rows' CSR rebased to 0 with indices remapped to positions in
    ``sources``; ``row_scale`` [hi-lo] and ``col_scale`` [len(sources)]: the normalization for those positions.
    """

    lo: int
    hi: int
    sources: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    row_scale: np.ndarray
    col_scale: np.ndarray


def _check_range(graph: CSRGraph, lo: int, hi: int) -> None:
    if not 0 <= lo <= hi <= graph.num_nodes:
        raise GraphError(f"partition range [{lo}, {hi}) must satisfy 0 <= lo <= hi <= {graph.num_nodes}")


def _halo(graph: CSRGraph, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bitmap of halo ids, per-word rank of the bitmap, halo ids ascending) for rows [lo, hi): O(edges + n/64)."""
    _check_range(graph, lo, hi)
    bits = np.zeros((graph.num_nodes + 63) // 64, np.uint64)
    _mark_halo(graph.indices, graph.indptr[lo], graph.indptr[hi], lo, hi, bits)
    counts = np.bitwise_count(bits).astype(np.int64)
    word_rank = np.cumsum(counts) - counts
    return bits, word_rank, _bitmap_ids(bits, word_rank, int(counts.sum()))


def needed_sources(graph: CSRGraph, lo: int, hi: int) -> np.ndarray:
    """int64 ids of the previous-hop rows that rows [lo, hi) read: ``lo..hi-1`` first, then the halo ascending."""
    return np.concatenate([np.arange(lo, hi, dtype=np.int64), _halo(graph, lo, hi)[2]])


def partition_block(graph: CSRGraph, lo: int, hi: int, r: float = 0.5, scales: Scales | None = None) -> PartitionBlock:
    """The gathered-block plan of rows [lo, hi), built once per partition and reused for every hop."""
    row_scale, col_scale = _scales(graph, r, scales)
    bits, word_rank, halo = _halo(graph, lo, hi)
    e0, e1 = int(graph.indptr[lo]), int(graph.indptr[hi])
    local = np.empty(e1 - e0, np.int64)
    _remap(graph.indices, e0, e1, lo, hi, bits, word_rank, local)
    sources = np.concatenate([np.arange(lo, hi, dtype=np.int64), halo])
    return PartitionBlock(lo, hi, sources, graph.indptr[lo:hi + 1] - e0, local,
                          row_scale[lo:hi].copy(), col_scale[sources])


def propagate_block(block: PartitionBlock, x_sources: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``X^(l)[lo:hi]`` from ``x_sources = X^(l-1)[block.sources]`` (rows in that order): [hi-lo, d]."""
    x = _features(x_sources, len(block.sources), "x_sources")
    out = _output(out, block.hi - block.lo, x.shape[1], x)
    _hop_range(block.indptr, block.indices, 0, 0, _bounds(block.indptr), block.row_scale, block.col_scale,
               x, out, np.float32(1.0), x, np.float32(0.0))
    return out


def hops(graph: CSRGraph, x: np.ndarray, k: int, r: float = 0.5) -> list[np.ndarray]:
    """``[X^(0), X^(1), ..., X^(k)]`` with ``X^(l) = Â X^(l-1)`` (k+1 arrays; ``X^(0)`` is ``x`` itself)."""
    _check_hops(k)
    x = _features(x, graph.num_nodes, "x")
    scales = _scales(graph, r, None)
    out = [x]
    for _ in range(k):
        out.append(_hop_full(graph, out[-1], scales, np.empty_like(x)))
    return out


def train_one_hot(labels: np.ndarray, train_idx: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [len(train_idx), num_classes]: the training nodes' one-hot labels, after checking ids and classes;
    only these rows, so callers that need no [n, C] array (the trainer's seed) never allocate one."""
    labels, train_idx = np.asarray(labels), np.asarray(train_idx)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise GraphError(f"labels must be a 1-D integer array with one entry per node, got {labels.dtype} "
                         f"{labels.shape}")
    if train_idx.ndim != 1 or not np.issubdtype(train_idx.dtype, np.integer):
        raise GraphError(f"train_idx must be a 1-D integer array of node ids, got {train_idx.dtype}")
    n = len(labels)
    if len(train_idx) and (train_idx.min() < 0 or train_idx.max() >= n):
        raise GraphError(f"train_idx must lie in [0, {n}), got values from {train_idx.min()} to {train_idx.max()}")
    seen = labels[train_idx]
    if len(seen) and (seen.min() < 0 or seen.max() >= num_classes):
        raise GraphError(f"training labels must lie in [0, {num_classes}), got values from {seen.min()} to "
                         f"{seen.max()}")
    rows = np.zeros((len(train_idx), num_classes), np.float32)
    rows[np.arange(len(train_idx)), seen] = 1.0
    return rows


def label_seed(labels: np.ndarray, train_idx: np.ndarray, num_classes: int) -> np.ndarray:
    """``Ŷ^(0)``: float32 [n, num_classes], one-hot rows for the training nodes and zeros elsewhere."""
    rows = train_one_hot(labels, train_idx, num_classes)
    y = np.zeros((len(labels), num_classes), np.float32)
    y[np.asarray(train_idx)] = rows
    return y


def label_hops(graph: CSRGraph, labels: np.ndarray, train_idx: np.ndarray, num_classes: int, k: int,
               r: float = 0.5) -> list[np.ndarray]:
    """``[Ŷ^(0), ..., Ŷ^(k)]``, ``Ŷ^(0) = label_seed(...)`` and ``Ŷ^(l+1) = Â Ŷ^(l)``."""
    _check_hops(k)
    if len(labels) != graph.num_nodes:
        raise GraphError(f"labels has {len(labels)} entries but the graph has {graph.num_nodes} nodes")
    return hops(graph, label_seed(labels, train_idx, num_classes), k, r)


def ppr(graph: CSRGraph, x: np.ndarray, alpha: float = 0.15, iters: int = 10, r: float = 0.5) -> list[np.ndarray]:
    """Personalized PageRank with teleport ``alpha`` (APPNP): ``Z^(t+1) = (1-alpha) Â Z^(t) + alpha X``,
    ``Z^(0) = X``; returns ``[Z^(0), ..., Z^(iters)]`` so each iterate can serve as one step's feature."""
    _check_hops(iters)
    if not 0.0 <= alpha <= 1.0:
        raise GraphError(f"teleport probability alpha must lie in [0, 1], got {alpha}")
    x = _features(x, graph.num_nodes, "x")
    scales = _scales(graph, r, None)
    out = [x]
    for _ in range(iters):
        out.append(_hop_full(graph, out[-1], scales, np.empty_like(x), 1.0 - alpha, x, alpha))
    return out


def _weighted_hop_sum(graph: CSRGraph, x: np.ndarray, weights: list[float], r: float) -> np.ndarray:
    """``Σ_l weights[l] Â^l x`` keeping only two hop buffers, whatever the number of hops."""
    x = _features(x, graph.num_nodes, "x")
    scales = _scales(graph, r, None)
    total = weights[0] * x
    current, spare = x, np.empty_like(x)
    for w in weights[1:]:
        nxt = _hop_full(graph, current, scales, spare)
        total += np.float32(w) * nxt
        spare = current if current is not x else np.empty_like(x)
        current = nxt
    return total


def s2gc(graph: CSRGraph, x: np.ndarray, k: int, alpha: float = 0.05, r: float = 0.5) -> np.ndarray:
    """S²GC (Zhu & Koniusz, ICLR'21): ``(1/k) Σ_{l=1..k} ((1-alpha) Â^l X + alpha X)``."""
    _check_hops(k)
    return _weighted_hop_sum(graph, x, [alpha] + [(1.0 - alpha) / k] * k, r)


def heat_kernel(graph: CSRGraph, x: np.ndarray, t: float = 3.0, k: int = 10, r: float = 0.5) -> np.ndarray:
    """Heat-kernel diffusion truncated at k hops: ``e^(-t) Σ_{l=0..k} t^l / l! Â^l X`` (GDC/HKPR style)."""
    _check_hops(k)
    if t <= 0:
        raise GraphError(f"diffusion time t must be positive, got {t}")
    return _weighted_hop_sum(graph, x, [math.exp(-t) * t ** l / math.factorial(l) for l in range(k + 1)], r)
