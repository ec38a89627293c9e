"""int64 key -> dense slot index for sparse tables, kept in RAM so that only rows (not keys) page to disk.

Layout: an open-addressing table of slot numbers (int64, -1 empty, linear probing, salted splitmix64) plus
``keys_by_slot``, the key of each slot in insertion order. The hash table stores slots only and compares
through ``keys_by_slot``, so a key costs 8 bytes in ``keys_by_slot`` plus 8 / load bytes in the table:
with the load kept in (0.35, 0.7] that is about 19-31 bytes per key (about 24 on average).
Keys are handled as their uint64 bit patterns inside the kernels, so every int64 (negative too) is valid.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EMPTY = -1
_MAX_LOAD = 0.7
_SALT = np.uint64(0x5851F42D4C957F2D)  # any odd 64-bit constant: decorrelates the index hash from shard routing


@njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64 finalizer of the salted key: spreads sequential or strided keys over the whole table.

    The salt matters: shard routing (proto/partition.py) takes the unsalted splitmix64 of the key modulo
    the shard count, so on one shard every key's unsalted hash has the same residue, and home buckets taken
    from its low bits would crowd into one bucket in `num_shards` (long probe runs, about 2.5x slower
    lookups with 8 shards). Salting gives an independent hash.
    """
    z = (x ^ _SALT) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _lookup(table, keys_by_slot, keys, out):
    mask = np.uint64(table.shape[0] - 1)
    for i in range(keys.shape[0]):
        k = keys[i]
        h = _mix(k) & mask
        while True:
            s = table[h]
            if s == _EMPTY:
                out[i] = -1
                break
            if keys_by_slot[s] == k:
                out[i] = s
                break
            h = (h + np.uint64(1)) & mask


@njit(cache=True)
def _lookup_or_insert(table, keys_by_slot, n, limit, keys, start, slots, is_new):
    """Insert from keys[start:] until the table holds `limit` keys; returns (next index, new count)."""
    mask = np.uint64(table.shape[0] - 1)
    i = start
    while i < keys.shape[0]:
        k = keys[i]
        h = _mix(k) & mask
        while True:
            s = table[h]
            if s == _EMPTY:
                if n >= limit:
                    return i, n
                table[h] = n
                keys_by_slot[n] = k
                slots[i] = n
                is_new[i] = True
                n += 1
                break
            if keys_by_slot[s] == k:
                slots[i] = s
                break
            h = (h + np.uint64(1)) & mask
        i += 1
    return i, n


@njit(cache=True)
def _rebuild(table, keys_by_slot, n):
    """Place slots 0..n-1 into an empty table; returns the first slot whose key repeats, or -1."""
    mask = np.uint64(table.shape[0] - 1)
    for s in range(n):
        k = keys_by_slot[s]
        h = _mix(k) & mask
        while True:
            t = table[h]
            if t == _EMPTY:
                table[h] = s
                break
            if keys_by_slot[t] == k:
                return s
            h = (h + np.uint64(1)) & mask
    return -1


def _capacity_for(n: int) -> int:
    """Smallest power of two holding n keys at load <= _MAX_LOAD / 2 (room to grow before the next rehash)."""
    need = max(16, int(np.ceil(n / (_MAX_LOAD / 2))))
    return 1 << (need - 1).bit_length()


class KeyIndex:
    """int64 key -> int64 slot, open addressing in numpy arrays with numba kernels; slots are dense 0..n-1 in insertion order."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        if capacity < 1:
            raise ValueError(f"KeyIndex capacity must be >= 1, got {capacity}")
        size = 1 << max(4, (int(capacity) - 1).bit_length())
        self._table = np.full(size, _EMPTY, dtype=np.int64)
        self._keys = np.empty(max(16, int(size * _MAX_LOAD) + 1), dtype=np.uint64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        keys = _as_key_bits(keys)
        out = np.empty(keys.shape[0], dtype=np.int64)
        _lookup(self._table, self._keys, keys, out)
        return out

    def lookup_or_insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = _as_key_bits(keys)
        slots = np.empty(keys.shape[0], dtype=np.int64)
        is_new = np.zeros(keys.shape[0], dtype=np.bool_)
        i = 0
        while True:
            limit = int(self._table.shape[0] * _MAX_LOAD)
            if self._keys.shape[0] < limit:
                self._grow_keys(limit)
            i, self._n = _lookup_or_insert(self._table, self._keys, self._n, limit, keys, i, slots, is_new)
            if i == keys.shape[0]:
                return slots, is_new
            self._rehash(self._table.shape[0] * 2)

    def keys_by_slot(self) -> np.ndarray:
        view = self._keys[: self._n].view(np.int64)
        view.flags.writeable = False
        return view

    @classmethod
    def from_keys(cls, keys_by_slot: np.ndarray) -> "KeyIndex":
        keys = _as_key_bits(keys_by_slot)
        index = cls.__new__(cls)
        index._table = np.full(_capacity_for(keys.shape[0]), _EMPTY, dtype=np.int64)
        index._keys = keys.copy()
        index._n = keys.shape[0]
        dup = _rebuild(index._table, index._keys, index._n)
        if dup >= 0:
            key = int(index._keys[dup : dup + 1].view(np.int64)[0])
            raise ValueError(f"KeyIndex.from_keys: key {key} appears twice (again at slot {dup}); keys must be unique")
        return index

    def _grow_keys(self, at_least: int) -> None:
        grown = np.empty(max(at_least, 2 * self._keys.shape[0]), dtype=np.uint64)
        grown[: self._n] = self._keys[: self._n]
        self._keys = grown

    def _rehash(self, size: int) -> None:
        self._table = np.full(size, _EMPTY, dtype=np.int64)
        _rebuild(self._table, self._keys, self._n)


def _as_key_bits(keys: np.ndarray) -> np.ndarray:
    """Validate int64 keys and view them as uint64 bit patterns (the kernels hash and compare those)."""
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D int64 array, got shape {keys.shape}")
    if keys.dtype != np.int64:
        if keys.size and not np.issubdtype(keys.dtype, np.integer):
            raise ValueError(f"keys must be int64, got dtype {keys.dtype}")
        keys = keys.astype(np.int64)
    return np.ascontiguousarray(keys).view(np.uint64)
