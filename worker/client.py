"""The PS client: routes keys to shards, merges duplicates, keeps requests in flight, retries while a PS restarts.

A pull sends each shard only the unique keys it holds, all shards at once, and scatters the replies back into
the caller's order. A push sums the gradients of repeated keys first. Messages over the size limit go through the
shards' ``Chunked`` stream. A shard that is unreachable (restarting) is retried with backoff for ``retry_s``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import grpc
import numpy as np

from seraphim.proto import ps_pb2, ps_pb2_grpc
from seraphim.proto.codec import decode_array, encode_array, encode_keys
from seraphim.proto.errors import InvalidArgument, from_rpc_error
from seraphim.proto.partition import dense_block, dense_shard_of, group_by_shard, sparse_shard_of
from seraphim.proto.rpc import CHUNK_BYTES, MAX_MESSAGE_BYTES, TlsFiles, join_chunks, make_channel, split_message, token_metadata
from seraphim.worker.psf_merge import merge_partials
from seraphim.worker.specs import Initializer, Optimizer, Zeros, initializer_spec, optimizer_spec

_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE,)
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "bytes": 1}


@dataclass
class _Shard:
    index: int
    address: str
    channel: grpc.Channel
    stub: ps_pb2_grpc.ParameterServerStub

    @property
    def where(self) -> str:
        return f"ps {self.index} ({self.address})"


class _Call:
    """One request to one shard in flight: a gRPC future, re-issued while the shard is unavailable."""

    def __init__(self, client: "PSClient", shard: int, method: str, request: Any, reply_cls: type,
                 chunked: bool, timeout_s: float) -> None:
        self._client, self._shard, self._method = client, shard, method
        self._request, self._reply_cls, self._timeout = request, reply_cls, timeout_s
        self._chunked = chunked
        self._future = None if chunked else self._issue()

    def _issue(self):
        stub = self._client._shards[self._shard].stub
        return getattr(stub, self._method).future(self._request, timeout=self._timeout,
                                                  metadata=self._client._metadata)

    def result(self) -> Any:
        deadline = time.monotonic() + self._client.retry_s
        delay = 0.05
        while True:
            try:
                if self._chunked:
                    return self._client._chunked_call(self._shard, self._method, self._request, self._reply_cls,
                                                      self._timeout)
                return self._future.result()
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not self._chunked:
                    self._chunked = True
                    continue
                if err.code() not in _RETRY_CODES or time.monotonic() + delay > deadline:
                    raise from_rpc_error(err, self._client._shards[self._shard].where) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            if not self._chunked:
                self._future = self._issue()


class PSClient:
    """A connection to every PS shard of a cluster; tables are created or attached through it."""

    def __init__(self, addresses: Sequence[str], worker_id: int = 0, num_workers: int = 1,
                 token: str | None = None, tls: TlsFiles | None = None, timeout_s: float = 120.0,
                 retry_s: float = 120.0, clock_timeout_s: float = 600.0, max_in_flight: int = 16,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
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
        self._shards: list[_Shard] = []
        self.connect(addresses)
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._pending: set[Future] = set()
        self._pending_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(4, len(addresses)), thread_name_prefix="ps-client")
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
    def _start(self, shard: int, method: str, request: Any, reply_cls: type, reply_bytes: int = 0,
               timeout_s: float | None = None) -> _Call:
        chunked = max(request.ByteSize(), reply_bytes) > self._chunk_threshold
        return _Call(self, shard, method, request, reply_cls, chunked, timeout_s or self.timeout_s)

    def _chunked_call(self, shard: int, method: str, request: Any, reply_cls: type, timeout_s: float) -> Any:
        chunks = split_message(method, request.SerializeToString(), self._chunk_bytes)
        replies = self._shards[shard].stub.Chunked(chunks, timeout=timeout_s, metadata=self._metadata)
        _, payload = join_chunks(replies)
        return reply_cls.FromString(payload)

    def _all(self, method: str, make_request: Callable[[int], Any], reply_cls: type,
             timeout_s: float | None = None) -> list[Any]:
        calls = [self._start(s, method, make_request(s), reply_cls, timeout_s=timeout_s)
                 for s in range(self.num_shards)]
        return [c.result() for c in calls]

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
                    seed: int = 0) -> "DenseTable":
        """Create (or attach to) a dense [rows, cols] table, range-partitioned over the shards in row blocks."""
        if len(shape) != 2:
            raise InvalidArgument(f"dense table {name!r}: shape must be (rows, cols), got {shape}")
        spec = _spec(name, ps_pb2.DENSE, dtype, shape[0], shape[1], init, optimizer, lr_scales, seed)
        table = DenseTable(self, spec, created=all(info.created for info in self._create(spec)))
        self._tables[name] = table
        return table

    def drop_table(self, name: str) -> None:
        self._all("DropTable", lambda s: ps_pb2.DropTableRequest(name=name), ps_pb2.DropTableReply)
        self._tables.pop(name, None)

    # -- pushes in flight ------------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], Any]) -> Future:
        self._in_flight.acquire()
        future = self._pool.submit(fn)
        with self._pending_lock:
            self._pending.add(future)

        def done(f: Future) -> None:
            self._in_flight.release()
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
        clock = self._clock
        replies = self._all("Clock", lambda s: ps_pb2.ClockRequest(worker=self.worker_id, clock=clock,
                                                                    timeout_s=self.clock_timeout_s),
                            ps_pb2.ClockReply, timeout_s=self.clock_timeout_s + 30)
        return min(r.min_clock for r in replies)

    def resume(self) -> int:
        """Continue from the clock the shards hold for this worker (after a restart); returns it."""
        replies = self._all("GetClock", lambda s: ps_pb2.GetClockRequest(), ps_pb2.ClockReply)
        self._clock = min(r.clocks[self.worker_id] for r in replies)
        return self._clock

    def snapshot(self) -> list[int]:
        return [r.clock for r in self._all("Snapshot", lambda s: ps_pb2.SnapshotRequest(), ps_pb2.SnapshotReply)]

    def stats(self) -> list[ps_pb2.StatsReply]:
        return self._all("Stats", lambda s: ps_pb2.StatsRequest(), ps_pb2.StatsReply)

    def health(self) -> list[ps_pb2.HealthReply]:
        return self._all("Health", lambda s: ps_pb2.HealthRequest(), ps_pb2.HealthReply)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
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
    """Unique keys and the sum of the value rows of each (one sort and one reduceat, no Python loop)."""
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    if len(uniq) == len(keys):
        return uniq, values[order]
    starts = np.zeros(len(uniq), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return uniq, np.add.reduceat(values[order], starts, axis=0)


class Table(ABC):
    """A table as a worker sees it: pull rows by key, push gradients, call PS functions."""

    def __init__(self, client: PSClient, spec: ps_pb2.TableSpec, created: bool = False) -> None:
        self.client = client
        self.spec = spec
        self.created = created  # this call made the table (it did not exist on any shard)
        self.name = spec.name
        self.dim = int(spec.dim)
        self.dtype = spec.dtype

    @abstractmethod
    def _route(self, keys: np.ndarray) -> list[np.ndarray]:
        """For each shard, the positions of the keys it holds."""

    def _check(self, keys: np.ndarray) -> None:
        """Client-side key validation (dense: range)."""

    def pull(self, keys: np.ndarray | Sequence[int], create: bool = True) -> np.ndarray:
        """Rows of keys (any shape, repeats allowed) -> [*keys.shape, dim]; float tables come back as float32.

        create=False (evaluation) reads sparse keys never touched as zero rows without creating them.
        """
        keys = np.asarray(keys, dtype=np.int64)
        flat = keys.ravel()
        uniq, inverse = np.unique(flat, return_inverse=True)
        self._check(uniq)
        out = self._pull_unique(uniq, read_only=not create)
        return out[inverse].reshape(*keys.shape, self.dim)

    def _pull_unique(self, uniq: np.ndarray, read_only: bool = False) -> np.ndarray:
        parts = self._route(uniq)
        item = _ITEMSIZE[self.dtype]
        calls = [(pos, self.client._start(s, "Pull", ps_pb2.PullRequest(table=self.name, keys=encode_keys(uniq[pos]),
                                                                        worker=self.client.worker_id,
                                                                        read_only=read_only),
                                          ps_pb2.PullReply, reply_bytes=len(pos) * self.dim * item))
                 for s, pos in enumerate(parts) if len(pos)]
        out: np.ndarray | None = None
        for pos, call in calls:
            values = decode_array(call.result().values)
            if self.dtype == "bfloat16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            elif self.dtype == "float16":
                values = values.astype(np.float32)
            if out is None:
                out = np.empty((len(uniq), self.dim), dtype=values.dtype)
            out[pos] = values
        if out is None:
            out = np.empty((0, self.dim), dtype=np.float32)
        return out

    def push(self, keys: np.ndarray | Sequence[int], values: np.ndarray, mode: str = "gradient") -> None:
        """Send gradients (or values, with mode 'assign' or 'add'); repeated keys are summed first."""
        self.push_async(keys, values, mode).result()

    def push_async(self, keys: np.ndarray | Sequence[int], values: np.ndarray, mode: str = "gradient") -> Future:
        """Like push, but returns at once; at most max_in_flight pushes run, and clock() waits for them."""
        keys = np.asarray(keys, dtype=np.int64).ravel()
        modes = {"gradient": ps_pb2.GRADIENT, "assign": ps_pb2.ASSIGN, "add": ps_pb2.ADD}
        if mode not in modes:
            raise InvalidArgument(f"push mode {mode!r} is not one of {list(modes)}")
        values = np.asarray(values)
        if values.size != len(keys) * self.dim:
            raise InvalidArgument(f"push to {self.name!r}: {values.size} values for {len(keys)} keys of dim "
                                  f"{self.dim}; expected shape [{len(keys)}, {self.dim}]")
        values = values.reshape(len(keys), self.dim)
        self._check(keys)
        wire = self._wire_dtype(values)
        if mode == "assign":
            uniq, first = np.unique(keys, return_index=True)
            if len(uniq) != len(keys):
                keys, values = uniq, values[first]
        else:
            keys, values = merge_duplicates(keys, values)
        return self.client._submit(lambda: self._push_unique(keys, values, modes[mode], wire))

    def _wire_dtype(self, values: np.ndarray) -> str:
        if self.dtype in ("float32", "float16", "bfloat16"):
            return "float32"
        return self.dtype

    def _push_unique(self, keys: np.ndarray, values: np.ndarray, mode: int, wire: str) -> None:
        calls = []
        for s, pos in enumerate(self._route(keys)):
            if len(pos):
                request = ps_pb2.PushRequest(table=self.name, keys=encode_keys(keys[pos]),
                                             values=encode_array(values[pos], wire), mode=mode,
                                             worker=self.client.worker_id)
                calls.append(self.client._start(s, "Push", request, ps_pb2.PushReply))
        for call in calls:
            call.result()

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

    def _route(self, keys: np.ndarray) -> list[np.ndarray]:
        n = self.client.num_shards
        if n == 1:
            return [np.arange(len(keys))]
        return group_by_shard(sparse_shard_of(keys, n), n)


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

    def _route(self, keys: np.ndarray) -> list[np.ndarray]:
        n = self.client.num_shards
        return group_by_shard(dense_shard_of(keys, self.rows, n), n)

    def pull_all(self) -> np.ndarray:
        """The whole matrix [rows, cols]."""
        return self._pull_unique(np.arange(self.rows, dtype=np.int64))

    def push_all(self, values: np.ndarray, mode: str = "gradient") -> None:
        self.push(np.arange(self.rows, dtype=np.int64), values, mode)

    def block(self, shard: int) -> tuple[int, int]:
        return dense_block(self.rows, self.client.num_shards, shard)
