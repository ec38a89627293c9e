"""Where a key lives: the routing contract that clients use to split requests and servers use to check them.

Dense tables are range-partitioned in contiguous row blocks (Angel's RangePartitioner); sparse keys are
hash-partitioned with splitmix64, so structured ids (multiples of the shard count, field-prefixed hashes)
still spread evenly.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(keys: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer of int64 keys, as uint64 (vectorized; wraps modulo 2^64)."""
    z = np.asarray(keys).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
    return z


def sparse_shard_of(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index of each sparse key."""
    if num_shards == 1:
        return np.zeros(len(keys), dtype=np.int64)
    return (splitmix64(keys) % np.uint64(num_shards)).astype(np.int64)


def dense_block(rows: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Row block [start, end) of one shard; blocks differ in size by at most one row."""
    return rows * shard // num_shards, rows * (shard + 1) // num_shards


def dense_shard_of(keys: np.ndarray, rows: int, num_shards: int) -> np.ndarray:
    """Shard index of each dense row id (ids must already be checked to lie in [0, rows))."""
    starts = np.array([dense_block(rows, num_shards, s)[0] for s in range(num_shards)], dtype=np.int64)
    return np.searchsorted(starts, keys, side="right").astype(np.int64) - 1


def group_by_shard(shards: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """For each shard, the positions of the items routed to it (one argsort, no per-item loop)."""
    order = np.argsort(shards, kind="stable")
    bounds = np.searchsorted(shards[order], np.arange(num_shards + 1))
    return [order[bounds[s]:bounds[s + 1]] for s in range(num_shards)]
