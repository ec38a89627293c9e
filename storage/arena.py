"""The RAM tier: one preallocated pool of page frames with access counts, use ticks, dirty flags and write sequences.

No I/O and no locking here: the ShardStore holds its lock around every call. Allocating the whole budget
once (``np.empty((n_frames, page_bytes))``) keeps RSS bounded by the budget and frames addressable by index,
so that residency, eviction and dirty tracking are plain vectorized numpy over per-frame arrays.

Replacement is frequency-first (LFU with aging): each frame carries its page's access count (the table keeps
the counts of all its pages, resident or not, so a page that comes back remembers its popularity) and the last
op tick that touched it. Victims are the unpinned frames with the smallest count, the least recently used among
equal counts. Under the skewed, independent-reference access of embedding tables this keeps the pages that are
hit often, where LRU keeps whatever was touched last and lets one-off pages push warm ones out.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MIN_FRAMES = 2  # a row never spans pages, so two frames always make progress (one op chunk at a time)
MAX_COUNT = np.iinfo(np.uint16).max  # counts saturate there; aging halves them long before in practice
_TICK_BITS = 40  # eviction key = count << 40 | tick: ticks (one per op) stay below 2**40 for decades of ops
_PINNED_KEY = np.iinfo(np.int64).max


@njit(cache=True)
def _eviction_keys(count, tick, now, out):
    """count << 40 | tick per frame (free frames -1, frames pinned by the op at tick `now` int64 max)."""
    for f in range(count.shape[0]):
        t = tick[f]
        if t < 0:
            out[f] = -1
        elif t == now:
            out[f] = _PINNED_KEY
        else:
            out[f] = (np.int64(count[f]) << _TICK_BITS) | t


class PageArena:
    """Frames of page_bytes each; a frame is free (owner_tid -1) or holds one page of one table."""

    def __init__(self, ram_bytes: int, page_bytes: int) -> None:
        if page_bytes < 1:
            raise ValueError(f"page_bytes must be >= 1, got {page_bytes}")
        n_frames = ram_bytes // page_bytes
        if n_frames < MIN_FRAMES:
            raise ValueError(
                f"ram_bytes={ram_bytes} holds {n_frames} page(s) of page_bytes={page_bytes}; "
                f"the minimum is {MIN_FRAMES} pages, i.e. ram_bytes >= {MIN_FRAMES * page_bytes}"
            )
        self.page_bytes = page_bytes
        self.n_frames = n_frames
        self.data = np.empty((n_frames, page_bytes), dtype=np.uint8)
        self.owner_tid = np.full(n_frames, -1, dtype=np.int32)
        self.owner_page = np.full(n_frames, -1, dtype=np.int64)
        self.tick = np.full(n_frames, -1, dtype=np.int64)  # last op that used the frame; -1 free
        self.count = np.zeros(n_frames, dtype=np.uint16)  # the owning page's access count (copy of the table's)
        self.dirty = np.zeros(n_frames, dtype=np.bool_)
        self.seq = np.zeros(n_frames, dtype=np.int64)  # write sequence of the frame's newest modification
        self._keys = np.empty(n_frames, dtype=np.int64)  # scratch for eviction keys
        self.now = 0
        self.last_seq = 0
        self.evictions = 0

    def next_tick(self) -> int:
        self.now += 1
        return self.now

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def eviction_keys(self) -> np.ndarray:
        """Per frame, smaller = evicted sooner: free frames first, then by (count, tick); frames pinned by the
        current op sort last. The array is scratch space, valid until the next call."""
        _eviction_keys(self.count, self.tick, self.now, self._keys)
        return self._keys

    def coldest_dirty(self, zone: int, k: int) -> tuple[np.ndarray, bool]:
        """Up to k dirty frames among the `zone` coldest (the next victims), coldest first; and whether more
        dirty frames than that wait in the zone."""
        keys = self.eviction_keys()
        coldest = np.argpartition(keys, zone - 1)[:zone]
        dirty = coldest[self.dirty[coldest]]
        if dirty.shape[0] > k:
            dirty = dirty[np.argpartition(keys[dirty], k - 1)[:k]]
            return dirty[np.argsort(keys[dirty])], True
        return dirty[np.argsort(keys[dirty])], False

    def victims(self, k: int, n_pinned: int) -> np.ndarray:
        """k frames to reuse: clean ones first among the 2k coldest, then the coldest dirty ones.

        Preferring a slightly warmer clean frame over a dirty one spares a page write (and the op its copy into
        the write stage). Frames stamped with the current tick are pinned by the running op (n_pinned of them):
        their keys sort last and the window stops at the unpinned count, so it never reaches them.
        """
        keys = self.eviction_keys()
        size = min(2 * k, self.n_frames - n_pinned)
        window = np.argpartition(keys, size - 1)[:size]
        order = np.lexsort((keys[window], self.dirty[window]))
        return window[order[:k]]

    def assign(self, frames: np.ndarray, tid: int, pages: np.ndarray, counts: np.ndarray, tick: int) -> None:
        self.owner_tid[frames] = tid
        self.owner_page[frames] = pages
        self.count[frames] = counts
        self.tick[frames] = tick
        self.dirty[frames] = False

    def release(self, frames: np.ndarray) -> None:
        self.owner_tid[frames] = -1
        self.owner_page[frames] = -1
        self.count[frames] = 0
        self.tick[frames] = -1
        self.dirty[frames] = False

    def clear_written(self, frames: np.ndarray, tids: np.ndarray, pages: np.ndarray, seqs: np.ndarray) -> None:
        """Mark frames clean if they still hold the same page at the same write sequence as the copy written."""
        same = (self.owner_tid[frames] == tids) & (self.owner_page[frames] == pages) & (self.seq[frames] == seqs)
        self.dirty[frames[same]] = False
