"""The PS client: routes keys to shards, merges duplicates, keeps requests in flight, retries while a PS restarts.

A pull sends each shard only the unique keys it holds, all shards at once, and writes the replies straight into
the caller's order; a push sums the gradients of repeated keys first. One compiled pass over the batch (``_plan``)
finds the unique keys, their shards and each key's row, so routing costs no sort. Pull replies and push requests
travel as hand-built wire bytes (proto.codec), the rows copied once each way. Calls to the shards run as blocking
calls, one on the calling thread and the rest on a persistent pool (a grpc ``.future()`` starts a channel thread
per call when none is in flight). Messages over the size limit go through the shards' ``Chunked`` stream. A shard
that is unreachable (restarting) is retried with backoff for ``retry_s``.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from abc import ABC, abstractmethod
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence, TypeVar

import grpc
import numpy as np
from numba import njit
from prometheus_client import CollectorRegistry

from seraphim.proto import ps_pb2, ps_pb2_grpc
from seraphim.proto.codec import WIRE_DTYPES, decode_array, decode_versioned_pull_reply, encode_array, encode_push_request
from seraphim.proto.errors import DataLoss, DeadlineExceeded, InvalidArgument, from_rpc_error
from seraphim.proto.partition import dense_block
from seraphim.proto.rpc import CHUNK_BYTES, MAX_MESSAGE_BYTES, TlsFiles, join_chunks, make_channel, split_message, token_metadata
from seraphim.proto.telemetry import RpcMetrics
from seraphim.worker.psf_merge import merge_partials
from seraphim.worker.specs import Initializer, Optimizer, Zeros, initializer_spec, optimizer_spec

_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE,)
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "bytes": 1}
_SERVICE = "/" + ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
T = TypeVar("T")


@dataclass
class _Shard:
    index: int
    address: str
    channel: grpc.Channel
    stub: ps_pb2_grpc.ParameterServerStub

    def __post_init__(self) -> None:
        # Pull answers and Push sends wire bytes (proto.codec), so these two skip the generated (de)serializer.
        self.wire = {"Pull": self.channel.unary_unary(f"{_SERVICE}/Pull",
                                                      request_serializer=ps_pb2.PullRequest.SerializeToString),
                     "Push": self.channel.unary_unary(f"{_SERVICE}/Push",
                                                      response_deserializer=ps_pb2.PushReply.FromString)}

    def method(self, name: str) -> grpc.UnaryUnaryMultiCallable:
        return self.wire.get(name) or getattr(self.stub, name)

    @property
    def where(self) -> str:
        return f"ps {self.index} ({self.address})"


# -- compiled kernels of the batch path ------------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _splitmix64(x):  # pragma: no cover - compiled
    """seraphim.proto.partition.splitmix64 on one uint64 (the routing contract; a test checks they agree)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _plan(keys, num_shards, starts):  # pragma: no cover - compiled
    """One pass over a batch of keys (uint64 bits) with an open-addressing table: its unique keys grouped by shard
    (each shard's in first-seen order), the group bounds [num_shards + 1], and each key's row among the unique keys.

    Shards: dense row blocks when `starts` (each block's first row) is given, else splitmix64(key) % num_shards.
    """
    n = keys.shape[0]
    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = np.uint64(cap - 1)
    table = np.full(cap, -1, dtype=np.int64)
    uniq = np.empty(n, dtype=np.uint64)
    shard_of = np.empty(n, dtype=np.int64)
    uid = np.empty(n, dtype=np.int64)
    bounds = np.zeros(num_shards + 1, dtype=np.int64)
    m = 0
    for i in range(n):
        k = keys[i]
        h = _splitmix64(k)
        j = h & mask
        while True:
            u = table[j]
            if u < 0:
                table[j] = m
                uniq[m] = k
                if starts.shape[0]:
                    s = np.searchsorted(starts, np.int64(k), side="right") - 1
                else:
                    s = np.int64(h % np.uint64(num_shards))
                shard_of[m] = s
                bounds[s + 1] += 1
                uid[i] = m
                m += 1
                break
            if uniq[u] == k:
                uid[i] = u
                break
            j = (j + np.uint64(1)) & mask
    for s in range(num_shards):
        bounds[s + 1] += bounds[s]
    fill = bounds[:num_shards].copy()
    grouped = np.empty(m, dtype=np.uint64)
    row_of_unique = np.empty(m, dtype=np.int64)
    for u in range(m):
        r = fill[shard_of[u]]
        fill[shard_of[u]] = r + 1
        grouped[r] = uniq[u]
        row_of_unique[u] = r
    row_of = np.empty(n, dtype=np.int64)
    for i in range(n):
        row_of[i] = row_of_unique[uid[i]]
    return grouped, bounds, row_of


