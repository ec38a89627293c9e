"""Out-of-core ShardStore vs the same store with everything in RAM vs raw LMDB gets, under Zipf access.

A sparse float32 table (dim 64, Adam-style rows [weights | m | v] = dim*4*3 bytes) four times larger than
the RAM budget; batches of keys drawn from a bounded Zipf(1.1) over the key space; each batch does
resolve + gather + update (add a delta to the weights of the unique rows). All ratios come from one run.

    python bench/storage.py [--keys N] [--dim 64] [--ops K] [--page-bytes B]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np

from seraphim.storage import ShardStore

BATCH = 8192
POPULATE_BATCH = 1 << 16
RAW_BATCHES = 40  # raw LMDB gets are timed on the first batches only (a rate; keeps the run short)


class BoundedZipf:
    """Ranks 1..n with P(r) proportional to r^-s, sampled by inverse CDF over the finite support (np.random.zipf
    is unbounded); a fixed random permutation maps ranks to key positions so hot keys are spread out."""

    def __init__(self, n: int, s: float, rng: np.random.Generator) -> None:
        weights = np.arange(1, n + 1, dtype=np.float64) ** -s
        self.cdf = np.cumsum(weights)
        self.cdf /= self.cdf[-1]
        self.rank_to_pos = rng.permutation(n)
        self.rng = rng

    def sample(self, size: int) -> np.ndarray:
        ranks = np.searchsorted(self.cdf, self.rng.random(size), side="right")
        return self.rank_to_pos[np.minimum(ranks, self.cdf.shape[0] - 1)]


def zero_rows(row_bytes: int):
    return lambda slots: np.zeros((slots.shape[0], row_bytes), dtype=np.uint8)


def add_delta(dim: int):
    def fn(rows: np.ndarray) -> np.ndarray:
        rows.view(np.float32)[:, :dim] += np.float32(1e-3)
        return rows

    return fn


def run_store(path: Path, keys: np.ndarray, warmup: list[np.ndarray], batches: list[np.ndarray], row_bytes: int,
              dim: int, ram_bytes: int, page_bytes: int) -> dict[str, float]:
    """Populate the table with every key and flush; warm the cache up; then time resolve + gather + update."""
    store = ShardStore(path, ram_bytes=ram_bytes, page_bytes=page_bytes)
    try:
        store.create_table("emb", row_bytes, None, b"bench", zero_rows(row_bytes))
        t0 = time.perf_counter()
        for i in range(0, keys.shape[0], POPULATE_BATCH):
            store.resolve("emb", keys[i : i + POPULATE_BATCH], create=True)
        populate_s = time.perf_counter() - t0
        fn = add_delta(dim)

        def step(batch: np.ndarray) -> None:
            slots = store.resolve("emb", batch, create=False)
            store.gather("emb", slots)
            store.update("emb", np.unique(slots), fn)

        for batch in warmup:
            step(batch)
        os.sync()  # start the timed phase without other runs' dirty pages still going to disk
        before = store.stats()["emb"]
        t0 = time.perf_counter()
        for batch in batches:
            step(batch)
        ops_s = time.perf_counter() - t0
        after = store.stats()
        hits = after["emb"]["hits"] - before["hits"]
        misses = after["emb"]["misses"] - before["misses"]
        return {
            "populate_rows_per_s": keys.shape[0] / populate_s,
            "rows_per_s": len(batches) * BATCH / ops_s,
            "hit_rate": hits / max(1.0, hits + misses),
            "evictions": after["_store"]["evictions"],
            "lmdb_mb": after["_store"]["lmdb_bytes"] / 2**20,
        }
    finally:
        store.close()


def run_raw_lmdb(path: Path, keys: np.ndarray, batches: list[np.ndarray], row_bytes: int) -> dict[str, float]:
    """One LMDB env, one key per row: gets of the same rows (buffers=True), and gets plus puts of the update."""
    env = lmdb.open(str(path), map_size=1 << 40, sync=False, metasync=False, readahead=False)
    try:
        row = bytes(row_bytes)
        key_bytes = keys.astype(">i8").tobytes()
        with env.begin(write=True) as txn:
            for i in range(keys.shape[0]):
                txn.put(key_bytes[8 * i : 8 * i + 8], row)
        os.sync()
        t0 = time.perf_counter()
        for batch in batches:
            out = np.empty((batch.shape[0], row_bytes), dtype=np.uint8)
            raw = batch.astype(">i8").tobytes()
            with env.begin(buffers=True) as txn:
                for i in range(batch.shape[0]):
                    out[i] = np.frombuffer(txn.get(raw[8 * i : 8 * i + 8]), dtype=np.uint8)
        get_s = time.perf_counter() - t0
        return {"get_rows_per_s": len(batches) * BATCH / get_s}
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ops", type=int, default=200, help="timed batches of 8192 keys")
    parser.add_argument("--page-bytes", type=int, default=768)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--dir", type=Path, default=None, help="where the LMDB files go (default: a temp dir)")
    args = parser.parse_args()

    row_bytes = args.dim * 4 * 3
    rng = np.random.default_rng(0)
    keys = rng.choice(np.iinfo(np.int64).max, size=args.keys, replace=False).astype(np.int64)
    zipf = BoundedZipf(args.keys, args.zipf, rng)
    warmup = [keys[zipf.sample(BATCH)] for _ in range(args.ops // 4)]
    batches = [keys[zipf.sample(BATCH)] for _ in range(args.ops)]
    table_bytes = args.keys * row_bytes
    rows_per_page = args.page_bytes // row_bytes
    all_pages = -(-args.keys // rows_per_page) * args.page_bytes
    print(f"keys: {args.keys}")
    print(f"row_bytes: {row_bytes}")
    print(f"page_bytes: {args.page_bytes}")
    print(f"table_mb: {table_bytes / 2**20:.1f}")
    print(f"batches: {args.ops} x {BATCH} (after {len(warmup)} warm-up batches)")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        ooc = run_store(tmp / "ooc", keys, warmup, batches, row_bytes, args.dim, table_bytes // 4, args.page_bytes)
        ram = run_store(tmp / "ram", keys, warmup, batches, row_bytes, args.dim, all_pages + 2 * args.page_bytes,
                        args.page_bytes)
        raw = run_raw_lmdb(tmp / "raw", keys, batches[:RAW_BATCHES], row_bytes)

    print(f"ram_budget_mb_out_of_core: {table_bytes // 4 / 2**20:.1f}")
    for name, res in (("out_of_core", ooc), ("in_ram", ram)):
        print(f"{name}_populate_rows_per_s: {res['populate_rows_per_s']:.0f}")
        print(f"{name}_rows_per_s: {res['rows_per_s']:.0f}")
        print(f"{name}_hit_rate: {res['hit_rate']:.4f}")
        print(f"{name}_evictions: {res['evictions']:.0f}")
        print(f"{name}_lmdb_mb: {res['lmdb_mb']:.1f}")
    print(f"raw_lmdb_get_rows_per_s: {raw['get_rows_per_s']:.0f}")
    print(f"ratio_out_of_core_vs_ram: {ooc['rows_per_s'] / ram['rows_per_s']:.3f}")
    print(f"ratio_out_of_core_vs_raw_lmdb: {ooc['rows_per_s'] / raw['get_rows_per_s']:.3f}")


if __name__ == "__main__":
    main()
