"""Paged table storage for a PS shard: RAM page arena over LMDB, snapshots and recovery."""

from seraphim.storage.key_index import KeyIndex
from seraphim.storage.shard_store import InitRows, ShardStore

__all__ = ["InitRows", "KeyIndex", "ShardStore"]
