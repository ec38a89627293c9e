"""Storage layer: KeyIndex, ShardStore paging against numpy references, concurrency, crash recovery, errors.

Real LMDB environments under tmp_path; the crash tests kill a real subprocess with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import lmdb
import numpy as np
import pytest

from seraphim.proto.partition import sparse_shard_of
from seraphim.storage import KeyIndex, ShardStore
from seraphim.storage.lmdb_tier import LmdbTier, PageWrites
from seraphim.storage.write_stage import WriteStage

PAGE = 4096
ROW = 96  # 42 rows per 4 KiB page
RPP = PAGE // ROW
N_PAGES = 40


# ---------------------------------------------------------------- KeyIndex
def test_key_index_agrees_with_dict_on_200k_keys():
    rng = np.random.default_rng(1)
    pool = rng.integers(-(2**63), 2**63 - 1, 150_000, dtype=np.int64)
    pool[:4] = [0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    index = KeyIndex(capacity=16)  # grows many times
    ref: dict[int, int] = {}
    for _ in range(8):
        batch = pool[rng.integers(0, pool.size, 25_000)]  # repeats within and across batches
        slots, is_new = index.lookup_or_insert(batch)
        expect_new = np.zeros(batch.size, dtype=bool)
        for i, k in enumerate(batch.tolist()):
            if k not in ref:
                ref[k] = len(ref)
                expect_new[i] = True
        assert slots.tolist() == [ref[k] for k in batch.tolist()]
        assert (is_new == expect_new).all()
    assert len(index) == len(ref)
    keys = np.fromiter(ref.keys(), dtype=np.int64)
    assert (index.keys_by_slot() == keys).all()  # slot order is insertion order
    absent = np.setdiff1d(rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64), keys)
    assert (index.lookup(absent) == -1).all()
    assert (index.lookup(keys) == np.arange(keys.size)).all()
    with pytest.raises(ValueError):
        index.keys_by_slot()[0] = 5


def test_key_index_from_keys_round_trip_and_duplicates():
    rng = np.random.default_rng(2)
    keys = np.unique(rng.integers(-(10**15), 10**15, 200_000))
    rng.shuffle(keys)
    original = KeyIndex()
    original.lookup_or_insert(keys)
    rebuilt = KeyIndex.from_keys(original.keys_by_slot())
    assert len(rebuilt) == keys.size
    assert (rebuilt.lookup(keys) == np.arange(keys.size)).all()
    more = np.array([7, keys[3], 8, 7], dtype=np.int64)
    slots, is_new = rebuilt.lookup_or_insert(more)  # keeps growing after a rebuild
    assert slots.tolist() == [keys.size, 3, keys.size + 1, keys.size]
    assert is_new.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="appears twice"):
        KeyIndex.from_keys(np.array([1, 2, 1], dtype=np.int64))


def test_key_index_spreads_the_keys_of_one_shard():
    """Routing sends a key to shard splitmix64(key) % n, so one shard's keys share that residue; the index
    hash must not inherit it (buckets of one residue class would hold every home and probe runs would grow)."""
    rng = np.random.default_rng(6)
    pool = np.unique(rng.integers(-(2**63), 2**63 - 1, 1_200_000, dtype=np.int64))
    shard = sparse_shard_of(pool, 8)
    keys, others = pool[shard == 3][:100_000], pool[shard == 3][100_000:]
    rng.shuffle(keys)
    index = KeyIndex(capacity=16)
    slots, is_new = index.lookup_or_insert(keys)
    assert is_new.all() and (slots == np.arange(keys.size)).all()
    assert (index.lookup(keys) == np.arange(keys.size)).all()
    assert others.size > 10_000 and (index.lookup(others) == -1).all()
    table = index._table
    occupancy = [(table[r::8] >= 0).mean() for r in range(8)]  # per bucket residue class modulo 8
    assert max(occupancy) < 1.2 * min(occupancy), occupancy


# ------------------------------------------------------------ paging vs RAM
def random_init(slots: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """A non-deterministic initializer: stored pages must be read back as first built, never rebuilt."""
    return np.random.default_rng().integers(0, 256, (slots.size, ROW), dtype=np.uint8)


class Recorder:
    """Wraps an initializer and records every row it produced, failing if a slot is initialized twice."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, slots: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        rows = random_init(slots)
        for s, r in zip(slots.tolist(), rows):
            assert s not in self.rows, f"slot {s} initialized twice"
            self.rows[s] = r
        return rows


