"""One table's partition on one PS: keys to slots, rows to weights and optimizer state, pull and push.

Rows live in the shard's paged store as ``[weights | optimizer state]`` bytes (RowLayout). A push of gradients
runs the table's optimizer on the touched rows inside one atomic read-modify-write of the store.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Callable, ContextManager, Iterator

import numpy as np

from seraphim.proto import ps_pb2
from seraphim.proto.errors import FailedPrecondition, InvalidArgument
from seraphim.proto.partition import dense_block, sparse_shard_of
from seraphim.ps.initializers import KeyedRandom, initializer_from_spec
from seraphim.ps.optimizers import Optimizer, optimizer_from_spec
from seraphim.ps.row_layout import DTYPES, FLOAT_DTYPES, RowLayout, from_bfloat16_bits
from seraphim.ps.versions import VersionedRows
from seraphim.storage.shard_store import ShardStore

#: optimizers whose state ends in a step count, which a versioned table's rows use as their version
STEP_COUNTING_OPTIMIZERS = ("adam", "adamw")


def check_spec(spec: ps_pb2.TableSpec) -> None:
    """Reject a table spec that cannot be served, naming the field, its value and what is allowed."""
    if not spec.name or "/" in spec.name or len(spec.name) > 200:
        raise InvalidArgument(f"table name {spec.name!r} is invalid: use 1-200 characters without '/'")
    if spec.dtype not in DTYPES:
        raise InvalidArgument(f"table {spec.name!r}: dtype {spec.dtype!r} is not one of {list(DTYPES)}")
    if spec.dim <= 0:
        raise InvalidArgument(f"table {spec.name!r}: dim must be positive, got {spec.dim}")
    if spec.kind == ps_pb2.DENSE and spec.rows <= 0:
        raise InvalidArgument(f"dense table {spec.name!r}: rows must be positive, got {spec.rows}")
    if spec.kind == ps_pb2.SPARSE and spec.rows != 0:
        raise InvalidArgument(f"sparse table {spec.name!r}: rows must be 0 (rows appear on first touch), got {spec.rows}")
    if spec.num_shards < 1:
        raise InvalidArgument(f"table {spec.name!r}: num_shards must be at least 1, got {spec.num_shards}")
    if spec.optimizer.name and spec.dtype not in FLOAT_DTYPES:
        raise InvalidArgument(f"table {spec.name!r}: an optimizer needs a float dtype {list(FLOAT_DTYPES)}, "
                              f"not {spec.dtype!r}")
    for g in spec.lr_scales:
        if g.end <= g.start or g.scale < 0:
            raise InvalidArgument(f"table {spec.name!r}: lr scale group [{g.start}, {g.end}) x{g.scale} "
                                  f"needs start < end and scale >= 0")
    if spec.sum_workers < 0:
        raise InvalidArgument(f"table {spec.name!r}: sum_workers must be >= 0, got {spec.sum_workers}")
    if spec.sum_workers and (spec.kind != ps_pb2.DENSE or spec.optimizer.name not in STEP_COUNTING_OPTIMIZERS):
        raise InvalidArgument(f"table {spec.name!r}: a versioned table (sum_workers={spec.sum_workers}) must be "
                              f"dense with an optimizer that counts steps {list(STEP_COUNTING_OPTIMIZERS)}; got a "
                              f"{'dense' if spec.kind == ps_pb2.DENSE else 'sparse'} table with optimizer "
                              f"{spec.optimizer.name or 'none'!r}")


class PSTable:
    """A table partition held by this PS shard, over the shard's ShardStore."""

    def __init__(self, spec: ps_pb2.TableSpec, shard: int, store: ShardStore) -> None:
        check_spec(spec)
        self.spec = spec
        self.name = spec.name
        self.shard = shard
        self.store = store
        self.dense = spec.kind == ps_pb2.DENSE
        try:
            self.optimizer: Optimizer | None = (
                optimizer_from_spec(spec.optimizer.name, dict(spec.optimizer.params)) if spec.optimizer.name else None)
            self.initializer = initializer_from_spec(spec.init.name or "zeros", dict(spec.init.params))
        except ValueError as exc:
            raise InvalidArgument(f"table {spec.name!r}: {exc}") from exc
        state_cols = self.optimizer.state_cols(spec.dim) if self.optimizer else 0
        self.layout = RowLayout(spec.dtype, int(spec.dim), state_cols)
        self.row_start, self.row_end = (dense_block(spec.rows, spec.num_shards, shard) if self.dense else (0, 0))
        groups = sorted(spec.lr_scales, key=lambda g: g.start)
        self._scale_starts = np.array([g.start for g in groups], dtype=np.int64)
        self._scale_ends = np.array([g.end for g in groups], dtype=np.int64)
        self._scale_values = np.array([g.scale for g in groups], dtype=np.float32)
        self.versions: VersionedRows | None = None  # set by start_versions for a versioned table

    def start_versions(self, recovered: bool, ordered_sums: bool = False) -> None:
        """Versioned tables: each row's version from its stored step count (a recovered table), or 0 (a new one);
        ordered_sums sums a version's gradients in worker order (deterministic mode)."""
        if not self.spec.sum_workers:
            return
        versions = np.zeros(self.dense_rows, dtype=np.int64)
        if recovered:
            for slots, rows in self.store.scan(self.name):
                versions[slots] = self.layout.state(rows)[:, -1].astype(np.int64)
        self.versions = VersionedRows(self.name, versions, self.layout.dim, int(self.spec.sum_workers), ordered_sums)

    def reading(self, keys: np.ndarray, min_version: int, wait_s: float) -> ContextManager[np.ndarray | None]:
        """Around a pull: a versioned table waits until the keys' rows hold min_version, then keeps updates out
        while the rows are read and yields their versions; any other table yields None."""
        if self.versions is None:
            if min_version:
                raise InvalidArgument(f"pull from {self.name!r} asks for min_version {min_version}, but the table "
                                      f"is not versioned (create it with sum_workers > 0)")
            return nullcontext(None)
        return self.versions.reading(self.slots(keys), min_version, wait_s)

    @property
    def row_bytes(self) -> int:
        return self.layout.row_bytes

    @property
    def dense_rows(self) -> int | None:
        return self.row_end - self.row_start if self.dense else None

    def init_rows(self, slots: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        """Initial bytes of new rows: the initializer's weights and zero optimizer state (zero means fresh).

        A dense page is seeded by the table seed and its first slot, so it is the same whenever it is first made;
        sparse rows draw from their keys (KeyedRandom), so they do not depend on which pull made them.
        """
        n = len(slots)
        rng = (KeyedRandom(int(self.spec.seed), keys) if keys is not None
               else np.random.default_rng([int(self.spec.seed), self.shard, int(slots[0]) if n else 0]))
        if self.spec.dtype in FLOAT_DTYPES:
            weights = self.initializer(n, self.layout.dim, rng)
        elif self.spec.dtype == "int64":
            weights = np.zeros((n, self.layout.dim), dtype=np.int64)
        else:
            weights = np.zeros((n, self.layout.dim), dtype=np.uint8)
        state = np.zeros((n, self.layout.state_cols), dtype=np.float32) if self.layout.state_cols else None
        return self.layout.pack(weights, state)

    def slots(self, keys: np.ndarray, create: bool = True) -> np.ndarray:
        """Store slots of keys that this shard holds; keys of another shard or out of range are InvalidArgument.

        Sparse keys already in the index passed the routing check when they were made, so only unseen keys are
        hashed again: in steady training that is none, and a lookup is all a pull or push pays.
        """
        if self.dense:
            bad = (keys < self.row_start) | (keys >= self.row_end)
            if bad.any():
                key = int(keys[np.argmax(bad)])
                where = "outside the table" if not 0 <= key < self.spec.rows else "held by another shard"
                raise InvalidArgument(
                    f"key {key} of dense table {self.name!r} ({self.spec.rows} rows) is {where}; this PS (shard "
                    f"{self.shard}) holds rows [{self.row_start}, {self.row_end})")
            return keys - self.row_start
        slots = self.store.resolve(self.name, keys, create=False)
        unseen = keys[slots < 0]
        if not len(unseen):
            return slots
        if self.spec.num_shards > 1:
            wrong = sparse_shard_of(unseen, self.spec.num_shards) != self.shard
            if wrong.any():
                raise InvalidArgument(
                    f"key {int(unseen[np.argmax(wrong)])} of sparse table {self.name!r} belongs to shard "
                    f"{int(sparse_shard_of(unseen[wrong][:1], self.spec.num_shards)[0])}, not this PS (shard "
                    f"{self.shard}); route keys with seraphim.proto.partition.sparse_shard_of")
        return self.store.resolve(self.name, keys, create=True) if create else slots

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        return slots + self.row_start if self.dense else self.store.keys_of(self.name, slots)

    def pull(self, keys: np.ndarray, create: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """Weights of keys in the wire dtype, [len(keys), dim]; with create=False unseen sparse keys read as zeros.

        `out` (C-contiguous, wire dtype, [len(keys), dim]; a reply buffer) receives them instead of a new array: the
        weights are copied once, from their pages into it, without the optimizer state stored beside them.
        """
        shape = (len(keys), self.layout.dim)
        if out is None:
            out = np.empty(shape, dtype=self.layout.wire_dtype)
        elif out.shape != shape or out.dtype != self.layout.wire_dtype or not out.flags.c_contiguous:
            raise ValueError(f"pull from {self.name!r}: out must be C-contiguous {self.layout.wire_dtype} "
                             f"{list(shape)}, got {out.dtype} {list(out.shape)}")
        raw = out.view(np.uint8)  # [n, weight bytes]: the prefix of each stored row
        slots = self.slots(keys, create)
        if create or self.dense:
            self.store.gather(self.name, slots, out=raw)
            return out
        present = slots >= 0
        out[~present] = 0
        if present.any():
            raw[present] = self.store.gather(self.name, slots[present],
                                             out=np.empty((int(present.sum()), raw.shape[1]), dtype=np.uint8))
        return out

    def push(self, keys: np.ndarray, values: np.ndarray, mode: int, worker: int = 0, version: int = 0,
             lr_factor: float = 1.0, defer: Callable[[Callable[[], None]], bool] | None = None) -> int:
        """Apply gradients (optimizer), assign or add `values` [len(keys), dim] to unique keys; returns the rows
        taken. A versioned table sums the gradients of `version` over its workers first (see ps/versions.py);
        `lr_factor` multiplies the learning rate of this update. With `defer`, a gradient update of a table that
        is not versioned is checked now and handed to `defer` to run later; it takes no rows when `defer` drops it
        (ps/ordered_pushes.py)."""
        if mode == ps_pb2.ABSENT:
            if self.versions is None:
                raise InvalidArgument(f"push to {self.name!r}: mode ABSENT (no gradient at a version) applies to "
                                      f"versioned tables only; this one applies every push")
            if values.size:
                raise InvalidArgument(f"push to {self.name!r}: mode ABSENT carries keys only, got {values.size} values")
        elif values.shape != (len(keys), self.layout.dim):
            raise InvalidArgument(f"push to {self.name!r}: values have shape {list(values.shape)}, expected "
                                  f"[{len(keys)}, {self.layout.dim}] (one row of dim {self.layout.dim} per key)")
        ordered = np.sort(keys)  # 5 us for 2k keys (SIMD sort); np.unique, with its masks and copies, takes 90
        repeats = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(repeats):
            raise InvalidArgument(f"push to {self.name!r}: key {int(repeats[0])} repeats; merge duplicate keys "
                                  f"before pushing (the PS client does this)")
        if not (lr_factor > 0 and np.isfinite(lr_factor)):
            raise InvalidArgument(f"push to {self.name!r}: lr_scale must be a finite number > 0, got {lr_factor}")
        if mode in (ps_pb2.GRADIENT, ps_pb2.ABSENT) and self.versions is not None:
            grads = None if mode == ps_pb2.ABSENT else self._as_float32(values)
            return self.versions.add(self.slots(keys), grads, version, worker, lr_factor,
                                     lambda rows, sums, factor: self._apply_gradients(rows + self.row_start, sums,
                                                                                      factor))
        if mode == ps_pb2.GRADIENT and defer is not None:
            self._require_optimizer()
            if not defer(partial(self._apply_gradients, keys, self._as_float32(values), lr_factor)):
                return 0
        elif mode == ps_pb2.GRADIENT:
            self._apply_gradients(keys, values, lr_factor)
        elif mode in (ps_pb2.ASSIGN, ps_pb2.ADD):
            with self.versions.cond if self.versions is not None else nullcontext():
                self._set_values(keys, values, add=mode == ps_pb2.ADD)
        else:
            raise InvalidArgument(f"push to {self.name!r}: unknown mode {mode}; use GRADIENT, ASSIGN, ADD or ABSENT")
        return len(keys)

    def _require_optimizer(self) -> None:
        if self.optimizer is None:
            raise FailedPrecondition(
                f"table {self.name!r} has no optimizer, so it cannot take gradients; push with mode ASSIGN or ADD, "
                f"or create the table with an optimizer")

    def _apply_gradients(self, keys: np.ndarray, values: np.ndarray, lr_factor: float = 1.0) -> None:
        self._require_optimizer()
        grads = self._as_float32(values)
        scale = self.lr_scale(keys)
        if lr_factor != 1.0:
            scale *= np.float32(lr_factor)
        optimizer, layout = self.optimizer, self.layout
        in_place = layout.dtype == "float32"

        def step(rows: np.ndarray) -> np.ndarray:
            """rows is the store's fresh copy of the touched rows: float32 weights are updated in it, in place."""
            if in_place:
                optimizer.apply(rows[:, :layout.dim * 4].view(np.float32), layout.state(rows), grads, scale)
                return rows
            weights, state = layout.weights_f32(rows), layout.state(rows).copy()
            optimizer.apply(weights, state, grads, scale)
            return layout.pack(weights, state)

        self.store.update(self.name, self.slots(keys), step)

    def _set_values(self, keys: np.ndarray, values: np.ndarray, add: bool) -> None:
        layout = self.layout
        if self.spec.dtype in FLOAT_DTYPES:
            new = self._as_float32(values)
        elif self.spec.dtype == "int64":
            if values.dtype != np.int64:
                raise InvalidArgument(f"push to int64 table {self.name!r}: values are {values.dtype}, expected int64")
            new = values
        else:
            if add:
                raise InvalidArgument(f"push to bytes table {self.name!r}: ADD is undefined for bytes; use ASSIGN")
            if values.dtype != np.uint8:
                raise InvalidArgument(f"push to bytes table {self.name!r}: values must travel as dtype 'bytes'")
            new = values

        def write(rows: np.ndarray) -> np.ndarray:
            state = layout.state(rows) if layout.state_cols else None
            if self.spec.dtype in FLOAT_DTYPES:
                weights = layout.weights_f32(rows) + new if add else new
            elif self.spec.dtype == "int64":
                weights = layout.weights_raw(rows) + new if add else new
            else:
                weights = new
            return layout.pack(weights, state)

        self.store.update(self.name, self.slots(keys), write)

    def _as_float32(self, values: np.ndarray) -> np.ndarray:
        if values.dtype == np.float32:
            return values
        if values.dtype == np.float16 or values.dtype == np.float64:
            return values.astype(np.float32)
        if values.dtype == np.uint16 and self.spec.dtype == "bfloat16":
            return from_bfloat16_bits(values)
        raise InvalidArgument(f"push to {self.name!r} ({self.spec.dtype}): values of dtype {values.dtype} are not "
                              f"float32, float16 or bfloat16")

    def lr_scale(self, keys: np.ndarray) -> np.ndarray:
        """Per-key learning-rate multiplier from the table's lr scale groups (1 outside every group)."""
        scale = np.ones(len(keys), dtype=np.float32)
        if len(self._scale_starts):
            idx = np.searchsorted(self._scale_starts, keys, side="right") - 1
            inside = (idx >= 0) & (keys < self._scale_ends[np.maximum(idx, 0)])
            scale[inside] = self._scale_values[idx[inside]]
        return scale

    def info(self, created: bool) -> ps_pb2.TableInfo:
        return ps_pb2.TableInfo(spec=self.spec, created=created, row_start=self.row_start, row_end=self.row_end,
                                num_rows=self.store.num_slots(self.name))

    def view(self, lookup: Callable[[str], "PSTable"]) -> "TableView":
        return TableView(self, lookup)


class TableView:
    """The PartitionView a PSF sees: this partition's keys and float weights, chunk by chunk."""

    def __init__(self, table: PSTable, lookup: Callable[[str], PSTable]) -> None:
        if table.spec.dtype not in FLOAT_DTYPES:
            raise InvalidArgument(f"PS functions need a float table; {table.name!r} is {table.spec.dtype}")
        self._table = table
        self._lookup = lookup
        self.name = table.name
        self.dim = table.layout.dim
        self.dtype = table.spec.dtype
        self.kind = "dense" if table.dense else "sparse"

    def scan(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t = self._table
        for slots, rows in t.store.scan(t.name):
            yield t.keys_of(slots), t.layout.weights_f32(rows)

    def read(self, keys: np.ndarray) -> np.ndarray:
        """Float weights of keys this partition holds; a sparse key never touched reads as zeros (not created)."""
        t = self._table
        slots = t.slots(np.asarray(keys, dtype=np.int64), create=False)
        out = np.zeros((len(slots), self.dim), dtype=np.float32)
        present = slots >= 0
        if present.any():
            out[present] = t.layout.weights_f32(t.store.gather(t.name, slots[present]))
        return out

    def update_all(self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        t, layout = self._table, self._table.layout
        for slots, _ in t.store.scan(t.name):
            keys = t.keys_of(slots)

            def apply(rows: np.ndarray, keys: np.ndarray = keys) -> np.ndarray:
                state = layout.state(rows) if layout.state_cols else None
                return layout.pack(np.asarray(fn(keys, layout.weights_f32(rows)), dtype=np.float32), state)

            t.store.update(t.name, slots, apply)

    def other(self, table: str) -> "TableView":
        other = self._lookup(table)
        mine = self._table.spec
        if (other.dense != self._table.dense or other.spec.rows != mine.rows
                or other.spec.num_shards != mine.num_shards or other.layout.dim != self.dim):
            raise InvalidArgument(f"PS function over {self.name!r} and {table!r} needs both tables partitioned "
                                  f"alike (same kind, rows, dim and shard count)")
        return TableView(other, self._lookup)
