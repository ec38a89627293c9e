"""A worker's rows of ``Â`` cut by source range, so that one hop streams the previous level through bounded tiles.

Hop ``l`` of rows ``[lo, hi)`` reads ``X^(l-1)`` of every source those rows list. On a graph without locality that
is nearly every node, whatever the range: gathering them at once holds about ``n`` rows, and gathering them per
block of destination rows pulls the same halo again for every block (about ``n²/block`` rows a hop). Tiles do
neither. Tile ``t`` holds the entries of ``Ã[lo:hi]`` (the ``+I`` included) whose source lies in
``[t·S, (t+1)·S)``, as (row, position among the tile's distinct sources) pairs with rows ascending. A hop keeps
one float32 accumulator for the worker's rows, pulls each tile's distinct sources once (at most ``S`` rows),
adds the tile's entries into the accumulator, and applies the row scale at the end. Every source row is read at
most once per hop per worker, and memory is the accumulator, 8 bytes per entry, and the pulled tile rows.

    tiles = source_tiles(graph, lo, hi, tile_rows=1 << 19, r=0.5)
    acc = tiles.accumulator(dim)
    for t in tiles.nonempty():
        tiles.add(t, x_prev[tiles.sources(t)], acc)     # on a cluster: rows pulled from the PS
    rows = tiles.finish(acc)                             # X^(l)[lo:hi]
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from seraphim.algorithms.gnn.csr import CSRGraph, GraphError
from seraphim.algorithms.gnn.propagation import PREFETCH_EDGES, Scales, normalization, prefetch_line

__all__ = ["SourceTiles", "source_tiles"]

_CHUNKS_PER_THREAD = 8  #: parallel pieces of a tile per thread, cut where a row ends


@njit(cache=True, nogil=True)
def _ones(v):  # pragma: no cover - compiled
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (v * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, nogil=True)
def _count(indptr, indices, lo, hi, tile_rows, counts):  # pragma: no cover - compiled
    """Entries of Ã[lo:hi] per source tile: each row's own +I once, its listed sources except itself."""
    for i in range(lo, hi):
        counts[i // tile_rows] += 1
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j != i:
                counts[j // tile_rows] += 1


@njit(cache=True, nogil=True)
def _scatter(indptr, indices, lo, hi, tile_rows, cursor, rows, offsets):  # pragma: no cover - compiled
    """Each entry into its tile's slice as (row - lo, source offset inside the tile); rows ascend in every tile."""
    for i in range(lo, hi):
        t = i // tile_rows
        k = cursor[t]
        rows[k], offsets[k] = i - lo, i - t * tile_rows
        cursor[t] = k + 1
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j != i:
                t = j // tile_rows
                k = cursor[t]
                rows[k], offsets[k] = i - lo, j - t * tile_rows
                cursor[t] = k + 1


@njit(cache=True, nogil=True)
def _mark(offsets, k0, k1, words):  # pragma: no cover - compiled
    bits = np.zeros(words, np.uint64)
    for k in range(k0, k1):
        o = offsets[k]
        bits[o >> 6] |= np.uint64(1) << np.uint64(o & 63)
    return bits


@njit(cache=True, nogil=True, parallel=True)
def _distinct(ptr, offsets, tile_rows, counts):  # pragma: no cover - compiled
    """Distinct sources per tile."""
    words = (tile_rows + 63) // 64
    for t in prange(len(ptr) - 1):
        bits = _mark(offsets, ptr[t], ptr[t + 1], words)
        c = 0
        for w in range(words):
            c += _ones(bits[w])
        counts[t] = c


@njit(cache=True, nogil=True, parallel=True)
def _localize(ptr, offsets, tile_rows, needed_ptr, needed):  # pragma: no cover - compiled
    """Every tile's distinct source ids, ascending, into needed; each offset becomes the position of its source
    among them (its rank in the tile's bitmap)."""
    words = (tile_rows + 63) // 64
    for t in prange(len(ptr) - 1):
        bits = _mark(offsets, ptr[t], ptr[t + 1], words)
        rank = np.empty(words, np.int64)
        running = 0
        base = needed_ptr[t]
        for w in range(words):
            rank[w] = running
            v = bits[w]
            b = 0
            while v != 0:
                if v & np.uint64(1):
                    needed[base + running] = t * tile_rows + (w << 6) + b
                    running += 1
                v >>= np.uint64(1)
                b += 1
        for k in range(ptr[t], ptr[t + 1]):
            o = offsets[k]
            below = bits[o >> 6] & ((np.uint64(1) << np.uint64(o & 63)) - np.uint64(1))
            offsets[k] = rank[o >> 6] + np.int64(_ones(below))


@njit(cache=True, nogil=True, parallel=True)
def _add(rows, cols, cuts, scale, x, acc):  # pragma: no cover - compiled
    """acc[rows[k]] += scale[cols[k]] * x[cols[k]] for every entry. A row's entries are summed in a private buffer
    and added to acc once; the source rows PREFETCH_EDGES entries ahead are prefetched (they are random reads
    over the tile, as in propagation's kernel). Pieces end where a row ends, so no two threads write one row."""
    d = x.shape[1]
    for c in prange(len(cuts) - 1):
        buf = np.empty(d, np.float32)
        k, end = cuts[c], cuts[c + 1]
        while k < end:
            r = rows[k]
            buf[:] = 0.0
            while k < end and rows[k] == r:
                if k + PREFETCH_EDGES < end:
                    ahead = cols[k + PREFETCH_EDGES]
                    for f in range(0, d, 16):
                        prefetch_line(x[ahead, f:])
                q = cols[k]
                w = scale[q]
                for f in range(d):
                    buf[f] += w * x[q, f]
                k += 1
            for f in range(d):
                acc[r, f] += buf[f]


@dataclass(frozen=True)
class SourceTiles:
    """The entries of ``Ã[lo:hi]`` by source tile (see the module docstring). Tile ``t``'s entries are
    ``rows[ptr[t]:ptr[t+1]]`` (row minus ``lo``, ascending) and ``cols[...]`` (positions in ``sources(t)``);
    ``source_scale`` is ``D̃^(-r)`` at those sources and ``row_scale`` ``D̃^(r-1)`` at the rows."""

    lo: int
    hi: int
    tile_rows: int
    ptr: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    needed_ptr: np.ndarray
    needed: np.ndarray
    source_scale: np.ndarray
    row_scale: np.ndarray

    @property
    def count(self) -> int:
        return len(self.ptr) - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ptr, self.rows, self.cols, self.needed_ptr, self.needed,
                                      self.source_scale, self.row_scale))

    def nonempty(self) -> list[int]:
        """The tiles holding entries, in source order."""
        return [t for t in range(self.count) if self.ptr[t + 1] > self.ptr[t]]

    def sources(self, t: int) -> np.ndarray:
        """int64 ids whose previous-level rows tile ``t`` reads, ascending."""
        return self.needed[self.needed_ptr[t]:self.needed_ptr[t + 1]]

    def accumulator(self, dim: int) -> np.ndarray:
        return np.zeros((self.hi - self.lo, dim), np.float32)

    def add(self, t: int, x_sources: np.ndarray, acc: np.ndarray) -> None:
        """Add tile ``t``'s entries into ``acc`` [hi-lo, d], given ``x_sources`` = previous level at sources(t)."""
        want = (self.needed_ptr[t + 1] - self.needed_ptr[t], acc.shape[1])
        if x_sources.shape != want or x_sources.dtype != np.float32:
            raise GraphError(f"tile {t} needs float32 rows of shape {want} (its sources, in order), got "
                             f"{x_sources.dtype} {x_sources.shape}")
        k0, k1 = int(self.ptr[t]), int(self.ptr[t + 1])
        rows = self.rows[k0:k1]
        parts = max(1, min(k1 - k0, _CHUNKS_PER_THREAD * numba.get_num_threads()))
        targets = np.linspace(0, k1 - k0, parts + 1).astype(np.int64)[1:-1]
        cuts = np.unique(np.concatenate([[0], np.searchsorted(rows, rows[targets]), [k1 - k0]]))
        scale = self.source_scale[self.needed_ptr[t]:self.needed_ptr[t + 1]]
        _add(rows, self.cols[k0:k1], cuts, scale, np.ascontiguousarray(x_sources), acc)

    def finish(self, acc: np.ndarray) -> np.ndarray:
        """``X^(l)[lo:hi]`` from the summed tiles (scaled in place)."""
        acc *= self.row_scale[:, None]
        return acc