@njit(cache=True, nogil=True)
def _expand(out, values, row_of, lo, hi):  # pragma: no cover - compiled
    """out[i] = values[row_of[i] - lo] for every key whose row is in [lo, hi): one shard's reply, repeats included,
    written in the caller's order straight from the reply bytes."""
    for i in range(row_of.shape[0]):
        r = row_of[i]
        if lo <= r < hi:
            for j in range(out.shape[1]):
                out[i, j] = values[r - lo, j]


@njit(cache=True, nogil=True)
def _segment_add(out, values, row_of):  # pragma: no cover - compiled
    """out[row_of[i]] += values[i] for every i, in order: sums the rows of repeated keys into a zeroed `out`."""
    for i in range(row_of.shape[0]):
        r = row_of[i]
        for j in range(out.shape[1]):
            out[r, j] += values[i, j]


@njit(cache=True, nogil=True)
def _first_rows(out, values, row_of):  # pragma: no cover - compiled
    """out[row_of[i]] = values[i] for the first i of each row (assign: the first occurrence of a key wins)."""
    for i in range(row_of.shape[0] - 1, -1, -1):
        r = row_of[i]
        for j in range(out.shape[1]):
            out[r, j] = values[i, j]


class PSClient:
    """A connection to every PS shard of a cluster; tables are created or attached through it."""

    def __init__(self, addresses: Sequence[str], worker_id: int = 0, num_workers: int = 1,
                 token: str | None = None, tls: TlsFiles | None = None, timeout_s: float = 120.0,
                 retry_s: float = 120.0, clock_timeout_s: float = 600.0, max_in_flight: int = 16,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, rpc: RpcMetrics | None = None) -> None:
        """``rpc``: where the calls' latency and bytes go (a worker process exports them; see proto/telemetry.py)."""
        if not addresses:
            raise InvalidArgument("PSClient needs at least one PS address")
        if not 0 <= worker_id < num_workers:
            raise InvalidArgument(f"worker_id {worker_id} is outside [0, num_workers={num_workers})")
        self.worker_id, self.num_workers = worker_id, num_workers
        self.timeout_s, self.retry_s, self.clock_timeout_s = timeout_s, retry_s, clock_timeout_s
        self.max_message_bytes = max_message_bytes
        self._chunk_threshold = max_message_bytes - 64 * 1024
        self._chunk_bytes = min(CHUNK_BYTES, max_message_bytes // 2)
        self._metadata = token_metadata(token)
        self._tls = tls
        self.rpc = rpc or RpcMetrics(CollectorRegistry(), "seraphim_worker")
        self._shards: list[_Shard] = []
        self.connect(addresses)
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._push_seq = itertools.count(1)  # numbers this clock's pushes in the order made (deterministic PS)
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        workers = max(4, len(addresses))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ps-client")
        # the calls to the other shards of a request (the caller's thread makes the first): enough threads for the
        # pool's workers and one caller to fan out at once
        self._io = ThreadPoolExecutor(max_workers=(workers + 1) * max(1, len(addresses) - 1),
                                      thread_name_prefix="ps-client-io")
        self._clock = 0
        self._tables: dict[str, "Table"] = {}

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def connect(self, addresses: Sequence[str]) -> None:
        """(Re)open channels to the shards, e.g. after the scheduler moved a restarted PS to a new address."""
        old = self._shards
        self._shards = []
        for i, address in enumerate(addresses):
            channel = make_channel(address, self._tls, self.max_message_bytes)
            self._shards.append(_Shard(i, address, channel, ps_pb2_grpc.ParameterServerStub(channel)))
        for shard in old:
            shard.channel.close()

    # -- calls -----------------------------------------------------------------------------------------------
    def _invoke(self, shard: int, method: str, request: Any, reply_cls: type | None, reply_bytes: int = 0,
                timeout_s: float | None = None) -> Any:
        """One blocking request to one shard, re-sent with backoff while the shard is unavailable (retry_s) and
        through Chunked when it is over the message limit. `request` is a message or wire bytes; reply_cls None
        returns the reply's wire bytes."""
        size = len(request) if isinstance(request, bytes) else request.ByteSize()
        chunked = max(size, reply_bytes) > self._chunk_threshold
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        start, received = time.perf_counter(), 0
        try:
            while True:
                try:
                    if chunked:
                        reply = self._chunked_call(shard, method, request, reply_cls, timeout_s)
                    else:
                        reply = self._shards[shard].method(method)(request, timeout=timeout_s,
                                                                   metadata=self._metadata)
                    received = len(reply) if isinstance(reply, bytes) else reply.ByteSize()
                    return reply
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not chunked:
                        chunked = True
                        continue
                    if err.code() not in _RETRY_CODES or time.monotonic() + delay > deadline:
                        self.rpc.error(method, err.code().name)
                        raise from_rpc_error(err, self._shards[shard].where) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            self.rpc.observe(method, time.perf_counter() - start, size, received)

    def _chunked_call(self, shard: int, method: str, request: Any, reply_cls: type | None, timeout_s: float) -> Any:
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        replies = self._shards[shard].stub.Chunked(split_message(method, payload, self._chunk_bytes),
                                                   timeout=timeout_s, metadata=self._metadata)
        _, reply = join_chunks(replies)
        return reply if reply_cls is None else reply_cls.FromString(reply)

    def _fan_out(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run jobs at once (calls to different shards): the first on this thread, the others on the I/O pool."""
        if not jobs:
            return []
        others = [self._io.submit(job) for job in jobs[1:]]
        first = jobs[0]()
        return [first] + [f.result() for f in others]

    def _all(self, method: str, make_request: Callable[[int], Any], reply_cls: type,
             timeout_s: float | None = None) -> list[Any]:
        return self._fan_out([partial(self._invoke, s, method, make_request(s), reply_cls, timeout_s=timeout_s)
                              for s in range(self.num_shards)])

    # -- tables ----------------------------------------------------------------------------------------------
    def _create(self, spec: ps_pb2.TableSpec) -> list[ps_pb2.TableInfo]:
        spec.num_shards = self.num_shards
        return self._all("CreateTable", lambda s: ps_pb2.CreateTableRequest(spec=spec, shard=s), ps_pb2.TableInfo)

    def sparse_table(self, name: str, dim: int, dtype: str = "float32", init: Initializer = Zeros(),
                     optimizer: Optimizer | None = None, lr_scales: Sequence[tuple[int, int, float]] = (),
                     seed: int = 0) -> "SparseTable":
        """Create (or attach to, if it exists with the same spec) a sparse table: int64 key -> row of dim."""
        spec = _spec(name, ps_pb2.SPARSE, dtype, 0, dim, init, optimizer, lr_scales, seed)
        table = SparseTable(self, spec, created=all(info.created for info in self._create(spec)))
        self._tables[name] = table
        return table

    def dense_table(self, name: str, shape: tuple[int, int], dtype: str = "float32", init: Initializer = Zeros(),
                    optimizer: Optimizer | None = None, lr_scales: Sequence[tuple[int, int, float]] = (),
                    seed: int = 0, sum_workers: int = 0) -> "DenseTable":
        """Create (or attach to) a dense [rows, cols] table, range-partitioned over the shards in row blocks.

        sum_workers > 0 makes it versioned: gradient pushes name a version, and the PS sums one version's
        gradients from that many workers before it applies the optimizer once (ps/versions.py)."""
        if len(shape) != 2:
            raise InvalidArgument(f"dense table {name!r}: shape must be (rows, cols), got {shape}")
        spec = _spec(name, ps_pb2.DENSE, dtype, shape[0], shape[1], init, optimizer, lr_scales, seed)
        spec.sum_workers = sum_workers
        table = DenseTable(self, spec, created=all(info.created for info in self._create(spec)))
        self._tables[name] = table
        return table

    def drop_table(self, name: str) -> None:
        self._all("DropTable", lambda s: ps_pb2.DropTableRequest(name=name), ps_pb2.DropTableReply)
        self._tables.pop(name, None)

    # -- requests in flight ----------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], Any], push: bool = True) -> Future:
        """Run fn on the pool; at most max_in_flight run or wait at once, and flush() waits for the pushes."""
        self._in_flight.acquire()
        future = self._pool.submit(fn)
        if push:
            with self._pending_lock:
                self._pending.add(future)

        def done(f: Future) -> None:
            self._in_flight.release()
            if push:
                with self._pending_lock:
                    self._pending.discard(f)

        future.add_done_callback(done)
        return future

    def flush(self) -> None:
        """Wait for every push in flight; raise the first error one of them met."""
        with self._pending_lock:
            pending = list(self._pending)
        for future in pending:
            future.result()

    # -- clocks and control ----------------------------------------------------------------------------------
    @property
    def clock_value(self) -> int:
        return self._clock

    def clock(self) -> int:
        """End this worker's iteration: flush pushes, tick every shard, wait as far as the staleness says."""
        self.flush()
        self._clock += 1
        self.renumber_pushes()
        return self._tick(self._clock)

    def _tick(self, clock: int) -> int:
        """Tell every shard this worker completed `clock`, waiting as far as the staleness says; the min clock."""
        replies = self._all("Clock", lambda s: ps_pb2.ClockRequest(worker=self.worker_id, clock=clock,
                                                                    timeout_s=self.clock_timeout_s),
                            ps_pb2.ClockReply, timeout_s=self.clock_timeout_s + 30)
        return min(r.min_clock for r in replies)

    def resume(self) -> int:
        """Continue from the clock the shards hold for this worker (after a restart); returns it.

        A worker stopped between its Clock calls to the shards leaves some of them a clock behind the others. It
        had flushed that clock's pushes before its first Clock call, so the clock is complete: the shards that
        missed the tick get it now. Resuming a clock earlier would redo it against a model that the ahead shards
        have already updated with it (their part of the redo is dropped, the rest computed from mixed weights)."""
        replies = self._all("GetClock", lambda s: ps_pb2.GetClockRequest(), ps_pb2.ClockReply)
        held = [r.clocks[self.worker_id] for r in replies]
        self._clock = max(held)
        if min(held) < self._clock:
            self._tick(self._clock)
        self.renumber_pushes()  # the clock is redone: its pushes are numbered as the first time
        return self._clock

    def renumber_pushes(self) -> None:
        """Number the pushes of the clock in progress from 1 again. A restarted worker that rewrites work already on
        the PS while it catches up (without ticking) calls this when it reaches the clock it resumed at: its redo
        of that clock must number its pushes as the first run did, since a deterministic PS replaces a held
        gradient push by its number, and a shifted number would apply the redone gradient on top of the first."""
        self._push_seq = itertools.count(1)

    def snapshot(self) -> list[int]:
        return [r.clock for r in self._all("Snapshot", lambda s: ps_pb2.SnapshotRequest(), ps_pb2.SnapshotReply)]

    def stats(self) -> list[ps_pb2.StatsReply]:
        return self._all("Stats", lambda s: ps_pb2.StatsRequest(), ps_pb2.StatsReply)

    def applied_grad_sq(self, tables: Sequence[str], version: int) -> float | None:
        """|summed gradient|^2 that versioned `tables` applied at `version`, over every shard (the global batch's
        gradient, for the noise scale); None when no shard has recorded that version (yet, or any more)."""
        values = [t.applied_grad_sq[version] for reply in self.stats() for t in reply.tables
                  if t.name in tables and version in t.applied_grad_sq]
        return float(sum(values)) if values else None

    def digest(self, tables: Sequence[str] | None = None) -> str:
        """A hex digest of `tables` (default: every table with an optimizer that this client opened: the trained
        model), by name: equal exactly when two runs end with bitwise the same model (reproducible runs, chaos)."""
        names = sorted(n for n, t in self._tables.items() if t.spec.optimizer.name) if tables is None else tables
        combined = hashlib.sha256()
        for name in names:
            combined.update(f"{name}:{self.table_digest(name)};".encode())
        return combined.hexdigest()

    def table_digest(self, name: str) -> str:
        """A hex digest of table `name`'s keys and weights (the PSF ``digest`` of every shard, in shard order); the
        table need not be open here."""
        request = ps_pb2.PsfRequest(table=name, name="digest", worker=self.worker_id)
        replies = self._all("Call", lambda s: request, ps_pb2.PsfReply)
        return hashlib.sha256(b"".join(decode_array(r.tensors[0]).tobytes() for r in replies)).hexdigest()

    def health(self) -> list[ps_pb2.HealthReply]:
        return self._all("Health", lambda s: ps_pb2.HealthRequest(), ps_pb2.HealthReply)

    # -- a table's initial values, written once by worker 0 and awaited by the others ---------------------------
    def initialized(self, table: str) -> bool:
        """Whether `table`'s initial values were published: its marker table exists on every shard."""
        return all(f"{table}.ready" in h.tables for h in self.health())

    def publish_initialized(self, table: str) -> None:
        """Say that `table` holds its initial values (after writing them); a restarted writer finds the marker."""
        self.sparse_table(f"{table}.ready", dim=1)

    def wait_initialized(self, table: str, timeout_s: float) -> None:
        """Block until worker 0 has published `table`'s initial values, so every worker starts from the same ones."""
        deadline = time.monotonic() + timeout_s
        while not self.initialized(table):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"worker {self.worker_id} waited {timeout_s:.0f}s for worker 0 to write the "
                                       f"initial values of {table!r} to the PS")
            time.sleep(0.05)

    def open_initialized(self, name: str, open_table: Callable[[], T], write: Callable[[T], None], writer: bool,
                         timeout_s: float) -> T:
        """Open table `name` whose initial values one writer (worker 0) puts there once: the others wait for its
        marker before they open it, and a restarted writer rewrites only a table it created or never marked."""
        if not writer:
            self.wait_initialized(name, timeout_s)
        table = open_table()
        if writer:
            if table.created or not self.initialized(name):
                write(table)
            self.publish_initialized(name)
        return table

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
            self._io.shutdown(wait=True)
            for shard in self._shards:
                shard.channel.close()

    def __enter__(self) -> "PSClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _spec(name: str, kind: int, dtype: str, rows: int, dim: int, init: Initializer, optimizer: Optimizer | None,
          lr_scales: Sequence[tuple[int, int, float]], seed: int) -> ps_pb2.TableSpec:
    if dtype not in _ITEMSIZE:
        raise InvalidArgument(f"table {name!r}: dtype {dtype!r} is not one of {list(_ITEMSIZE)}")
    return ps_pb2.TableSpec(
        name=name, kind=kind, dtype=dtype, rows=int(rows), dim=int(dim), init=initializer_spec(init),
        optimizer=optimizer_spec(optimizer), seed=seed,
        lr_scales=[ps_pb2.LrScaleGroup(start=int(a), end=int(b), scale=float(c)) for a, b, c in lr_scales])


