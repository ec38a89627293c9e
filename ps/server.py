"""The PS shard's state and operations, independent of gRPC: tables over one ShardStore, clocks, stats.

Table specs are stored with the tables, so a restarted PS reopens its LMDB, rebuilds every table and its
clocks, and reports the clock it restored.
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from seraphim.proto import ps_pb2
from seraphim.proto.codec import decode_push_request, encode_push_request
from seraphim.proto.errors import AlreadyExists, InvalidArgument, NotFound
from seraphim.proto.resources import peak_rss_bytes
from seraphim.ps.clocks import ClockTable
from seraphim.ps.config import PSConfig
from seraphim.ps.ordered_pushes import OrderedPushes
from seraphim.ps.psf import run_psf
from seraphim.ps.table import PSTable, check_spec
from seraphim.storage.shard_store import ShardStore


@dataclass
class _Counter:
    rows: int = 0
    bytes: int = 0
    first: float = 0.0
    last: float = 0.0

    def add(self, n: int, nbytes: int) -> None:
        now = time.monotonic()
        if not self.rows:
            self.first = now
        self.rows += n
        self.bytes += nbytes
        self.last = now

    @property
    def rate(self) -> float:
        span = self.last - self.first
        return self.rows / span if span > 0 else 0.0


class ParameterServer:
    """One PS shard: create, pull, push, call, clock, snapshot, stats."""

    def __init__(self, config: PSConfig) -> None:
        config.validate()
        self.config = config
        self.started = time.monotonic()
        self._lock = threading.RLock()
        # deterministic + strict: every clock boundary is an atomic snapshot, and pushes are logged durably until
        # the snapshot of their clock, so a crash recovers exactly the acknowledged pushes (see push)
        self.durable_holds = config.deterministic and config.durability == "strict"
        self.snapshot_every = 1 if self.durable_holds else config.snapshot_every
        self.store = ShardStore(config.shard_dir, ram_bytes=config.ram_bytes, page_bytes=config.page_bytes,
                                durability="snapshot" if self.durable_holds else config.durability)
        self.tables: dict[str, PSTable] = {}
        for name, meta in self.store.tables().items():
            table = PSTable(ps_pb2.TableSpec.FromString(meta), config.shard, self.store)
            self.store.open_table(name, table.init_rows)
            table.start_versions(recovered=True, ordered_sums=config.deterministic)
            self.tables[name] = table
        self.restored_clock = self.store.restored_clock
        self.clocks = ClockTable(config.num_workers, config.staleness, start=self.restored_clock or 0,
                                 on_advance=self._on_clock_advance)
        self.ordered = OrderedPushes(self.clocks) if config.deterministic else None
        self._pulls: dict[str, _Counter] = {}
        self._pushes: dict[str, _Counter] = {}
        self._unnumbered = itertools.count(1)  # log places of pushes a client did not number
        if self.durable_holds:
            self._redo_logged_pushes()

    def table(self, name: str) -> PSTable:
        table = self.tables.get(name)
        if table is None:
            raise NotFound(f"table {name!r} does not exist on ps {self.config.shard}; "
                           f"tables here: {sorted(self.tables) or 'none'}")
        return table

    def create_table(self, request: ps_pb2.CreateTableRequest) -> ps_pb2.TableInfo:
        """Create the table, or attach to it when it exists with the same spec (every worker may ask)."""
        spec = request.spec
        check_spec(spec)
        if spec.num_shards != self.config.num_shards or request.shard != self.config.shard:
            raise InvalidArgument(
                f"table {spec.name!r} was routed as shard {request.shard} of {spec.num_shards}, but this PS is "
                f"shard {self.config.shard} of {self.config.num_shards}")
        with self._lock:
            existing = self.tables.get(spec.name)
            if existing is not None:
                if existing.spec != spec:
                    raise AlreadyExists(
                        f"table {spec.name!r} exists with a different spec ({_describe(existing.spec)}); asked for "
                        f"{_describe(spec)}; drop it first or use another name")
                return existing.info(created=False)
            table = PSTable(spec, self.config.shard, self.store)
            try:
                self.store.create_table(spec.name, table.row_bytes, table.dense_rows, spec.SerializeToString(),
                                        table.init_rows)
            except ValueError as exc:
                raise InvalidArgument(f"table {spec.name!r}: {exc}") from exc
            table.start_versions(recovered=False, ordered_sums=self.config.deterministic)
            self.tables[spec.name] = table
            self.store.snapshot(self.clocks.min_clock)
            return table.info(created=True)

    def drop_table(self, name: str) -> bool:
        with self._lock:
            self.table(name)
            self.store.drop_table(name)
            del self.tables[name]
            self.store.snapshot(self.clocks.min_clock)
            return True

    def pull(self, name: str, keys: np.ndarray, create: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """Weights of keys [len(keys), dim] in the wire dtype, written into `out` when given (see PSTable.pull)."""
        values = self.table(name).pull(keys, create, out)
        self._pulls.setdefault(name, _Counter()).add(len(keys), values.nbytes)
        return values

    def push(self, name: str, keys: np.ndarray, values: np.ndarray, mode: int, worker: int = 0, version: int = 0,
             lr_factor: float = 1.0, seq: int = 0, clock: int = 0) -> int:
        """Apply a push (see PSTable.push); returns the rows taken. In deterministic mode a gradient push is held
        until its clock completes, then applied in (worker, seq) order (ps/ordered_pushes.py); with strict
        durability too, every push of a table that is not versioned is logged before it is acknowledged, until the
        snapshot of its clock (a crash rolls the store back to that clock boundary, and the log redoes the rest)."""
        table = self.table(name)
        log = functools.partial(self._log_push, name, keys, values, mode, worker, version, lr_factor, seq)
        defer = None
        if self.ordered is not None:
            def defer(apply: Callable[[], None]) -> bool:
                place = self.ordered.hold(worker, clock, seq, apply)
                if place is not None:
                    log(place)
                return place is not None
        taken = table.push(keys, values, mode, worker, version, lr_factor, defer)
        if self.durable_holds and mode in (ps_pb2.ASSIGN, ps_pb2.ADD) and table.versions is None:
            log((clock or self.clocks.clock_of(worker) + 1, worker, seq, 0 if seq else next(self._unnumbered)))
        self._pushes.setdefault(name, _Counter()).add(len(keys), values.nbytes)
        return taken

    def _log_push(self, name: str, keys: np.ndarray, values: np.ndarray, mode: int, worker: int, version: int,
                  lr_factor: float, seq: int, place: tuple[int, int, int, int]) -> None:
        """Keep a push durably under (clock, worker, seq, arrival) until the snapshot of its clock."""
        if self.durable_holds:
            self.store.hold(struct.pack(">QiQQ", *place), encode_push_request(
                name, keys, values, mode, worker, version=version, lr_scale=lr_factor, seq=seq, clock=place[0]))

    def _redo_logged_pushes(self) -> None:
        """After a crash: apply the logged pushes of the clock in progress again (gradients are held again)."""
        for _, record in self.store.held():
            push = decode_push_request(record)
            self.push(push.table, push.keys, push.values, push.mode, push.worker, push.version, push.lr_scale or 1.0,
                      push.seq, push.clock)

    def call(self, name: str, psf: str, args: dict[str, str], tensors: list[np.ndarray]):
        table = self.table(name)
        try:
            return run_psf(psf, table.view(self.table), args, tensors)
        except KeyError as exc:
            raise NotFound(str(exc.args[0]) if exc.args else str(exc)) from exc
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    def clock(self, worker: int, clock: int, timeout_s: float) -> int:
        return self.clocks.tick(worker, clock, timeout_s or self.config.clock_timeout_s)

    def _on_clock_advance(self, min_clock: int) -> None:
        """Called under the clock lock when every worker has passed min_clock: a clock boundary, where held pushes
        land before the snapshot that may follow."""
        if self.ordered is not None:
            self.ordered.apply_through(min_clock)
        if self.config.durability == "strict" and not self.durable_holds:
            self.store.record_clock(min_clock)
        elif self.snapshot_every and min_clock % self.snapshot_every == 0:
            self.store.snapshot(min_clock)

    def snapshot(self) -> int:
        clock = self.clocks.min_clock
        self.store.snapshot(clock)
        return clock

    def stats(self) -> ps_pb2.StatsReply:
        store_stats = self.store.stats()
        store = store_stats.get("_store", {})
        reply = ps_pb2.StatsReply(ram_budget=int(store.get("ram_budget", 0)), ram_used=int(store.get("ram_used", 0)),
                                  lmdb_bytes=int(store.get("lmdb_bytes", 0)), evictions=int(store.get("evictions", 0)),
                                  uptime_s=time.monotonic() - self.started, peak_rss_bytes=peak_rss_bytes(),
                                  page_bytes=self.config.page_bytes)
        for name, table in sorted(self.tables.items()):
            s = store_stats.get(name, {})
            pulls, pushes = self._pulls.get(name, _Counter()), self._pushes.get(name, _Counter())
            reply.tables.add(name=name, kind="dense" if table.dense else "sparse", rows=int(s.get("rows", 0)),
                             bytes_ram=int(s.get("bytes_ram", 0)), bytes_disk=int(s.get("bytes_disk", 0)),
                             hits=int(s.get("hits", 0)), misses=int(s.get("misses", 0)),
                             hit_rate=float(s.get("hit_rate", 0.0)), pull_rows=pulls.rows, push_rows=pushes.rows,
                             pull_rows_per_s=pulls.rate, push_rows_per_s=pushes.rate, pull_bytes=pulls.bytes,
                             push_bytes=pushes.bytes,
                             applied_grad_sq=table.versions.recorded_grad_sq() if table.versions is not None else {})
        return reply

    def health(self) -> ps_pb2.HealthReply:
        return ps_pb2.HealthReply(
            status="SERVING", shard=self.config.shard, num_shards=self.config.num_shards,
            restored_clock=-1 if self.restored_clock is None else self.restored_clock,
            min_clock=self.clocks.min_clock, num_workers=self.config.num_workers, staleness=self.config.staleness,
            deterministic=self.config.deterministic, pid=os.getpid(), uptime_s=time.monotonic() - self.started, tables=sorted(self.tables))

    def close(self) -> None:
        """A clean stop keeps everything: snapshot at the current clock, then close (a crash keeps the last one)."""
        self.store.snapshot(self.clocks.min_clock)
        self.store.close()


def _describe(spec: ps_pb2.TableSpec) -> str:
    kind = "dense" if spec.kind == ps_pb2.DENSE else "sparse"
    shape = f"{spec.rows}x{spec.dim}" if kind == "dense" else f"dim {spec.dim}"
    return f"{kind} {shape} {spec.dtype}, optimizer {spec.optimizer.name or 'none'}"