def source_tiles(graph: CSRGraph, lo: int, hi: int, tile_rows: int, r: float = 0.5,
                 scales: Scales | None = None) -> SourceTiles:
    """The tiles of rows ``[lo, hi)`` for sources cut every ``tile_rows`` ids: built once, read every hop."""
    if not 0 <= lo <= hi <= graph.num_nodes:
        raise GraphError(f"partition range [{lo}, {hi}) must satisfy 0 <= lo <= hi <= {graph.num_nodes}")
    if not 1 <= tile_rows < 2**31:
        raise GraphError(f"tile_rows must lie in [1, 2^31), got {tile_rows}")
    row_scale, col_scale = normalization(graph, r) if scales is None else scales
    tiles = max(1, -(-graph.num_nodes // tile_rows))
    counts = np.zeros(tiles, np.int64)
    _count(graph.indptr, graph.indices, lo, hi, tile_rows, counts)
    ptr = np.zeros(tiles + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    rows, cols = np.empty(ptr[-1], np.int32), np.empty(ptr[-1], np.int32)
    _scatter(graph.indptr, graph.indices, lo, hi, tile_rows, ptr[:-1].copy(), rows, cols)
    _distinct(ptr, cols, tile_rows, counts)
    needed_ptr = np.zeros(tiles + 1, np.int64)
    np.cumsum(counts, out=needed_ptr[1:])
    needed = np.empty(needed_ptr[-1], np.int64)
    _localize(ptr, cols, tile_rows, needed_ptr, needed)
    return SourceTiles(lo, hi, tile_rows, ptr, rows, cols, needed_ptr, needed,
                       np.ascontiguousarray(col_scale[needed], np.float32),
                       np.ascontiguousarray(row_scale[lo:hi], np.float32))
