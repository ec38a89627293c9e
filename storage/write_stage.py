"""Write-behind for evicted dirty pages: their bytes wait here for the background writer's commit, so an eviction
costs one memcpy on the op's path instead of an LMDB write (about 0.5 vs 3 us a 4 KiB page here).

Two append-only buffers: ops append to `filling`; the writer takes it as `flying`, commits it outside the store
lock and then releases it (`landed`). Rows are never overwritten while a buffer is in use: a page staged again
gets a new row, the index points at its newest copy, and LmdbTier.commit keeps the newest sequence of a page
that appears twice. Reads of a missing page look here before LMDB, newest copy first, until its commit landed.
No locking here: the ShardStore calls every method under its lock.
"""

from __future__ import annotations

import numpy as np

from seraphim.storage.lmdb_tier import PageWrites
from seraphim.storage.page_kernels import frame_views


class _Buffer:
    """Staged page copies: bytes, owner table, page number and write sequence of each row, plus (tid, page) -> row."""

    def __init__(self, capacity: int, page_bytes: int) -> None:
        self.data = np.empty((capacity, page_bytes), dtype=np.uint8)
        self.tids = np.empty(capacity, dtype=np.int32)
        self.pages = np.empty(capacity, dtype=np.int64)
        self.seqs = np.empty(capacity, dtype=np.int64)
        self.row_of: dict[tuple[int, int], int] = {}
        self.n = 0

    def writes(self) -> PageWrites:
        """The staged rows as page writes over views of the buffer (valid while the buffer is not reused)."""
        rows = np.arange(self.n)
        return PageWrites(self.tids[: self.n], self.pages[: self.n], self.seqs[: self.n], frame_views(self.data, rows))

    def clear(self) -> None:
        self.row_of.clear()
        self.n = 0


class WriteStage:
    """Evicted dirty pages between their eviction and their commit (2 * capacity pages of RAM beyond the arena)."""

    def __init__(self, capacity: int, page_bytes: int) -> None:
        if capacity < 1:
            raise ValueError(f"WriteStage capacity must be >= 1 page, got {capacity}")
        self.capacity = capacity
        self._filling = _Buffer(capacity, page_bytes)
        self._flying = _Buffer(capacity, page_bytes)
        self._in_flight = False

    def room(self) -> int:
        """Pages that put() can take now."""
        return self.capacity - self._filling.n

    def put(self, tids: np.ndarray, pages: np.ndarray, seqs: np.ndarray, src: np.ndarray, frames: np.ndarray) -> None:
        """Stage copies of frames `frames` of `src` (pages of tables `tids` at write sequences `seqs`)."""
        buf = self._filling
        k = frames.shape[0]
        if k > self.capacity - buf.n:
            raise ValueError(
                f"WriteStage.put of {k} pages exceeds the room left ({self.capacity - buf.n}); check room() first"
            )
        rows = np.arange(buf.n, buf.n + k)
        buf.data[rows] = src[frames]
        buf.tids[rows] = tids
        buf.pages[rows] = pages
        buf.seqs[rows] = seqs
        buf.row_of.update(zip(zip(tids.tolist(), pages.tolist()), rows.tolist()))
        buf.n += k

    def read_into(
        self, tid: int, pages: np.ndarray, stored_seqs: np.ndarray, dst: np.ndarray, frames: np.ndarray
    ) -> np.ndarray:
        """Copy the newest staged copy of each of `pages` into frames of `dst` where it is newer than the copy
        LMDB holds (`stored_seqs`: a direct write may have stored a newer one); returns the mask of pages copied."""
        found = np.zeros(pages.shape[0], dtype=np.bool_)
        decided = np.zeros(pages.shape[0], dtype=np.bool_)  # the newest staged copy was seen (used or stale)
        for buf in (self._filling, self._flying) if self._in_flight else (self._filling,):
            if not buf.row_of:
                continue
            look = np.flatnonzero(~decided & np.isin(pages, buf.pages[: buf.n]))  # vectorized pre-filter
            rows = np.array([buf.row_of.get((tid, p), -1) for p in pages[look].tolist()], dtype=np.int64)
            hit = rows >= 0
            use = hit.copy()
            use[hit] = buf.seqs[rows[hit]] > stored_seqs[look[hit]]
            dst[frames[look[use]]] = buf.data[rows[use]]
            found[look[use]] = True
            decided[look[hit]] = True
        return found

    def take(self) -> PageWrites | None:
        """For the writer: the filling buffer's pages to commit (None when empty or a commit is in flight)."""
        if self._in_flight or self._filling.n == 0:
            return None
        self._filling, self._flying = self._flying, self._filling
        self._in_flight = True
        return self._flying.writes()

    def landed(self) -> None:
        """The writer's commit of the taken pages finished: their rows may be reused."""
        self._flying.clear()
        self._in_flight = False

    def pending(self) -> list[PageWrites]:
        """Every staged page not known to be committed, oldest buffer first (views: commit before releasing
        the store lock, or copy)."""
        bufs = [self._flying] if self._in_flight else []
        return [buf.writes() for buf in bufs + [self._filling] if buf.n]

    def clear_filling(self) -> None:
        """The filling buffer's pages were committed by the caller (under the store lock)."""
        self._filling.clear()
