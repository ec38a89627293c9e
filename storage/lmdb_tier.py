"""The SSD tier: one LMDB environment per shard (LMDB allows one writer per environment).

Named databases:
  meta    page_bytes, clock, next_tid
  tables  table id (4 B big-endian) -> JSON header + NUL + opaque table spec
  pages   table id + page number (4 + 8 B big-endian, so a table's pages sort) -> one page (page_bytes).
          Values are page-sized on purpose: one get/put moves a whole page. Values over about 2 KB go to
          LMDB overflow pages, and page_bytes = k * 4096 - 16 fills them exactly (4080: one LMDB page);
          smaller values sit inline in the B-tree leaves.
  keys    table id + chunk number -> up to KEY_CHUNK little-endian int64 keys (a sparse table's keys_by_slot)
  undo    page key -> that page's bytes at the last snapshot, or b"" when the page was created after it
The LMDB keys of `pages` are the page-existence record: recovery rebuilds it with a key-only cursor pass.

Durability "snapshot": no sync per commit; the snapshot transaction is synced, and a background thread writes
dirty pages back every FLUSH_BEHIND_BYTES of page writes (a memory limit's reclaim then finds clean pages).
Between snapshots every page write first saves the page's snapshot-time bytes into `undo` in the same
transaction, so recovery after a killed process rolls back to exactly the last snapshot. Durability "strict": a
synced commit per transaction, no undo log. Both open the map with writemap: page writes then cost a memcpy into
the map instead of a malloc'd copy plus write(), which measured about 1.5x faster eviction write-back here. The
price, per LMDB's documentation: with writemap and no sync, an OS crash or power loss between snapshots
can corrupt the environment (snapshot mode guards against process crashes, which PS restarts handle;
strict mode against machine crashes), and a full disk surfaces as SIGBUS rather than an error, so keep
free space above the table size.

All writes go through `commit` under `lock` (one write transaction at a time). A write carries each
page's write sequence number; a page is skipped when LMDB already holds the same or a newer sequence, and a
page given twice in one write keeps its newest copy, so a stale copy (a staged eviction committed again, a
writer's batch landing late) can never overwrite newer bytes.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import lmdb
import numpy as np

from seraphim.storage.page_kernels import PAGE_KEY, frame_views, page_keys, table_prefix

MAP_SIZE = 1 << 40  # address space only: the file grows as pages are written
KEY_CHUNK = 65536  # keys per LMDB value, so a snapshot rewrites only the chunks that grew
DURABILITY = ("snapshot", "strict")
#: pages at least this large are read whole and in key order, so the kernel's readahead serves them: a 1 MiB page
#: not in the page cache then comes from disk in a few large reads instead of 256 faults of 4 KiB (measured: 64
#: such pages, 1.2 s without readahead, 0.04 s with). Smaller pages are read at random, where LMDB's advice holds:
#: readahead would fill the cache with neighbours nobody asked for.
READAHEAD_PAGE_BYTES = 64 << 10
FLUSH_BEHIND_BYTES = 64 << 20  # page bytes written between background write-backs (snapshot durability)


@dataclass
class PageWrites:
    """Pages to store: table id, page number, write sequence and bytes of each (a repeated page: newest wins)."""

    tids: np.ndarray
    pages: np.ndarray
    seqs: np.ndarray
    data: Sequence

    def copy(self) -> "PageWrites":
        """The same writes over private copies of the bytes (for a commit made after the store lock is released)."""
        return PageWrites(self.tids.copy(), self.pages.copy(), self.seqs.copy(), [bytes(d) for d in self.data])

    @staticmethod
    def join(parts: Sequence["PageWrites"]) -> "PageWrites":
        """One write of several (the bytes are referenced, not copied)."""
        return PageWrites(
            np.concatenate([p.tids for p in parts]), np.concatenate([p.pages for p in parts]),
            np.concatenate([p.seqs for p in parts]), [d for p in parts for d in p.data],
        )


@dataclass
class TableRecord:
    """A table as recovered from disk."""

    tid: int
    name: str
    row_bytes: int
    dense_rows: int | None
    meta: bytes
    keys: np.ndarray | None  # keys_by_slot of a sparse table
    n_pages: int  # one past the highest page stored


@dataclass
class _DiskState:
    """Per-table bookkeeping of what LMDB holds; guarded by LmdbTier.lock."""

    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    undo_saved: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    n_present: int = 0
    n_keys: int = 0

    def ensure(self, n_pages: int) -> None:
        if n_pages > self.seq.shape[0]:
            size = max(n_pages, 2 * self.seq.shape[0])
            self.seq = np.concatenate([self.seq, np.zeros(size - self.seq.shape[0], dtype=np.int64)])
            self.present = np.concatenate([self.present, np.zeros(size - self.present.shape[0], dtype=np.bool_)])
            self.undo_saved = np.concatenate(
                [self.undo_saved, np.zeros(size - self.undo_saved.shape[0], dtype=np.bool_)]
            )


def encode_header(tid: int, name: str, row_bytes: int, dense_rows: int | None, meta: bytes) -> bytes:
    head = json.dumps({"tid": tid, "name": name, "row_bytes": row_bytes, "dense_rows": dense_rows})
    return head.encode() + b"\0" + bytes(meta)


def _decode_header(raw: bytes) -> tuple[dict, bytes]:
    head, _, meta = raw.partition(b"\0")
    return json.loads(head), meta


def _delete_prefix(txn: lmdb.Transaction, db, prefix: bytes) -> None:
    cur = txn.cursor(db=db)
    if cur.set_range(prefix):
        while cur.key().startswith(prefix) and cur.delete():
            pass


class LmdbTier:
    """The shard's LMDB environment: recovery at open, page reads, and every write transaction."""

    def __init__(self, path: str | os.PathLike, durability: str, page_bytes: int) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}, got {durability!r}")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"store path {str(path)!r} is a file; it must be a directory (created if missing)")
        path.mkdir(parents=True, exist_ok=True)
        strict = durability == "strict"
        self.durability = durability
        self.page_bytes = page_bytes
        self.lock = threading.RLock()
        self.dead: set[int] = set()  # dropped table ids: their pending page writes are discarded
        self.env = lmdb.open(
            str(path), map_size=MAP_SIZE, max_dbs=8, writemap=True, sync=strict, metasync=strict,
            readahead=page_bytes >= READAHEAD_PAGE_BYTES, max_readers=1024,
        )
        self._meta = self.env.open_db(b"meta")
        self._tables = self.env.open_db(b"tables")
        self._pages = self.env.open_db(b"pages")
        self._keys = self.env.open_db(b"keys")
        self._undo = self.env.open_db(b"undo")
        self._held = self.env.open_db(b"held")  # pushes acknowledged but not yet applied (deterministic PS)
        self._state: dict[int, _DiskState] = {}
        self._unflushed = 0
        self._flusher: threading.Thread | None = None
        self._roll_back()
        self.clock, self.next_tid, self.recovered = self._load()

    def _roll_back(self) -> None:
        """Apply the undo log: restore snapshot-time bytes, delete pages created after the snapshot."""
        with self.env.begin(write=True) as txn:
            stored = txn.get(b"page_bytes", db=self._meta)
            if stored is None:
                txn.put(b"page_bytes", self.page_bytes.to_bytes(8, "big"), db=self._meta)
            elif int.from_bytes(stored, "big") != self.page_bytes:
                raise ValueError(
                    f"store at {self.env.path()!r} was created with page_bytes={int.from_bytes(stored, 'big')}; "
                    f"reopen it with that page size, not {self.page_bytes}"
                )
            for key, old in txn.cursor(db=self._undo):
                if old:
                    txn.put(key, old, db=self._pages)
                else:
                    txn.delete(key, db=self._pages)
            txn.drop(self._undo, delete=False)
        self.env.sync(True)

    def _load(self) -> tuple[int | None, int, list[TableRecord]]:
        with self.env.begin() as txn:
            raw_clock = txn.get(b"clock", db=self._meta)
            raw_next = txn.get(b"next_tid", db=self._meta)
            headers = [_decode_header(v) for _, v in txn.cursor(db=self._tables)]
            raw_keys = b"".join(txn.cursor(db=self._pages).iternext(keys=True, values=False))
            stored = np.frombuffer(raw_keys, dtype=PAGE_KEY)
            records = []
            for head, meta in headers:
                tid = head["tid"]
                pages = stored["page"][stored["tid"] == tid].astype(np.int64)
                state = self._state[tid] = _DiskState()
                n_pages = int(pages.max()) + 1 if pages.size else 0
                state.ensure(n_pages)
                state.present[pages] = True
                state.n_present = int(pages.size)
                keys = None
                if head["dense_rows"] is None:
                    cur = txn.cursor(db=self._keys)
                    prefix = table_prefix(tid)
                    chunks = []
                    if cur.set_range(prefix):
                        while cur.key().startswith(prefix):
                            chunks.append(np.frombuffer(cur.value(), dtype="<i8"))
                            if not cur.next():
                                break
                    keys = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)
                    state.n_keys = int(keys.shape[0])
                records.append(
                    TableRecord(tid, head["name"], head["row_bytes"], head["dense_rows"], meta, keys, n_pages)
                )
        clock = int.from_bytes(raw_clock, "big", signed=True) if raw_clock is not None else None
        next_tid = max([int.from_bytes(raw_next, "big") if raw_next else 0] + [r.tid + 1 for r in records])
        return clock, next_tid, records

    def read_into(self, tid: int, pages: np.ndarray, arena: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Copy stored pages into arena frames in one read transaction; returns the mask of pages never stored.

        Pages the existence bitmap does not list are not looked up. Reading the bitmap without `lock` is
        safe for the caller's pages: they are neither resident nor staged (the store looks in its
        WriteStage first), and a page leaves the stage only once its commit (bitmap included) completed,
        so no write of these pages can be in flight.
        """
        state = self._state.get(tid)
        present = state.present if state is not None else np.zeros(0, dtype=np.bool_)
        absent = pages >= present.shape[0]
        absent[~absent] = ~present[pages[~absent]]
        stored = np.flatnonzero(~absent)
        if stored.shape[0]:
            stored = stored[np.argsort(pages[stored])]  # key order: neighbouring B-tree leaves stay cached
            with self.env.begin(db=self._pages, buffers=True) as txn:
                get = txn.get
                for key, view in zip(page_keys(tid, pages[stored]), frame_views(arena, frames[stored])):
                    view[:] = get(key)  # one memcpy from the map into the frame
        return absent

    def stored_seqs(self, tid: int, pages: np.ndarray) -> np.ndarray:
        """Write sequence of the copy LMDB holds of each page (0: none). Read without `lock`, like read_into:
        the store asks only for pages that are not resident, whose newest copy is staged or committed."""
        state = self._state.get(tid)
        out = np.zeros(pages.shape[0], dtype=np.int64)
        if state is not None:
            known = pages < state.seq.shape[0]
            out[known] = state.seq[pages[known]]
        return out

    def n_keys(self, tid: int) -> int:
        """Keys of a sparse table stored so far (read without the lock: it only grows)."""
        state = self._state.get(tid)
        return state.n_keys if state else 0

    def pages_stored(self, tid: int) -> int:
        state = self._state.get(tid)
        return state.n_present if state else 0

    def used_bytes(self) -> int:
        """Bytes of the LMDB file in use (with writemap the file itself is sparse and as large as the map)."""
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def commit(
        self,
        *,
        pages: PageWrites | None = None,
        keys: dict[int, tuple[int, np.ndarray]] | None = None,
        headers: dict[int, bytes] | None = None,
        drops: Sequence[int] = (),
        clock: int | None = None,
        next_tid: int | None = None,
        snapshot: bool = False,
        clear_held_through: int | None = None,
    ) -> None:
        """One write transaction. `keys` maps a sparse table to (first slot, keys_by_slot from there);
        `snapshot` makes it the new snapshot: no undo for its pages, the undo log is cleared, and it is synced;
        `clear_held_through` deletes the held records of clocks up to it (their pushes are in these pages)."""
        with self.lock:
            after: list = []
            with self.env.begin(write=True) as txn:
                for tid in drops:
                    for db in (self._pages, self._keys):
                        _delete_prefix(txn, db, table_prefix(tid))
                    txn.delete(table_prefix(tid), db=self._tables)
                    after.append(lambda tid=tid: self._state.pop(tid, None))
                for tid, header in (headers or {}).items():
                    txn.put(table_prefix(tid), header, db=self._tables)
                if pages is not None:
                    after += self._put_pages(txn, pages, undo=self.durability == "snapshot" and not snapshot)
                for tid, (start, table_keys) in (keys or {}).items():
                    after += self._put_keys(txn, tid, start, table_keys)
                if clock is not None:
                    txn.put(b"clock", int(clock).to_bytes(8, "big", signed=True), db=self._meta)
                if next_tid is not None:
                    txn.put(b"next_tid", int(next_tid).to_bytes(8, "big"), db=self._meta)
                if snapshot:
                    txn.drop(self._undo, delete=False)
                if clear_held_through is not None:
                    cur = txn.cursor(db=self._held)
                    if cur.first():
                        while int.from_bytes(cur.key()[:8], "big") <= clear_held_through and cur.delete():
                            pass
            for apply in after:
                apply()
            if snapshot:
                for state in self._state.values():
                    state.undo_saved[:] = False
                self.env.sync(True)
            elif pages is not None and self.durability == "snapshot":
                self._flush_behind(len(pages.pages) * self.page_bytes)

    def _flush_behind(self, written: int) -> None:
        """Write dirty pages back on a thread of their own once FLUSH_BEHIND_BYTES have been written: under a
        memory limit the kernel would otherwise have to write them back inside the reclaim that a read or an
        allocation triggers, and that reclaim then waits for the disk (or, in a cgroup-v1 memory group, fails)."""
        self._unflushed += written
        if self._unflushed < FLUSH_BEHIND_BYTES or (self._flusher is not None and self._flusher.is_alive()):
            return
        self._unflushed = 0
        self._flusher = threading.Thread(target=self.env.sync, args=(True,), name="lmdb-flush-behind", daemon=True)
        self._flusher.start()

    def _put_pages(self, txn: lmdb.Transaction, w: PageWrites, undo: bool) -> list:
        after = []
        for tid in np.unique(w.tids).tolist():
            if tid in self.dead:
                continue
            idx = np.flatnonzero(w.tids == tid)
            state = self._state.setdefault(tid, _DiskState())
            state.ensure(int(w.pages[idx].max()) + 1)
            idx = idx[np.lexsort((w.seqs[idx], w.pages[idx]))]  # key order: each B-tree leaf is touched once
            idx = idx[np.r_[w.pages[idx][1:] != w.pages[idx][:-1], True]]  # a repeated page: its newest copy
            idx = idx[state.seq[w.pages[idx]] < w.seqs[idx]]
            pages = w.pages[idx]
            keys = page_keys(tid, pages)
            if undo and not state.undo_saved[pages].all():
                first = np.flatnonzero(~state.undo_saved[pages])
                stored = state.present[pages[first]]  # pages never stored have no old bytes to look up
                old = dict(txn.cursor(db=self._pages).getmulti([keys[j] for j in first[stored].tolist()]))
                txn.cursor(db=self._undo).putmulti([(keys[j], old.get(keys[j], b"")) for j in first.tolist()])
            txn.cursor(db=self._pages).putmulti(list(zip(keys, [w.data[i] for i in idx.tolist()])))

            def apply(state=state, pages=pages, seqs=w.seqs[idx], saved=undo):
                state.seq[pages] = seqs
                state.n_present += int(np.count_nonzero(~state.present[pages]))
                state.present[pages] = True
                if saved:
                    state.undo_saved[pages] = True

            after.append(apply)
        return after

    def _put_keys(self, txn: lmdb.Transaction, tid: int, start: int, table_keys: np.ndarray) -> list:
        if tid in self.dead:
            return []
        state = self._state.setdefault(tid, _DiskState())
        end = start + table_keys.shape[0]
        if end <= state.n_keys:
            return []
        prefix = table_prefix(tid)
        for chunk in range(state.n_keys // KEY_CHUNK, -(-end // KEY_CHUNK)):
            lo, hi = chunk * KEY_CHUNK, min((chunk + 1) * KEY_CHUNK, end)
            part = np.ascontiguousarray(table_keys[lo - start : hi - start], dtype="<i8")
            txn.put(prefix + chunk.to_bytes(8, "big"), part.tobytes(), db=self._keys)

        def apply(state=state, end=end):
            state.n_keys = max(state.n_keys, end)

        return [apply]

    def put_held(self, key: bytes, record: bytes) -> None:
        """Durably keep a held push (its key starts with its clock, 8 bytes big-endian) before it is acknowledged."""
        with self.lock:
            with self.env.begin(write=True) as txn:
                txn.put(key, record, db=self._held)
            self.env.sync(True)

    def held(self) -> list[tuple[bytes, bytes]]:
        """The held pushes in key order (clock first)."""
        with self.env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._held)]

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        with self.lock:
            if self._flusher is not None:
                self._flusher.join()
            self.env.close()