def merge_duplicates(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and the sum of the value rows of each (one sort, one compiled pass over the rows)."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    values = np.asarray(values)
    merged = np.zeros((len(uniq), *values.shape[1:]), dtype=values.dtype)
    _segment_add(merged.reshape(len(uniq), -1), values.reshape(len(keys), -1), inverse.ravel())
    return uniq, merged


_PUSH_MODES = {"gradient": ps_pb2.GRADIENT, "assign": ps_pb2.ASSIGN, "add": ps_pb2.ADD}


class Table(ABC):
    """A table as a worker sees it: pull rows by key, push gradients, call PS functions."""

    def __init__(self, client: PSClient, spec: ps_pb2.TableSpec, created: bool = False) -> None:
        self.client = client
        self.spec = spec
        self.created = created  # this call made the table (it did not exist on any shard)
        self.name = spec.name
        self.dim = int(spec.dim)
        self.dtype = spec.dtype
        floating = self.dtype in ("float32", "float16", "bfloat16")
        self._wire = "float32" if floating else self.dtype  # what pushes carry (float tables: float32 values)
        self._rows_dtype = WIRE_DTYPES[self._wire]  # what pulls return

    @abstractmethod
    def _starts(self) -> np.ndarray:
        """First row of each shard's block (dense), or an empty array: keys hash to shards (sparse)."""

    def _check(self, keys: np.ndarray) -> None:
        """Client-side key validation (dense: range)."""

    def _split(self, keys: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(keys int64 as given, unique keys grouped by shard, shard bounds, each key's row among them)."""
        keys = np.asarray(keys, dtype=np.int64)
        flat = np.ascontiguousarray(keys.ravel())
        self._check(flat)
        grouped, bounds, row_of = _plan(flat.view(np.uint64), self.client.num_shards, self._starts())
        return keys, grouped.view(np.int64), bounds, row_of

    def pull(self, keys: np.ndarray | Sequence[int], create: bool = True, min_version: int = 0,
             wait_s: float | None = None) -> np.ndarray:
        """Rows of keys (any shape, repeats allowed) -> [*keys.shape, dim]; float tables come back as float32.

        create=False (evaluation) reads sparse keys never touched as zero rows without creating them. A versioned
        table answers once every row holds at least min_version (waiting up to wait_s; default: the client's
        clock timeout).
        """
        return self.pull_versioned(keys, create, min_version, wait_s)[0]

    def pull_versioned(self, keys: np.ndarray | Sequence[int], create: bool = True, min_version: int = 0,
                       wait_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like pull, and each key's version [*keys.shape] (the optimizer steps its row holds; versioned tables)."""
        keys, grouped, bounds, row_of = self._split(keys)
        out = np.empty((len(row_of), self.dim), dtype=self._rows_dtype)
        versions = np.zeros(len(row_of), dtype=np.int64)
        wait_s = self.client.clock_timeout_s if wait_s is None else wait_s
        self.client._fan_out([partial(self._pull_shard, s, grouped, bounds, row_of, out, versions, not create,
                                      min_version, wait_s)
                              for s in range(self.client.num_shards) if bounds[s + 1] > bounds[s]])
        return out.reshape(*keys.shape, self.dim), versions.reshape(keys.shape)

    def pull_async(self, keys: np.ndarray | Sequence[int], create: bool = True) -> Future:
        """Like pull, but returns at once a Future of the rows: prefetch the next batch while this one computes.

        It reads whatever the shards hold when it runs: pushes issued before it may or may not be applied yet.
        """
        keys = np.array(keys, dtype=np.int64)  # a copy: the caller may reuse its buffer while the pull runs
        return self.client._submit(lambda: self.pull(keys, create), push=False)

    def _pull_shard(self, shard: int, grouped: np.ndarray, bounds: np.ndarray, row_of: np.ndarray, out: np.ndarray,
                    versions: np.ndarray, read_only: bool, min_version: int, wait_s: float) -> None:
        """Pull one shard's unique keys and write its rows (and versions) wherever their keys appear."""
        lo, hi = int(bounds[shard]), int(bounds[shard + 1])
        request = ps_pb2.PullRequest(table=self.name, keys=grouped[lo:hi].tobytes(), worker=self.client.worker_id,
                                     read_only=read_only, min_version=min_version, wait_s=wait_s if min_version else 0)
        reply = self.client._invoke(shard, "Pull", request, None,
                                    reply_bytes=(hi - lo) * self.dim * _ITEMSIZE[self.dtype],
                                    timeout_s=wait_s + self.client.timeout_s if min_version else None)
        values, shard_versions = decode_versioned_pull_reply(reply)
        if values.shape != (hi - lo, self.dim) or len(shard_versions) not in (0, hi - lo):
            raise DataLoss(f"{self.client._shards[shard].where} answered rows of shape {list(values.shape)} and "
                           f"{len(shard_versions)} versions for {hi - lo} keys of table {self.name!r} (dim {self.dim})")
        if self.dtype == "bfloat16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        elif self.dtype == "float16":
            values = values.astype(np.float32)
        _expand(out, values, row_of, lo, hi)
        if len(shard_versions):
            _expand(versions[:, None], shard_versions[:, None], row_of, lo, hi)

    def push(self, keys: np.ndarray | Sequence[int], values: np.ndarray, mode: str = "gradient", version: int = 0,
             lr_scale: float = 1.0) -> None:
        """Send gradients (or values, with mode 'assign' or 'add'); repeated keys are summed first (assign: the
        first occurrence wins). Gradients of a versioned table name the `version` they were computed at;
        `lr_scale` multiplies the learning rate of this update (a schedule)."""
        self._send(self._push_requests(keys, values, mode, version, lr_scale))

    def push_async(self, keys: np.ndarray | Sequence[int], values: np.ndarray, mode: str = "gradient",
                   version: int = 0, lr_scale: float = 1.0) -> Future:
        """Like push, but returns at once; at most max_in_flight requests run, and clock() waits for the pushes.

        Keys and values are merged before it returns, so the caller may reuse their buffers at once.
        """
        requests = self._push_requests(keys, values, mode, version, lr_scale)
        return self.client._submit(lambda: self._send(requests))

    def abstain_async(self, keys: np.ndarray | Sequence[int], version: int) -> Future:
        """Tell a versioned table that this worker has no gradient for `keys` at `version` (a routed expert none of
        its tokens chose): keys only on the wire, and the rows update from the other workers' sum without waiting
        for this one. clock() waits for it like a push."""
        _, grouped, bounds, _ = self._split(keys)
        requests = [(s, encode_push_request(self.name, grouped[lo:hi], np.empty((hi - lo, 0), dtype=np.float32),
                                            ps_pb2.ABSENT, self.client.worker_id, self._wire, version))
                    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])) if hi > lo]
        return self.client._submit(lambda: self._send(requests))

    def _push_requests(self, keys: np.ndarray | Sequence[int], values: np.ndarray, mode: str, version: int = 0,
                       lr_scale: float = 1.0) -> list[tuple[int, bytes]]:
        """(shard, PushRequest wire bytes) per shard that holds some of the keys, duplicates merged."""
        if mode not in _PUSH_MODES:
            raise InvalidArgument(f"push mode {mode!r} is not one of {list(_PUSH_MODES)}")
        keys = np.asarray(keys, dtype=np.int64).ravel()
        values = np.asarray(values)
        if values.size != len(keys) * self.dim:
            raise InvalidArgument(f"push to {self.name!r}: {values.size} values for {len(keys)} keys of dim "
                                  f"{self.dim}; expected shape [{len(keys)}, {self.dim}]")
        _, grouped, bounds, row_of = self._split(keys)
        rows = values.reshape(len(keys), self.dim)
        if len(grouped) == len(keys) and rows.dtype == self._rows_dtype and (row_of == np.arange(len(keys))).all():
            merged = rows  # unique keys already in shard order (a model page's rows): nothing to merge
        else:
            merged = np.zeros((len(grouped), self.dim), dtype=self._rows_dtype)
            (_first_rows if mode == "assign" else _segment_add)(merged, rows, row_of)
        if not (lr_scale > 0 and np.isfinite(lr_scale)):
            raise InvalidArgument(f"push to {self.name!r}: lr_scale must be a finite number > 0, got {lr_scale}")
        seq, clock = next(self.client._push_seq), self.client.clock_value + 1
        return [(s, encode_push_request(self.name, grouped[lo:hi], merged[lo:hi], _PUSH_MODES[mode],
                                        self.client.worker_id, self._wire, version,
                                        0.0 if lr_scale == 1.0 else lr_scale, seq, clock))
                for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])) if hi > lo]

    def _send(self, requests: list[tuple[int, bytes]]) -> None:
        self.client._fan_out([partial(self.client._invoke, s, "Push", request, ps_pb2.PushReply)
                              for s, request in requests])

    def call(self, psf: str, tensors: Sequence[np.ndarray] = (), **args: Any) -> Any:
        """Run a PS function on every shard's partition and merge the partial results on the client."""
        str_args = {k: str(v) for k, v in args.items()}
        request = ps_pb2.PsfRequest(table=self.name, name=psf, args=str_args,
                                    tensors=[encode_array(np.asarray(t)) for t in tensors],
                                    worker=self.client.worker_id)
        replies = self.client._all("Call", lambda s: request, ps_pb2.PsfReply)
        partials = [[np.array(decode_array(t)) for t in r.tensors] for r in replies]
        return merge_partials(replies[0].merge, partials, args)