def slot_init(slots: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
    """The crash children's initializer (row bytes = slot % 251)."""
    return np.repeat((slots % 251).astype(np.uint8)[:, None], ROW, axis=1)


def small_store(path, **kw) -> ShardStore:
    return ShardStore(path, ram_bytes=4 * PAGE, page_bytes=PAGE, **kw)


def test_dense_gather_scatter_update_match_reference(tmp_path):
    n = N_PAGES * RPP - 5
    init = Recorder()
    store = small_store(tmp_path / "s")
    try:
        store.create_table("d", ROW, n, b"spec", init)
        rng = np.random.default_rng(3)
        ref: dict[int, np.ndarray] = {}  # rows written; other rows must equal what init produced
        for step in range(60):
            few = rng.random() < 0.5  # either a handful of pages (fits the arena) or many (chunked)
            slots = rng.integers(0, n, 6 if few else 400)  # repeats allowed
            got = store.gather("d", slots)
            for s, row in zip(slots.tolist(), got):
                assert (row == ref.get(s, init.rows.get(s))).all()
            uniq = np.unique(rng.integers(0, n, 3 if few else 300))
            if step % 2:
                rows = rng.integers(0, 256, (uniq.size, ROW), dtype=np.uint8)
                store.scatter("d", uniq, rows)
            else:
                before = store.gather("d", uniq)
                store.update("d", uniq, lambda r: r + np.uint8(1))
                rows = before + np.uint8(1)
            for s, row in zip(uniq.tolist(), rows):
                ref[s] = row
        every = store.gather("d", np.arange(n))  # 40 pages through a 4-frame arena
        expect = np.stack([ref.get(s, init.rows.get(s)) for s in range(n)])
        assert (every == expect).all()
        stats = store.stats()
        assert stats["_store"]["evictions"] > 0 and stats["_store"]["frames"] == 4
        assert stats["d"]["misses"] > 0 and 0 < stats["d"]["hit_rate"] < 1
        assert stats["d"]["bytes_ram"] <= 4 * PAGE and stats["d"]["bytes_disk"] > 0
    finally:
        store.close()


def test_sparse_resolve_gather_update_match_reference(tmp_path):
    store = small_store(tmp_path / "s")
    init = Recorder()
    try:
        store.create_table("emb", ROW, None, b"sparse", init)
        rng = np.random.default_rng(4)
        universe = rng.integers(-(2**62), 2**62, N_PAGES * RPP)
        ref: dict[int, np.ndarray] = {}
        for step in range(60):
            keys = universe[rng.integers(0, min(universe.size, 100 + 40 * step), 200)]
            assert (store.resolve("emb", keys, create=False)[[k not in ref for k in keys.tolist()]] == -1).all()
            slots = store.resolve("emb", keys, create=True)
            for k, s in zip(keys.tolist(), slots.tolist()):
                ref.setdefault(k, init.rows[s])
            assert (store.keys_of("emb", slots) == keys).all()
            got = store.gather("emb", slots)
            assert all((row == ref[k]).all() for k, row in zip(keys.tolist(), got))
            uniq = np.unique(slots)
            delta = rng.integers(0, 256, (uniq.size, ROW), dtype=np.uint8)
            store.update("emb", uniq, lambda r: r + delta)
            for k, row in zip(store.keys_of("emb", uniq).tolist(), store.gather("emb", uniq)):
                ref[k] = row
        assert store.num_slots("emb") == len(ref)
        seen = {}
        for slots, rows in store.scan("emb", max_rows=100):
            assert slots.size <= 100
            seen.update(zip(store.keys_of("emb", slots).tolist(), rows))
        assert seen.keys() == ref.keys() and all((seen[k] == ref[k]).all() for k in ref)
        assert store.num_slots("emb") > N_PAGES * RPP * 0.9  # about 40 pages through 4 frames
        assert store.stats()["_store"]["evictions"] > 0
    finally:
        store.close()


def test_reopen_after_snapshot_keeps_tables_and_needs_initializer(tmp_path):
    store = small_store(tmp_path / "s")
    store.create_table("emb", ROW, None, b"meta-e", random_init)
    slots = store.resolve("emb", np.arange(500) * 3 - 700, create=True)
    rows = store.gather("emb", slots)
    store.snapshot(clock=11)
    store.close()
    store.close()  # idempotent
    again = small_store(tmp_path / "s")
    try:
        assert again.restored_clock == 11 and again.tables() == {"emb": b"meta-e"}
        assert (again.resolve("emb", np.arange(500) * 3 - 700, create=False) == slots).all()
        assert (again.gather("emb", slots) == rows).all()
        with pytest.raises(RuntimeError, match="open_table"):
            again.resolve("emb", np.array([10**12]), create=True)
        again.open_table("emb", random_init)
        assert again.resolve("emb", np.array([10**12]), create=True).tolist() == [500]
    finally:
        again.close()
    with pytest.raises(RuntimeError, match="closed"):
        again.gather("emb", slots)


def test_drop_table_frees_frames_and_pages(tmp_path):
    store = small_store(tmp_path / "s", durability="strict")
    try:
        store.create_table("a", ROW, 10 * RPP, b"", random_init)
        store.create_table("b", ROW, 10 * RPP, b"", random_init)
        store.scatter("a", np.arange(10 * RPP), np.ones((10 * RPP, ROW), dtype=np.uint8))
        assert store.stats()["a"]["bytes_disk"] == 10 * PAGE
        store.drop_table("a")
        assert store.tables() == {"b": b""} and "a" not in store.stats()
        assert store.stats()["_store"]["ram_used"] == 0
        store.create_table("a", ROW, 10 * RPP, b"new", random_init)  # same name, fresh contents
        assert store.stats()["a"]["bytes_disk"] == 0
    finally:
        store.close()
    reopened = small_store(tmp_path / "s")
    try:
        assert reopened.tables() == {"b": b"", "a": b"new"}
    finally:
        reopened.close()


def test_snapshot_mode_drop_takes_effect_at_the_next_snapshot(tmp_path):
    store = small_store(tmp_path / "s")
    store.create_table("a", ROW, 10 * RPP, b"", random_init)
    store.scatter("a", np.arange(10 * RPP), np.ones((10 * RPP, ROW), dtype=np.uint8))
    store.snapshot(clock=1)
    store.drop_table("a")
    store.snapshot(clock=2)
    store.close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            assert txn.stat(env.open_db(b"pages", txn=txn))["entries"] == 0
    finally:
        env.close()
    reopened = small_store(tmp_path / "s")
    try:
        assert reopened.tables() == {} and reopened.restored_clock == 2
    finally:
        reopened.close()


# -------------------------------------------------------------- concurrency
def test_concurrent_updates_are_exact_with_writer_running(tmp_path):
    n = 20 * RPP
    store = small_store(tmp_path / "s")
    store.create_table("c", ROW, n, b"", lambda s, keys: np.zeros((s.size, ROW), dtype=np.uint8))
    expected = np.zeros(n, dtype=np.int64)
    plans = []
    for t in range(4):
        rng = np.random.default_rng(100 + t)
        plan = [np.unique(rng.integers(0, n // 2 if i % 2 else n, 60)) for i in range(150)]
        for slots in plan:
            expected[slots] += 1
        plans.append(plan)

    def bump(rows: np.ndarray) -> np.ndarray:
        counts = rows.view(np.int64).copy()
        counts[:, 0] += 1
        return counts.view(np.uint8)

    def worker(plan):
        for slots in plan:
            store.update("c", slots, bump)

    try:
        threads = [threading.Thread(target=worker, args=(p,)) for p in plans]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert (store.gather("c", np.arange(n)).view(np.int64)[:, 0] == expected).all()
        assert store.stats()["_store"]["evictions"] > 0
    finally:
        store.close()


def test_concurrent_gather_never_sees_uninitialized_rows(tmp_path):
    store = small_store(tmp_path / "s")
    store.create_table("e", ROW, None, b"", lambda s, keys: np.full((s.size, ROW), 7, dtype=np.uint8))
    done = threading.Event()
    bad = []

    def reader():
        rng = np.random.default_rng(5)
        while not done.is_set():
            n = store.num_slots("e")
            if n:
                rows = store.gather("e", rng.integers(0, n, 50))
                if not (rows == 7).all():
                    bad.append(rows)

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(100):
            store.resolve("e", np.arange(i * 17, i * 17 + 40), create=True)
    finally:
        done.set()
        th.join()
        store.close()
    assert not bad


# ------------------------------------------------------------------- crash
CHILD_PRELUDE = """
import sys, numpy as np
from seraphim.storage import ShardStore
PAGE, ROW = {page}, {row}
RPP = PAGE // ROW
def init(s, keys):
    return np.repeat((s % 251).astype(np.uint8)[:, None], ROW, axis=1)
"""

SNAPSHOT_CHILD = """
path, out = sys.argv[1], sys.argv[2]
store = ShardStore(path, ram_bytes=4 * PAGE, page_bytes=PAGE, durability="snapshot")
store.create_table("d", ROW, 30 * RPP, b"dense", init)
store.create_table("s", ROW, None, b"sparse", init)
store.create_table("gone", ROW, 3 * RPP, b"dropped-after", init)
rng = np.random.default_rng(7)
for i in range(30):
    slots = np.unique(rng.integers(0, 30 * RPP, 200))
    store.update("d", slots, lambda r: r + np.uint8(3))
    store.resolve("s", rng.integers(0, 10**6, 50), create=True)
store.scatter("gone", np.arange(3 * RPP), np.ones((3 * RPP, ROW), dtype=np.uint8))
store.snapshot(clock=3)
n_s = store.num_slots("s")
np.savez(out, d=store.gather("d", np.arange(30 * RPP)), skeys=store.keys_of("s", np.arange(n_s)),
         s=store.gather("s", np.arange(n_s)), gone=store.gather("gone", np.arange(3 * RPP)))
ev = store.stats()["_store"]["evictions"]
for i in range(30):  # after the snapshot: overwrite pages, create keys and pages, a table, a drop
    slots = np.unique(rng.integers(0, 30 * RPP, 200))
    store.update("d", slots, lambda r: r + np.uint8(5))
    store.resolve("s", rng.integers(0, 2 * 10**6, 50), create=True)
    store.update("s", np.arange(min(60, n_s)), lambda r: r ^ np.uint8(0xFF))
store.create_table("late", ROW, 5 * RPP, b"late", init)
store.gather("late", np.arange(5 * RPP))
store.drop_table("gone")
store.flush()
assert store.stats()["_store"]["evictions"] > ev
print("ready", flush=True)
import time
time.sleep(600)
"""

STRICT_CHILD = """
path, steps = sys.argv[1], int(sys.argv[2])  # steps < 0: run until killed
# RAM holds everything, so nothing is evicted and the background writer stays idle: only the synchronous
# strict path persists.
store = ShardStore(path, ram_bytes=64 * PAGE, page_bytes=PAGE, durability="strict")
store.create_table("d", ROW, 20 * RPP, b"dense", init)
store.create_table("s", ROW, None, b"sparse", init)
i = 0
while i != steps:
    store.resolve("s", np.arange(i * 10, i * 10 + 25), create=True)
    store.update("d", np.unique(np.random.default_rng(i).integers(0, 20 * RPP, 100)), lambda r: r + np.uint8(1))
    if i % 5 == 0:
        store.record_clock(i)
    print("ack", i, flush=True)
    i += 1
print("ready", flush=True)
import time
time.sleep(600)
"""


def run_child(code: str, *args: str) -> subprocess.Popen:
    script = CHILD_PRELUDE.format(page=PAGE, row=ROW) + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> list[str]:
    """SIGKILL the child; returns the lines it printed that were not read yet."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    rest = proc.stdout.read().split()
    proc.stdout.close()
    return rest


def test_kill_9_recovers_exactly_the_last_snapshot(tmp_path):
    proc = run_child(SNAPSHOT_CHILD, str(tmp_path / "store"), str(tmp_path / "ref.npz"))
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        kill(proc)
    ref = np.load(tmp_path / "ref.npz")
    store = small_store(tmp_path / "store")
    try:
        assert store.restored_clock == 3
        assert store.tables() == {"d": b"dense", "s": b"sparse", "gone": b"dropped-after"}
        for name in ("d", "s", "gone"):
            store.open_table(name, slot_init)
        assert (store.gather("d", np.arange(30 * RPP)) == ref["d"]).all()
        assert (store.gather("gone", np.arange(3 * RPP)) == ref["gone"]).all()
        n_s = ref["skeys"].size
        assert store.num_slots("s") == n_s
        assert (store.keys_of("s", np.arange(n_s)) == ref["skeys"]).all()
        assert (store.gather("s", np.arange(n_s)) == ref["s"]).all()
        later = np.setdiff1d(np.arange(10**6, 2 * 10**6), ref["skeys"])
        assert (store.resolve("s", later, create=False) == -1).all()
        assert store.stats()["_store"]["dirty_frames"] == 0
    finally:
        store.close()


@pytest.mark.parametrize("steps", [-1, 12], ids=["killed-mid-stream", "killed-when-idle"])
def test_kill_9_in_strict_mode_keeps_every_acknowledged_write(tmp_path, steps):
    proc = run_child(STRICT_CHILD, str(tmp_path / "store"), str(steps))
    lines = []
    try:
        while len(lines) < 24 and (not lines or lines[-1] != "ready"):
            lines.append(proc.stdout.readline().strip())
    finally:
        lines += kill(proc)
    acked = max(int(word) for word in " ".join(lines).split() if word.isdigit())
    assert steps < 0 or acked == steps - 1
    store = small_store(tmp_path / "store", durability="strict")
    store.open_table("d", slot_init)
    try:
        got = store.gather("d", np.arange(20 * RPP))
        matches = []
        for last in (acked, acked + 1):  # the step in flight at the kill may or may not have committed
            counts = np.zeros(20 * RPP, dtype=np.int64)
            for i in range(last + 1):
                counts[np.unique(np.random.default_rng(i).integers(0, 20 * RPP, 100))] += 1
            matches.append(bool((got == slot_init(np.arange(20 * RPP), None) + counts.astype(np.uint8)[:, None]).all()))
        assert matches[0] or (steps < 0 and matches[1])
        assert (store.resolve("s", np.arange(acked * 10 + 25), create=False) >= 0).all()
        in_flight_clock = {acked + 1} if steps < 0 and (acked + 1) % 5 == 0 else set()
        assert store.restored_clock in {acked // 5 * 5} | in_flight_clock
    finally:
        store.close()


def test_stale_page_copy_never_overwrites_newer_bytes(tmp_path):
    """The writer may commit a copy taken before an eviction wrote newer bytes: sequence numbers drop it."""
    tier = LmdbTier(tmp_path / "t", "snapshot", PAGE)
    try:
        page = np.array([3])
        for seq, fill in ((6, 1), (5, 2)):
            tier.commit(pages=PageWrites(np.array([0]), page, np.array([seq]), np.full((1, PAGE), fill, np.uint8)))
        frame = np.zeros((1, PAGE), dtype=np.uint8)
        assert not tier.read_into(0, page, frame, np.array([0])).any()
        assert (frame == 1).all()
    finally:
        tier.close()


def test_one_write_keeps_the_newest_copy_of_a_repeated_page(tmp_path):
    tier = LmdbTier(tmp_path / "t", "snapshot", PAGE)
    try:
        pages = np.array([3, 4, 3])
        data = np.stack([np.full(PAGE, fill, np.uint8) for fill in (1, 2, 3)])
        tier.commit(pages=PageWrites(np.zeros(3, np.int32), pages, np.array([8, 1, 7]), data))
        frames = np.zeros((2, PAGE), dtype=np.uint8)
        assert not tier.read_into(0, np.array([3, 4]), frames, np.array([0, 1])).any()
        assert (frames[0] == 1).all() and (frames[1] == 2).all()
        assert tier.stored_seqs(0, np.array([3, 4, 5, 10**6])).tolist() == [8, 1, 0, 0]
    finally:
        tier.close()


def test_large_pages_read_ahead_and_flush_behind_while_writes_go_on(tmp_path):
    """Model-sized pages (1 MiB) are read with the kernel's readahead and written back behind the writes once 64
    MiB have been written; small pages keep LMDB's random-read advice. Pages written in commits that overlap the
    background write-backs read back exactly."""
    small = LmdbTier(tmp_path / "small", "snapshot", PAGE)
    try:
        assert not small.env.flags()["readahead"]
    finally:
        small.close()
    big = 1 << 20
    tier = LmdbTier(tmp_path / "big", "snapshot", big)
    try:
        assert tier.env.flags()["readahead"]
        rng = np.random.default_rng(0)
        data = rng.integers(0, 256, size=(96, big), dtype=np.uint8)
        for start in range(0, 96, 12):  # 8 commits of 12 MiB: write-backs start after the sixth
            pages = np.arange(start, start + 12)
            tier.commit(pages=PageWrites(np.zeros(12, np.int32), pages, np.ones(12, np.int64), data[pages]))
        frames = np.zeros((96, big), dtype=np.uint8)
        assert not tier.read_into(0, np.arange(96), frames, np.arange(96)).any()
        assert np.array_equal(frames, data)
    finally:
        tier.close()


def test_write_stage_serves_its_newest_copy_only_when_newer_than_lmdb():
    stage = WriteStage(capacity=2, page_bytes=8)
    arena = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8)
    stage.put(np.array([1, 1]), np.array([5, 6]), np.array([10, 11]), arena, np.array([0, 1]))
    assert stage.room() == 0
    flying = stage.take()  # the writer's batch: still readable until it landed
    assert flying.pages.tolist() == [5, 6] and stage.take() is None and stage.room() == 2
    stage.put(np.array([1]), np.array([5]), np.array([12]), arena, np.array([2]))  # page 5 again, newer
    out = np.zeros((3, 8), dtype=np.uint8)
    found = stage.read_into(1, np.array([5, 6, 7]), np.array([0, 0, 0]), out, np.array([0, 1, 2]))
    assert found.tolist() == [True, True, False]
    assert (out[0] == arena[2]).all() and (out[1] == arena[1]).all()
    # LMDB already holds a newer page 5 (a direct write) and the same page 6: neither comes from the stage
    found = stage.read_into(1, np.array([5, 6]), np.array([13, 11]), out, np.array([0, 1]))
    assert not found.any()
    assert not stage.read_into(2, np.array([5]), np.array([0]), out, np.array([0])).any()  # another table
    stage.landed()
    assert [w.pages.tolist() for w in stage.pending()] == [[5]]
    with pytest.raises(ValueError, match="room"):
        stage.put(np.array([1, 1]), np.array([8, 9]), np.array([14, 15]), arena, np.array([0, 3]))


# ------------------------------------------------------------------- errors
def test_errors_are_explicit(tmp_path):
    with pytest.raises(ValueError, match="durability"):
        ShardStore(tmp_path / "a", ram_bytes=4 * PAGE, page_bytes=PAGE, durability="eventual")
    with pytest.raises(ValueError, match=f"minimum is 2 pages.*{2 * PAGE}"):
        ShardStore(tmp_path / "b", ram_bytes=PAGE, page_bytes=PAGE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        ShardStore(tmp_path / "file", ram_bytes=4 * PAGE, page_bytes=PAGE)
    store = small_store(tmp_path / "c")
    try:
        store.create_table("t", ROW, 10, b"", random_init)
        with pytest.raises(ValueError, match="'t' already exists"):
            store.create_table("t", ROW, 10, b"", random_init)
        with pytest.raises(ValueError, match=f"page_bytes >= {PAGE + 1}"):
            store.create_table("big", PAGE + 1, 10, b"", random_init)
        with pytest.raises(KeyError, match=r"unknown table 'nope'; known tables: \['t'\]"):
            store.gather("nope", np.arange(3))
        with pytest.raises(ValueError, match="slot 10 out of range"):
            store.gather("t", np.array([1, 10]))
        with pytest.raises(ValueError, match="dense"):
            store.resolve("t", np.arange(3), create=True)
        with pytest.raises(ValueError, match=r"uint8 \[2, 96\]"):
            store.scatter("t", np.array([0, 1]), np.zeros((2, 5), dtype=np.uint8))
    finally:
        store.close()
    with pytest.raises(ValueError, match=f"page_bytes={PAGE}"):
        ShardStore(tmp_path / "c", ram_bytes=8 * PAGE, page_bytes=2 * PAGE)
