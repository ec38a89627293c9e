"""One PS shard's storage: a RAM page arena (byte budget, LFU, pinning, dirty write-back) over one LMDB env.

Rows live in fixed-size pages (row r: page r // rows_per_page, offset r % rows_per_page). Hot pages sit in
the arena's frames; cold pages live in LMDB. A table may be many times larger than the RAM budget: only a
sparse table's key index (KeyIndex, about 24 bytes per key) must fit in RAM, never its rows.

Concurrency: one RLock per store guards the arena and the tables; every operation holds it for a short,
vectorized critical section (numba kernels and numpy fancy indexing over the request, a loop only over
missing pages). Page reads happen under it (LMDB reads are MVCC and never wait for the writer).

Write-behind: an evicted dirty page is copied into the WriteStage (a memcpy) and its frame reused at once;
the background writer, woken by the eviction, commits the staged pages outside the lock, in parallel with
the next ops. A page missed while staged is read back from the stage. Only victims that do not fit in
the stage (the writer is a whole stage behind, or one op evicts more than a stage holds) are written by
the op itself, under the lock. With the stage empty, the writer cleans the coldest eighth of the arena
ahead of eviction (eviction prefers clean frames, which then need neither a copy nor a write), one batch
at a time, until that zone is clean; then it sleeps until the next eviction. On the storage benchmark this
pair beat synchronous eviction writes, staging alone and cleaning alone (cleaning alone makes ops wait for
the writer's in-flight batch holding their victims). Hot pages are not written between snapshots unless
evicted: they reach LMDB at snapshot, flush or close.

Replacement (see arena.py): evict the smallest access count, then the least recently used. Every table keeps
a uint16 count per page, resident or not (2 bytes a page, beside the 16 of page_frame and stamp), bumped once
per op that touches the page; all counts are halved every AGE_PERIOD * n_frames counted accesses, so a page
that cooled down loses its rank after a few periods instead of holding its frame forever.

Lock order: the store lock may be held while taking the LMDB write lock (eviction, snapshot, strict
create/drop), never the reverse, so the two cannot deadlock.

Pinning: the frames an operation touches carry the op's tick, which eviction skips, so an operation never
evicts its own pages. An operation touching more distinct pages than the arena holds runs in chunks of
pages that fit.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from seraphim.storage.arena import PageArena
from seraphim.storage.key_index import KeyIndex
from seraphim.storage.lmdb_tier import DURABILITY, KEY_CHUNK, LmdbTier, PageWrites, TableRecord, encode_header
from seraphim.storage.page_kernels import frame_views, gather_rows, pin_pages, scatter_rows, slots_of_pages
from seraphim.storage.write_stage import WriteStage

#: (slots int64 [n], their keys int64 [n] for a sparse table or None for a dense one) -> rows uint8 [n, row_bytes],
#: the new rows' initial contents; a sparse row's key lets them be the same whatever order rows are made in
InitRows = Callable[[np.ndarray, np.ndarray | None], np.ndarray]

WRITE_BATCH_BYTES = 4 << 20  # pages copied per lock hold by write-back: bounds how long readers wait
STAGE_BYTES = 4 << 20  # each of the WriteStage's two buffers: at most this and 1/16 of the budget (>= 1 page)
AGE_PERIOD = 32  # counts halve every AGE_PERIOD * n_frames counted page accesses (memory of a few periods)
STORE_STATS = "_store"


@dataclass(eq=False)
class _Table:
    tid: int
    name: str
    row_bytes: int
    dense_rows: int | None
    meta: bytes
    init_rows: InitRows | None
    rows_per_page: int
    index: KeyIndex | None
    page_frame: np.ndarray  # page -> arena frame, -1 when not resident
    stamp: np.ndarray  # page -> id of the last op that counted it (distinct-page detection in O(n))
    count: np.ndarray  # page -> access count (uint16, aged), resident or not: the LFU rank
    hits: int = 0
    misses: int = 0

    @property
    def n_slots(self) -> int:
        return self.dense_rows if self.index is None else len(self.index)

    def ensure_pages(self, n_pages: int) -> None:
        if n_pages > self.page_frame.shape[0]:
            size = max(n_pages, 2 * self.page_frame.shape[0])
            grow = size - self.page_frame.shape[0]
            self.page_frame = np.concatenate([self.page_frame, np.full(grow, -1, dtype=np.int64)])
            self.stamp = np.concatenate([self.stamp, np.zeros(grow, dtype=np.int64)])
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.uint16)])


class ShardStore:
    """One PS shard's storage: RAM page arena (byte budget, LFU, pinning, dirty write-back) over one LMDB environment.

    Durability "snapshot": snapshot(clock) is a consistent cut; a crash at any moment recovers exactly the
    last snapshot (an undo log rolls back pages written after it). A clean close() does not snapshot: call
    snapshot() first to keep the latest state. Durability "strict": scatter, update and resolve(create=True)
    return only once their pages (and new keys) are committed in a synced transaction; recovery gives the
    latest acknowledged state and the last clock given to record_clock() or snapshot().
    """

    def __init__(
        self,
        path: str | os.PathLike,
        ram_bytes: int,
        page_bytes: int = 1 << 20,
        durability: str = "snapshot",
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}, got {durability!r}")
        self._path = str(path)
        self._arena = PageArena(int(ram_bytes), int(page_bytes))
        self._stage = WriteStage(max(1, min(STAGE_BYTES // int(page_bytes), self._arena.n_frames // 16)),
                                 int(page_bytes))
        self._tier = LmdbTier(path, durability, int(page_bytes))
        self._strict = durability == "strict"
        self._lock = threading.RLock()
        self._tables: dict[str, _Table] = {}
        self._by_tid: dict[int, _Table] = {}
        self._pending_drops: list[int] = []  # snapshot mode: deleted from LMDB by the next snapshot
        self._next_tid = self._tier.next_tid
        self._op = 0
        self._accesses = 0  # counted page accesses since the last aging
        for record in self._tier.recovered:
            self._attach(record)
        self._restored_clock = self._tier.clock
        self._closed = False
        self._writer_error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by evictions (and close): the writer lands staged pages, cleans ahead
        self._writer = threading.Thread(target=self._writer_loop, name=f"store-writer:{self._path}", daemon=True)
        self._writer.start()

    # ----------------------------------------------------------------- tables
    def create_table(self, name: str, row_bytes: int, dense_rows: int | None, meta: bytes, init_rows: InitRows) -> None:
        page_bytes = self._arena.page_bytes
        if not isinstance(name, str) or not name or name == STORE_STATS:
            raise ValueError(f"table name must be a non-empty string other than {STORE_STATS!r}, got {name!r}")
        if row_bytes < 1:
            raise ValueError(f"row_bytes must be >= 1, got {row_bytes}")
        if row_bytes > page_bytes:
            raise ValueError(
                f"row_bytes={row_bytes} of table {name!r} does not fit in a page of page_bytes={page_bytes}: "
                f"open the store with page_bytes >= {row_bytes} (e.g. {1 << (row_bytes - 1).bit_length()})"
            )
        if dense_rows is not None and dense_rows < 0:
            raise ValueError(f"dense_rows must be None (sparse) or >= 0, got {dense_rows}")
        with self._lock:
            self._check_open()
            if name in self._tables:
                raise ValueError(f"table {name!r} already exists in the store at {self._path!r}; drop it first")
            tid = self._next_tid
            self._next_tid += 1
            record = TableRecord(tid, name, int(row_bytes), dense_rows, bytes(meta), None, 0)
            table = self._attach(record, fresh=True)
            table.init_rows = init_rows
            if self._strict:
                self._tier.commit(headers={tid: self._header(table)}, next_tid=self._next_tid)

    def open_table(self, name: str, init_rows: InitRows) -> None:
        with self._lock:
            self._get(name).init_rows = init_rows

    def tables(self) -> dict[str, bytes]:
        with self._lock:
            return {name: t.meta for name, t in self._tables.items()}

    def drop_table(self, name: str) -> None:
        """Free the table's frames at once; its LMDB pages and keys go now (strict) or with the next snapshot,
        which keeps the last snapshot recoverable until then."""
        with self._lock:
            table = self._get(name)
            self._arena.release(np.flatnonzero(self._arena.owner_tid == table.tid))
            del self._tables[name], self._by_tid[table.tid]
            self._tier.dead.add(table.tid)
            if self._strict:
                self._tier.commit(drops=[table.tid])
            else:
                self._pending_drops.append(table.tid)

    def num_slots(self, name: str) -> int:
        with self._lock:
            return self._get(name).n_slots

    # ------------------------------------------------------------------- keys
    def resolve(self, name: str, keys: np.ndarray, create: bool) -> np.ndarray:
        """keys -> slots. New keys get the next slots, in first-occurrence order, and their rows are written
        from init_rows in the same critical section, so no reader sees an uninitialized row; init_rows runs
        before the index changes, so if it raises nothing is inserted."""
        keys = np.asarray(keys)
        with self._lock:
            table = self._sparse(name)
            slots = table.index.lookup(keys)
            missing = slots < 0
            if not create or not missing.any():
                return slots
            init = self._init_of(table)
            missing_keys = keys[missing]
            _, first = np.unique(missing_keys, return_index=True)
            new_keys = missing_keys[np.sort(first)]
            start = len(table.index)
            new_slots = np.arange(start, start + new_keys.shape[0], dtype=np.int64)
            rows = _as_rows(init(new_slots, new_keys), new_slots.shape[0], table.row_bytes, f"init_rows of table {name!r}")
            table.index.lookup_or_insert(new_keys)
            table.ensure_pages(-(-len(table.index) // table.rows_per_page))
            slots[missing] = table.index.lookup(missing_keys)
            self._write_rows(table, new_slots, rows)
        if self._strict:
            self._write_back(with_keys=True)
        return slots

    def keys_of(self, name: str, slots: np.ndarray) -> np.ndarray:
        with self._lock:
            table = self._sparse(name)
            return table.index.keys_by_slot()[self._check_slots(table, slots)]

    # ------------------------------------------------------------------- rows
    def gather(self, name: str, slots: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of slots, uint8 [n, row_bytes]; or, into `out` (uint8 [n, width <= row_bytes], C-contiguous, e.g. a
        view of a reply buffer), the first `width` bytes of each row (the weights of [weights | state] rows)."""
        with self._lock:
            table = self._get(name)
            slots = self._check_slots(table, slots)
            if out is not None:
                _check_out(out, slots.shape[0], table.row_bytes)
            return self._read_rows(table, slots, out=out)

    def scatter(self, name: str, slots: np.ndarray, rows: np.ndarray) -> None:
        """Write rows (uint8 [n, row_bytes], or any dtype whose rows are row_bytes long) to unique slots."""
        with self._lock:
            table = self._get(name)
            slots = self._check_slots(table, slots)
            self._write_rows(table, slots, _as_rows(rows, slots.shape[0], table.row_bytes, "rows"))
        if self._strict:
            self._write_back(with_keys=True)

    def update(self, name: str, slots: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Atomic read-modify-write of unique slots under the store lock: scatter(slots, fn(gather(slots)))."""
        with self._lock:
            table = self._get(name)
            slots = self._check_slots(table, slots)
            rows = _as_rows(fn(self._read_rows(table, slots)), slots.shape[0], table.row_bytes, "update fn result")
            self._write_rows(table, slots, rows)
        if self._strict:
            self._write_back(with_keys=True)

    def scan(self, name: str, max_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(slots, rows) over every live slot in page-aligned runs of at most max_rows. Each run is read under
        the lock but runs are not one cut; a scan does not count as an access and the pages it loads enter as
        the coldest frames, so a scan cycles through few frames instead of flushing the hot set."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        with self._lock:
            table = self._get(name)
        rpp = table.rows_per_page
        step = max_rows // rpp * rpp if max_rows >= rpp else max_rows
        start = 0
        while True:
            with self._lock:
                if self._tables.get(name) is not table:
                    raise KeyError(f"table {name!r} was dropped during scan")
                end = min(start + step, table.n_slots)
                if start >= end:
                    return
                slots = np.arange(start, end, dtype=np.int64)
                rows = self._read_rows(table, slots, cold=True)
            yield slots, rows
            start = end

    # ------------------------------------------------------------ durability
    def snapshot(self, clock: int) -> None:
        """Consistent cut: copy every dirty frame and staged page under the lock, then write pages, key chunks,
        table headers, pending drops and the clock in one synced transaction that also clears the undo log.
        The LMDB write lock is taken before the store lock is released, so no later write can land before the
        cut. Staged pages stay staged: the writer's later commit of them is skipped by their sequence."""
        with self._lock:
            self._check_open()
            frames = np.flatnonzero(self._arena.dirty)
            writes = self._copy_frames(frames)
            pages = PageWrites.join([w.copy() for w in self._stage.pending()] + [writes])
            keys = self._key_tails()
            headers = {t.tid: self._header(t) for t in self._tables.values()}
            drops = list(self._pending_drops)
            self._tier.lock.acquire()
        try:
            self._tier.commit(
                pages=pages, keys=keys, headers=headers, drops=drops, clock=clock, next_tid=self._next_tid,
                snapshot=True, clear_held_through=clock,
            )
        finally:
            self._tier.lock.release()
        with self._lock:
            self._arena.clear_written(frames, writes.tids, writes.pages, writes.seqs)
            self._pending_drops = [tid for tid in self._pending_drops if tid not in drops]

    def hold(self, key: bytes, record: bytes) -> None:
        """Durably keep a push that is acknowledged now and applied at a later clock boundary (a deterministic
        PS); `key` begins with that clock (8 bytes big-endian), and the snapshot of that clock deletes it."""
        self._check_open()
        self._tier.put_held(key, record)

    def held(self) -> list[tuple[bytes, bytes]]:
        """Held pushes that no snapshot has covered yet, in key order (after a crash: to hold again)."""
        self._check_open()
        return self._tier.held()

    def record_clock(self, clock: int) -> None:
        """Strict: durably record the latest clock. Snapshot mode: a no-op (snapshot(clock) records it)."""
        self._check_open()
        if self._strict:
            self._tier.commit(clock=clock)

    @property
    def restored_clock(self) -> int | None:
        return self._restored_clock

    def flush(self) -> None:
        """Write all dirty pages and sync. In snapshot mode they stay undoable until the next snapshot."""
        self._check_open()
        self._write_back(with_keys=self._strict)
        self._tier.sync()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._writer.join()
        self._write_back(with_keys=self._strict)
        self._tier.sync()
        self._tier.close()

    def stats(self) -> dict[str, dict[str, float]]:
        page_bytes = self._arena.page_bytes
        with self._lock:
            out: dict[str, dict[str, float]] = {}
            for name, t in self._tables.items():
                accesses = t.hits + t.misses
                out[name] = {
                    "rows": float(t.n_slots),
                    "bytes_ram": float(np.count_nonzero(t.page_frame >= 0) * page_bytes),
                    "bytes_disk": float(self._tier.pages_stored(t.tid) * page_bytes),
                    "hits": float(t.hits),
                    "misses": float(t.misses),
                    "hit_rate": t.hits / accesses if accesses else 0.0,
                }
            arena = self._arena
            out[STORE_STATS] = {
                "ram_budget": float(arena.n_frames * page_bytes),
                "ram_used": float(np.count_nonzero(arena.owner_tid >= 0) * page_bytes),
                "frames": float(arena.n_frames),
                "dirty_frames": float(np.count_nonzero(arena.dirty)),
                "evictions": float(arena.evictions),
                "lmdb_bytes": float(self._tier.used_bytes()),
            }
            return out

    # --------------------------------------------------------------- internals
    def _attach(self, record: TableRecord, fresh: bool = False) -> _Table:
        rpp = self._arena.page_bytes // record.row_bytes
        if record.dense_rows is None:
            index = KeyIndex() if fresh else KeyIndex.from_keys(record.keys)
            n_pages = max(record.n_pages, -(-len(index) // rpp))
        else:
            index = None
            n_pages = -(-record.dense_rows // rpp)
        table = _Table(
            record.tid, record.name, record.row_bytes, record.dense_rows, record.meta, None, rpp, index,
            np.full(n_pages, -1, dtype=np.int64), np.zeros(n_pages, dtype=np.int64), np.zeros(n_pages, dtype=np.uint16),
        )
        self._tables[record.name] = table
        self._by_tid[record.tid] = table
        return table

    def _header(self, t: _Table) -> bytes:
        return encode_header(t.tid, t.name, t.row_bytes, t.dense_rows, t.meta)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"store at {self._path!r} is closed")
        if self._writer_error is not None:
            raise RuntimeError(f"background writer of store {self._path!r} failed") from self._writer_error

    def _get(self, name: str) -> _Table:
        self._check_open()
        table = self._tables.get(name)
        if table is None:
            raise KeyError(f"unknown table {name!r}; known tables: {sorted(self._tables)}")
        return table

    def _sparse(self, name: str) -> _Table:
        table = self._get(name)
        if table.index is None:
            raise ValueError(f"table {name!r} is dense ({table.dense_rows} rows); keys apply to sparse tables only")
        return table

    def _init_of(self, table: _Table) -> InitRows:
        if table.init_rows is None:
            raise RuntimeError(
                f"table {table.name!r} was recovered from disk without its initializer: "
                f"call open_table({table.name!r}, init_rows) before creating rows"
            )
        return table.init_rows

    def _check_slots(self, table: _Table, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots)
        if slots.ndim != 1 or (slots.size and not np.issubdtype(slots.dtype, np.integer)):
            raise ValueError(f"slots must be a 1-D integer array, got {slots.dtype} {slots.shape}")
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        if slots.size:
            lo, hi = int(slots.min()), int(slots.max())
            if lo < 0 or hi >= table.n_slots:
                bad = lo if lo < 0 else hi
                raise ValueError(f"slot {bad} out of range for table {table.name!r}: valid slots are 0..{table.n_slots - 1}")
        return slots

    def _read_rows(self, table: _Table, slots: np.ndarray, cold: bool = False,
                   out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((slots.shape[0], table.row_bytes), dtype=np.uint8)
        for sel in self._pinned_chunks(table, slots, cold):
            if sel is None:
                gather_rows(self._arena.data, slots, table.rows_per_page, table.row_bytes, table.page_frame, out)
            else:
                part = np.empty((sel.shape[0], out.shape[1]), dtype=np.uint8)
                gather_rows(self._arena.data, slots[sel], table.rows_per_page, table.row_bytes, table.page_frame, part)
                out[sel] = part
        return out

    def _write_rows(self, table: _Table, slots: np.ndarray, rows: np.ndarray) -> None:
        """Copy rows into their (pinned) frames and mark those frames dirty at a new write sequence."""
        seq = self._arena.next_seq()
        for sel in self._pinned_chunks(table, slots, cold=False):
            if sel is None:
                self._put_rows(table, slots, rows, seq)
            else:
                self._put_rows(table, slots[sel], rows[sel], seq)

    def _put_rows(self, table: _Table, slots: np.ndarray, rows: np.ndarray, seq: int) -> None:
        arena = self._arena
        scatter_rows(arena.data, slots, table.rows_per_page, table.row_bytes, table.page_frame, rows, arena.dirty,
                     arena.seq, seq)

    def _pinned_chunks(self, table: _Table, slots: np.ndarray, cold: bool) -> Iterator[np.ndarray | None]:
        """Make the pages of `slots` resident and pinned; yields None (all rows at once) or, when they span
        more pages than the arena holds, row selections of at most n_frames distinct pages each."""
        if self._pin(table, slots, cold):
            yield None
            return
        pages = slots // table.rows_per_page
        order = np.argsort(pages, kind="stable")
        ordered = pages[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        bounds = np.r_[starts[:: self._arena.n_frames], ordered.shape[0]]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            sel = order[lo:hi]
            self._pin(table, slots[sel], cold)
            yield sel

    def _pin(self, table: _Table, slots: np.ndarray, cold: bool) -> bool:
        """Count the access, refresh resident pages and load missing ones; False (nothing loaded) if they exceed
        the arena (the count stays: the caller retries in chunks, each counted again, as it reads the pages)."""
        arena = self._arena
        self._op += 1
        tick = arena.next_tick()
        missing, n_hit = pin_pages(
            slots, table.rows_per_page, table.page_frame, table.stamp, self._op, tick, arena.tick, table.count,
            arena.count, 0 if cold else 1,
        )
        if n_hit + missing.shape[0] > arena.n_frames:
            return False
        table.hits += n_hit
        table.misses += missing.shape[0]
        if not cold:
            self._age(n_hit + missing.shape[0])
        if missing.shape[0]:
            self._load(table, missing, self._make_room(missing.shape[0], n_hit), 0 if cold else tick)
        return True

    def _age(self, accesses: int) -> None:
        """Halve every access count once AGE_PERIOD * n_frames accesses were counted since the last time."""
        self._accesses += accesses
        if self._accesses >= AGE_PERIOD * self._arena.n_frames:
            self._accesses = 0
            for t in self._tables.values():
                t.count >>= 1
            self._arena.count >>= 1

    def _make_room(self, k: int, n_pinned: int) -> np.ndarray:
        """Free k unpinned frames (coldest, clean first): stage the dirty ones among them for the writer as far
        as the stage has room, and write the rest in one transaction."""
        arena = self._arena
        victims = arena.victims(k, n_pinned)
        used = victims[arena.owner_tid[victims] >= 0]
        if used.shape[0]:
            dirty = used[arena.dirty[used]]
            staged, direct = dirty[: self._stage.room()], dirty[self._stage.room() :]
            if staged.shape[0]:
                self._stage.put(arena.owner_tid[staged], arena.owner_page[staged], arena.seq[staged], arena.data,
                                staged)
            if direct.shape[0]:
                self._tier.commit(
                    pages=PageWrites(arena.owner_tid[direct], arena.owner_page[direct], arena.seq[direct],
                                     frame_views(arena.data, direct))
                )
            owners = arena.owner_tid[used]
            for tid in np.unique(owners).tolist():
                self._by_tid[tid].page_frame[arena.owner_page[used[owners == tid]]] = -1
            arena.evictions += used.shape[0]
            self._wake.set()  # the writer lands the staged victims and cleans the next ones
        arena.release(victims)
        return victims

    def _load(self, table: _Table, pages: np.ndarray, frames: np.ndarray, tick: int) -> None:
        """Bring pages into free frames: staged ones from the WriteStage, stored ones from LMDB, others zeroed
        (sparse) or built by init_rows (dense; marked dirty since an initializer may be random and must be
        read back the same). A page read from the stage is clean: its staged copy is on its way to LMDB. The
        stage's copy is used only when it is newer than LMDB's (write-back may have stored a newer one)."""
        arena = self._arena
        stored = self._tier.stored_seqs(table.tid, pages)
        absent = ~self._stage.read_into(table.tid, pages, stored, arena.data, frames)
        absent[absent] = self._tier.read_into(table.tid, pages[absent], arena.data, frames[absent])
        init_slots = rows = None
        if absent.any():
            arena.data[frames[absent]] = 0
            if table.index is None:
                init_slots = slots_of_pages(pages[absent], table.rows_per_page, table.dense_rows)
                rows = _as_rows(self._init_of(table)(init_slots, None), init_slots.shape[0], table.row_bytes,
                                f"init_rows of table {table.name!r}")
        table.page_frame[pages] = frames
        arena.assign(frames, table.tid, pages, table.count[pages], tick)
        if init_slots is not None:
            self._put_rows(table, init_slots, rows, arena.next_seq())

    def _copy_frames(self, frames: np.ndarray) -> PageWrites:
        arena = self._arena
        return PageWrites(arena.owner_tid[frames], arena.owner_page[frames], arena.seq[frames], arena.data[frames])

    def _key_tails(self) -> dict[int, tuple[int, np.ndarray]]:
        """Keys of each sparse table from the first chunk LMDB does not fully hold yet."""
        tails = {}
        for t in self._tables.values():
            if t.index is not None and len(t.index) > self._tier.n_keys(t.tid):
                start = self._tier.n_keys(t.tid) // KEY_CHUNK * KEY_CHUNK
                tails[t.tid] = (start, t.index.keys_by_slot()[start:].copy())
        return tails

    def _write_back(self, with_keys: bool) -> None:
        """Commit the staged pages (under the store lock, at most two stage buffers), then every dirty frame in
        batches: copy a batch under the store lock, commit it outside. With `with_keys` the new key chunks go
        in the last transaction, after the pages that hold their rows."""
        per_batch = max(1, WRITE_BATCH_BYTES // self._arena.page_bytes)
        with self._lock:
            for staged in self._stage.pending():
                self._tier.commit(pages=staged)
            self._stage.clear_filling()
            frames = np.flatnonzero(self._arena.dirty)
            keys = self._key_tails() if with_keys else {}
        starts = range(0, frames.shape[0], per_batch)
        if not starts and keys:
            self._tier.commit(keys=keys)
        for i in starts:
            last = i + per_batch >= frames.shape[0]
            with self._lock:
                batch = frames[i : i + per_batch]
                batch = batch[self._arena.dirty[batch]]
                writes = self._copy_frames(batch)
            self._tier.commit(pages=writes, keys=keys if last else None)
            with self._lock:
                self._arena.clear_written(batch, writes.tids, writes.pages, writes.seqs)

    def _land_staged(self) -> bool:
        """One writer round: commit the pages staged by evictions, outside the store lock. False when none wait."""
        with self._lock:
            staged = self._stage.take()
        if staged is None:
            return False
        self._tier.commit(pages=staged)
        with self._lock:
            self._stage.landed()
        return True

    def _clean_ahead(self) -> bool:
        """One writer round: write the dirty frames among the coldest eighth of the arena, coldest first, one
        batch (copied under the lock, committed outside). True when more dirty frames wait in that zone."""
        arena = self._arena
        per_batch = max(1, WRITE_BATCH_BYTES // arena.page_bytes)
        with self._lock:
            batch, more = arena.coldest_dirty(max(1, arena.n_frames // 8), per_batch)
            writes = self._copy_frames(batch)
        if batch.shape[0]:
            self._tier.commit(pages=writes)
            with self._lock:
                arena.clear_written(batch, writes.tids, writes.pages, writes.seqs)
        return more

    def _writer_loop(self) -> None:
        """Woken by evictions: commit the staged pages first, clean the cold zone while it holds dirty frames,
        then sleep until the next eviction."""
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                while not self._stop.is_set() and (self._land_staged() or self._clean_ahead()):
                    pass
            except Exception as exc:  # surfaced by the next call (_check_open): a lost write-back must not pass silently
                self._writer_error = exc
                return


def _check_out(out: np.ndarray, n: int, row_bytes: int) -> None:
    """gather's `out` must be a writeable C-contiguous uint8 [n, width] with width <= row_bytes (the kernel writes
    n * width bytes through its data pointer)."""
    if (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 2 or out.shape[0] != n
            or not 0 < out.shape[1] <= row_bytes or not out.flags.c_contiguous or not out.flags.writeable):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be a writeable C-contiguous uint8 [{n}, width] with 0 < width <= {row_bytes}, "
                         f"got {got}")


def _as_rows(rows: np.ndarray, n: int, row_bytes: int, what: str) -> np.ndarray:
    """Rows as contiguous uint8 [n, row_bytes]; rows of another dtype are taken as their bytes."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 and rows.ndim == 2 and rows.shape[1] * rows.dtype.itemsize == row_bytes:
        rows = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], row_bytes)
    if rows.shape != (n, row_bytes):
        raise ValueError(
            f"{what} must be uint8 [{n}, {row_bytes}] (or 2-D of any dtype with {row_bytes}-byte rows), "
            f"got {rows.dtype} {rows.shape}"
        )
    return np.ascontiguousarray(rows)