class SparseTable(Table):
    """int64 keys hash-partitioned over the shards; a row appears on first touch, made by the initializer."""

    _HASHED = np.empty(0, dtype=np.int64)

    def _starts(self) -> np.ndarray:
        return self._HASHED


class DenseTable(Table):
    """A [rows, cols] matrix in contiguous row blocks, one per shard."""

    def __init__(self, client: PSClient, spec: ps_pb2.TableSpec, created: bool = False) -> None:
        super().__init__(client, spec, created)
        self.rows = int(spec.rows)
        self.shape = (self.rows, self.dim)

    def _check(self, keys: np.ndarray) -> None:
        if len(keys) and (keys.min() < 0 or keys.max() >= self.rows):
            bad = keys[(keys < 0) | (keys >= self.rows)][0]
            raise InvalidArgument(f"row {int(bad)} is outside dense table {self.name!r} with {self.rows} rows")

    def _starts(self) -> np.ndarray:
        return np.array([self.block(s)[0] for s in range(self.client.num_shards)], dtype=np.int64)

    def pull_all(self) -> np.ndarray:
        """The whole matrix [rows, cols]."""
        return self.pull(np.arange(self.rows, dtype=np.int64))

    def push_all(self, values: np.ndarray, mode: str = "gradient") -> None:
        self.push(np.arange(self.rows, dtype=np.int64), values, mode)

    def block(self, shard: int) -> tuple[int, int]:
        return dense_block(self.rows, self.client.num_shards, shard)
