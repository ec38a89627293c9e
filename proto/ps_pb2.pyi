from seraphim.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TableKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DENSE: _ClassVar[TableKind]
    SPARSE: _ClassVar[TableKind]

class PushMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRADIENT: _ClassVar[PushMode]
    ASSIGN: _ClassVar[PushMode]
    ADD: _ClassVar[PushMode]
    ABSENT: _ClassVar[PushMode]
DENSE: TableKind
SPARSE: TableKind
GRADIENT: PushMode
ASSIGN: PushMode
ADD: PushMode
ABSENT: PushMode

class InitializerSpec(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class LrScaleGroup(_message.Message):
    __slots__ = ("start", "end", "scale")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    scale: float
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., scale: _Optional[float] = ...) -> None: ...

class TableSpec(_message.Message):
    __slots__ = ("name", "kind", "dtype", "rows", "dim", "init", "optimizer", "lr_scales", "num_shards", "seed", "sum_workers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR_SCALES_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: TableKind
    dtype: str
    rows: int
    dim: int
    init: InitializerSpec
    optimizer: OptimizerSpec
    lr_scales: _containers.RepeatedCompositeFieldContainer[LrScaleGroup]
    num_shards: int
    seed: int
    sum_workers: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[TableKind, str]] = ..., dtype: _Optional[str] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., init: _Optional[_Union[InitializerSpec, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., lr_scales: _Optional[_Iterable[_Union[LrScaleGroup, _Mapping]]] = ..., num_shards: _Optional[int] = ..., seed: _Optional[int] = ..., sum_workers: _Optional[int] = ...) -> None: ...

class CreateTableRequest(_message.Message):
    __slots__ = ("spec", "shard")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    shard: int
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., shard: _Optional[int] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("spec", "created", "row_start", "row_end", "num_rows")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ROW_START_FIELD_NUMBER: _ClassVar[int]
    ROW_END_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    created: bool
    row_start: int
    row_end: int
    num_rows: int
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., created: _Optional[bool] = ..., row_start: _Optional[int] = ..., row_end: _Optional[int] = ..., num_rows: _Optional[int] = ...) -> None: ...

class DropTableRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropTableReply(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("table", "keys", "worker", "read_only", "min_version", "wait_s")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    worker: int
    read_only: bool
    min_version: int
    wait_s: float
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., worker: _Optional[int] = ..., read_only: _Optional[bool] = ..., min_version: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class PullReply(_message.Message):
    __slots__ = ("values", "versions")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    values: _common_pb2.Tensor
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("table", "keys", "values", "mode", "worker", "version", "lr_scale", "seq", "clock")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LR_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    table: str
    keys: bytes
    values: _common_pb2.Tensor
    mode: PushMode
    worker: int
    version: int
    lr_scale: float
    seq: int
    clock: int
    def __init__(self, table: _Optional[str] = ..., keys: _Optional[bytes] = ..., values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., mode: _Optional[_Union[PushMode, str]] = ..., worker: _Optional[int] = ..., version: _Optional[int] = ..., lr_scale: _Optional[float] = ..., seq: _Optional[int] = ..., clock: _Optional[int] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    def __init__(self, rows: _Optional[int] = ...) -> None: ...

class PsfRequest(_message.Message):
    __slots__ = ("table", "name", "args", "tensors", "worker")
    class ArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TABLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    table: str
    name: str
    args: _containers.ScalarMap[str, str]
    tensors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    worker: int
    def __init__(self, table: _Optional[str] = ..., name: _Optional[str] = ..., args: _Optional[_Mapping[str, str]] = ..., tensors: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., worker: _Optional[int] = ...) -> None: ...

class PsfReply(_message.Message):
    __slots__ = ("tensors", "merge")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    merge: str
    def __init__(self, tensors: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., merge: _Optional[str] = ...) -> None: ...

class ClockRequest(_message.Message):
    __slots__ = ("worker", "clock", "timeout_s")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    worker: int
    clock: int
    timeout_s: float
    def __init__(self, worker: _Optional[int] = ..., clock: _Optional[int] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ClockReply(_message.Message):
    __slots__ = ("min_clock", "clocks")
    MIN_CLOCK_FIELD_NUMBER: _ClassVar[int]
    CLOCKS_FIELD_NUMBER: _ClassVar[int]
    min_clock: int
    clocks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, min_clock: _Optional[int] = ..., clocks: _Optional[_Iterable[int]] = ...) -> None: ...

class GetClockRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotReply(_message.Message):
    __slots__ = ("clock",)
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    clock: int
    def __init__(self, clock: _Optional[int] = ...) -> None: ...

class TableStats(_message.Message):
    __slots__ = ("name", "kind", "rows", "bytes_ram", "bytes_disk", "hits", "misses", "hit_rate", "pull_rows", "push_rows", "pull_rows_per_s", "push_rows_per_s", "applied_grad_sq", "pull_bytes", "push_bytes")
    class AppliedGradSqEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RAM_FIELD_NUMBER: _ClassVar[int]
    BYTES_DISK_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    PULL_ROWS_FIELD_NUMBER: _ClassVar[int]
    PUSH_ROWS_FIELD_NUMBER: _ClassVar[int]
    PULL_ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PUSH_ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GRAD_SQ_FIELD_NUMBER: _ClassVar[int]
    PULL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PUSH_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    rows: int
    bytes_ram: int
    bytes_disk: int
    hits: int
    misses: int
    hit_rate: float
    pull_rows: int
    push_rows: int
    pull_rows_per_s: float
    push_rows_per_s: float
    applied_grad_sq: _containers.ScalarMap[int, float]
    pull_bytes: int
    push_bytes: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., rows: _Optional[int] = ..., bytes_ram: _Optional[int] = ..., bytes_disk: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., hit_rate: _Optional[float] = ..., pull_rows: _Optional[int] = ..., push_rows: _Optional[int] = ..., pull_rows_per_s: _Optional[float] = ..., push_rows_per_s: _Optional[float] = ..., applied_grad_sq: _Optional[_Mapping[int, float]] = ..., pull_bytes: _Optional[int] = ..., push_bytes: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("tables", "ram_budget", "ram_used", "lmdb_bytes", "evictions", "uptime_s", "peak_rss_bytes", "page_bytes")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    RAM_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RAM_USED_FIELD_NUMBER: _ClassVar[int]
    LMDB_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableStats]
    ram_budget: int
    ram_used: int
    lmdb_bytes: int
    evictions: int
    uptime_s: float
    peak_rss_bytes: int
    page_bytes: int
    def __init__(self, tables: _Optional[_Iterable[_Union[TableStats, _Mapping]]] = ..., ram_budget: _Optional[int] = ..., ram_used: _Optional[int] = ..., lmdb_bytes: _Optional[int] = ..., evictions: _Optional[int] = ..., uptime_s: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., page_bytes: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status", "shard", "num_shards", "restored_clock", "min_clock", "num_workers", "staleness", "pid", "uptime_s", "tables", "deterministic")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    RESTORED_CLOCK_FIELD_NUMBER: _ClassVar[int]
    MIN_CLOCK_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    status: str
    shard: int
    num_shards: int
    restored_clock: int
    min_clock: int
    num_workers: int
    staleness: int
    pid: int
    uptime_s: float
    tables: _containers.RepeatedScalarFieldContainer[str]
    deterministic: bool
    def __init__(self, status: _Optional[str] = ..., shard: _Optional[int] = ..., num_shards: _Optional[int] = ..., restored_clock: _Optional[int] = ..., min_clock: _Optional[int] = ..., num_workers: _Optional[int] = ..., staleness: _Optional[int] = ..., pid: _Optional[int] = ..., uptime_s: _Optional[float] = ..., tables: _Optional[_Iterable[str]] = ..., deterministic: _Optional[bool] = ...) -> None: ...
