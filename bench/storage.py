"""Out-of-core ShardStore vs the same store with everything in RAM vs raw LMDB gets, under Zipf access.

A sparse float32 table (dim 64, Adam-style rows [weights | m | v] = dim*4*3 bytes) four times larger than
the RAM budget; batches of keys drawn from a bounded Zipf(1.1) over the key space; each batch does
resolve + gather + update (add a delta to the weights of the unique rows). All three are built first and
then timed in interleaved chunks of batches, so load from other processes on the host hits them alike and
the ratios come from one run.

    python bench/storage.py [--keys N] [--dim 64] [--ops K] [--page-bytes B]

Page size: hot keys are scattered over the slots, so every row a page drags in beside a hot one is RAM
spent on cold data; small pages win on hit rate. 4080 bytes (5 rows, exactly one LMDB overflow page) gave
the fastest out-of-core and in-RAM runs and is the default; 768 (one row per page) gives a higher ratio,
mostly because its in-RAM baseline is slower (4x the frames); 16 KiB and 64 KiB pages fall far behind.
Every page the Zipf tail brings in is updated at once, so every eviction writes a page: out of core, the
LMDB write per miss is the cost, and on a slow disk the page cache only hides it for a while. The store
stages evicted pages and its background writer commits them and cleans the coldest frames ahead, on
another core; that writer keeps working during the next contender's slice, whichever it is, so part of
the out-of-core write cost lands in the in-RAM time (a two-core host shows it most).

Replacement is LFU with aging: it learns page popularity from the counts, so misses keep falling after the
warm-up (about 840 per batch over the default 200 timed batches, about 700-720 after 1000 batches in a
simulation of the same trace, against about 890 for LRU at any length); a longer --ops shows more of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import lmdb
import numpy as np

from common import BoundedZipf, print_figures, rates, time_each
from seraphim.storage import ShardStore

BATCH = 8192
POPULATE_BATCH = 1 << 16
CHUNK = 10  # batches per timed slice; the three contenders take turns slice by slice
RAW_CHUNKS = 4  # raw LMDB gets are timed on the first slices only (a rate; keeps the run short)


def build_store(path: Path, keys: np.ndarray, row_bytes: int, ram_bytes: int, page_bytes: int) -> tuple[ShardStore, float]:
    """A store whose sparse table holds every key (zero rows); returns it and the seconds populating took."""
    store = ShardStore(path, ram_bytes=ram_bytes, page_bytes=page_bytes)
    store.create_table("emb", row_bytes, None, b"bench", lambda s, keys: np.zeros((s.shape[0], row_bytes), np.uint8))
    t0 = time.perf_counter()
    for i in range(0, keys.shape[0], POPULATE_BATCH):
        store.resolve("emb", keys[i : i + POPULATE_BATCH], create=True)
    return store, time.perf_counter() - t0


def store_step(store: ShardStore, dim: int) -> Callable[[np.ndarray], None]:
    """One PS-like step: keys -> slots, pull the rows, push a delta into the weights of the unique rows."""

    def add_delta(rows: np.ndarray) -> np.ndarray:
        rows.view(np.float32)[:, :dim] += np.float32(1e-3)
        return rows

    def step(batch: np.ndarray) -> None:
        slots = store.resolve("emb", batch, create=False)
        store.gather("emb", slots)
        store.update("emb", np.unique(slots), add_delta)

    return step


def build_raw_lmdb(path: Path, keys: np.ndarray, row_bytes: int) -> tuple[lmdb.Environment, float]:
    """One LMDB env, one key (big-endian int64) per row, loaded in key order (append mode)."""
    env = lmdb.open(str(path), map_size=1 << 40, sync=False, metasync=False, readahead=False, writemap=True)
    t0 = time.perf_counter()
    ordered = np.sort(keys).astype(">i8").tobytes()
    row = bytes(row_bytes)
    with env.begin(write=True) as txn:
        txn.cursor().putmulti(((ordered[i : i + 8], row) for i in range(0, len(ordered), 8)), append=True)
    return env, time.perf_counter() - t0


def raw_get(env: lmdb.Environment, row_bytes: int) -> Callable[[np.ndarray], None]:
    def get(batch: np.ndarray) -> None:
        out = np.empty((batch.shape[0], row_bytes), dtype=np.uint8)
        raw = batch.astype(">i8").tobytes()
        with env.begin(buffers=True) as txn:
            for i in range(batch.shape[0]):
                out[i] = np.frombuffer(txn.get(raw[8 * i : 8 * i + 8]), dtype=np.uint8)

    return get


def hits_misses(store: ShardStore) -> np.ndarray:
    stats = store.stats()["emb"]
    return np.array([stats["hits"], stats["misses"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ops", type=int, default=200, help="timed batches of 8192 keys")
    parser.add_argument("--page-bytes", type=int, default=4080, help="4080 = one LMDB overflow page (5 rows)")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--dir", type=Path, default=None, help="where the LMDB files go (default: a temp dir)")
    args = parser.parse_args()

    row_bytes = args.dim * 4 * 3
    rng = np.random.default_rng(0)
    keys = rng.choice(np.iinfo(np.int64).max, size=args.keys, replace=False).astype(np.int64)
    zipf = BoundedZipf(args.keys, args.zipf, seed=0)
    warmup = [keys[zipf.sample(BATCH, rng)] for _ in range(args.ops // 4)]
    batches = [keys[zipf.sample(BATCH, rng)] for _ in range(args.ops)]
    table_bytes = args.keys * row_bytes
    rows_per_page = args.page_bytes // row_bytes
    all_pages = -(-args.keys // rows_per_page) * args.page_bytes
    figures = {
        "keys": args.keys, "row_bytes": row_bytes, "page_bytes": args.page_bytes, "rows_per_page": rows_per_page,
        "table_mb": table_bytes / 2**20, "ram_budget_mb_out_of_core": table_bytes / 4 / 2**20,
        "timed_batches": args.ops, "warmup_batches": len(warmup),
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        ooc, figures["out_of_core_populate_s"] = build_store(tmp / "ooc", keys, row_bytes, table_bytes // 4,
                                                            args.page_bytes)
        ram, figures["in_ram_populate_s"] = build_store(tmp / "ram", keys, row_bytes, all_pages + 2 * args.page_bytes,
                                                       args.page_bytes)
        env, figures["raw_lmdb_populate_s"] = build_raw_lmdb(tmp / "raw", keys, row_bytes)
        try:
            steps = {"out_of_core": store_step(ooc, args.dim), "in_ram": store_step(ram, args.dim)}
            for batch in warmup:
                for step in steps.values():
                    step(batch)
            os.sync()  # the timed part starts without populate's dirty pages still queued for the disk
            before = {"out_of_core": hits_misses(ooc), "in_ram": hits_misses(ram)}
            seconds = {"out_of_core": 0.0, "in_ram": 0.0, "raw_lmdb_get": 0.0}
            raw_batches = 0
            for c, start in enumerate(range(0, len(batches), CHUNK)):
                chunk = batches[start : start + CHUNK]
                # alternate the order, so the slice right after an out-of-core slice (which may still have its
                # writer thread cleaning) belongs to either contender equally often
                for name, step in sorted(steps.items(), reverse=c % 2 == 1):
                    seconds[name] += time_each(step, chunk)
                if c < RAW_CHUNKS:
                    seconds["raw_lmdb_get"] += time_each(raw_get(env, row_bytes), chunk)
                    raw_batches += len(chunk)
            for name, store in (("out_of_core", ooc), ("in_ram", ram)):
                hits, misses = hits_misses(store) - before[name]
                figures.update(rates(name, len(batches) * BATCH / seconds[name], row_bytes))
                figures[f"{name}_hit_rate"] = hits / max(1.0, hits + misses)
                figures[f"{name}_misses_per_batch"] = misses / len(batches)
                stats = store.stats()["_store"]
                figures[f"{name}_evictions"] = stats["evictions"]
                figures[f"{name}_lmdb_mb"] = stats["lmdb_bytes"] / 2**20
            figures.update(rates("raw_lmdb_get", raw_batches * BATCH / seconds["raw_lmdb_get"], row_bytes))
        finally:
            ooc.close()
            ram.close()
            env.close()
    figures["ratio_out_of_core_vs_ram"] = figures["out_of_core_rows_per_s"] / figures["in_ram_rows_per_s"]
    figures["ratio_out_of_core_vs_raw_lmdb"] = figures["out_of_core_rows_per_s"] / figures["raw_lmdb_get_rows_per_s"]
    print_figures({k: float(v) for k, v in figures.items()})


if __name__ == "__main__":
    main()
