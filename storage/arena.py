"""The RAM tier: one preallocated pool of page frames with LRU ticks, dirty flags and write sequences.

No I/O and no locking here: the ShardStore holds its lock around every call. Allocating the whole budget
once (``np.empty((n_frames, page_bytes))``) keeps RSS bounded by the budget and frames addressable by index,
so that residency, eviction and dirty tracking are plain vectorized numpy over per-frame arrays.
"""

from __future__ import annotations

import numpy as np

MIN_FRAMES = 2  # a row never spans pages, so two frames always make progress (one op chunk at a time)


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
        self.tick = np.full(n_frames, -1, dtype=np.int64)  # last use; free frames at -1 are chosen first
        self.dirty = np.zeros(n_frames, dtype=np.bool_)
        self.seq = np.zeros(n_frames, dtype=np.int64)  # write sequence of the frame's newest modification
        self.now = 0
        self.last_seq = 0
        self.evictions = 0

    def next_tick(self) -> int:
        self.now += 1
        return self.now

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def lru(self, k: int) -> np.ndarray:
        """The k least recently used frames (free ones first), in no particular order."""
        return np.argpartition(self.tick, k - 1)[:k]

    def oldest(self, frames: np.ndarray, k: int) -> np.ndarray:
        """The k least recently used of `frames`, in no particular order."""
        return frames[np.argpartition(self.tick[frames], k - 1)[:k]]

    def victims(self, k: int, n_pinned: int) -> np.ndarray:
        """k frames to reuse: clean ones first among the 2k least recently used, then the oldest dirty ones.

        Preferring a slightly younger clean frame over a dirty one spares the op a synchronous write (and a
        wait for the background writer's transaction). Frames stamped with the current tick are pinned by the
        running op (n_pinned of them); the window never reaches them since it stops at the unpinned count.
        """
        window = self.lru(min(2 * k, self.n_frames - n_pinned))
        order = np.lexsort((self.tick[window], self.dirty[window]))
        return window[order[:k]]

    def assign(self, frames: np.ndarray, tid: int, pages: np.ndarray, tick: int) -> None:
        self.owner_tid[frames] = tid
        self.owner_page[frames] = pages
        self.tick[frames] = tick
        self.dirty[frames] = False

    def release(self, frames: np.ndarray) -> None:
        self.owner_tid[frames] = -1
        self.owner_page[frames] = -1
        self.tick[frames] = -1
        self.dirty[frames] = False

    def clear_written(self, frames: np.ndarray, tids: np.ndarray, pages: np.ndarray, seqs: np.ndarray) -> None:
        """Mark frames clean if they still hold the same page at the same write sequence as the copy written."""
        same = (self.owner_tid[frames] == tids) & (self.owner_page[frames] == pages) & (self.seq[frames] == seqs)
        self.dirty[frames[same]] = False
