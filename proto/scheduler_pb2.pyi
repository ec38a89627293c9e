from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PENDING: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
PENDING: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class NodeStatus(_message.Message):
    __slots__ = ("role", "rank", "address", "attempt", "state", "pid", "host", "last_heartbeat", "step")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    role: str
    rank: int
    address: str
    attempt: int
    state: str
    pid: int
    host: str
    last_heartbeat: float
    step: int
    def __init__(self, role: _Optional[str] = ..., rank: _Optional[int] = ..., address: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[str] = ..., pid: _Optional[int] = ..., host: _Optional[str] = ..., last_heartbeat: _Optional[float] = ..., step: _Optional[int] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "name", "algorithm", "state", "reason", "created", "started", "finished", "run_dir", "launcher", "total_steps", "step", "restarts", "nodes", "metrics", "num_ps", "num_workers")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_PS_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    algorithm: str
    state: JobState
    reason: str
    created: float
    started: float
    finished: float
    run_dir: str
    launcher: str
    total_steps: int
    step: int
    restarts: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    metrics: _containers.ScalarMap[str, float]
    num_ps: int
    num_workers: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., algorithm: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., created: _Optional[float] = ..., started: _Optional[float] = ..., finished: _Optional[float] = ..., run_dir: _Optional[str] = ..., launcher: _Optional[str] = ..., total_steps: _Optional[int] = ..., step: _Optional[int] = ..., restarts: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., num_ps: _Optional[int] = ..., num_workers: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_yaml", "launcher", "run_root")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    RUN_ROOT_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    launcher: str
    run_root: str
    def __init__(self, spec_yaml: _Optional[str] = ..., launcher: _Optional[str] = ..., run_root: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("job_id", "source", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    source: str
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., source: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("source", "text")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    source: str
    text: str
    def __init__(self, source: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class PsSettings(_message.Message):
    __slots__ = ("num_shards", "num_workers", "staleness", "ram_mb", "page_kb", "durability", "snapshot_every", "shard", "data_subdir", "deterministic")
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    PAGE_KB_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_EVERY_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    DATA_SUBDIR_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    num_shards: int
    num_workers: int
    staleness: int
    ram_mb: float
    page_kb: int
    durability: str
    snapshot_every: int
    shard: int
    data_subdir: str
    deterministic: bool
    def __init__(self, num_shards: _Optional[int] = ..., num_workers: _Optional[int] = ..., staleness: _Optional[int] = ..., ram_mb: _Optional[float] = ..., page_kb: _Optional[int] = ..., durability: _Optional[str] = ..., snapshot_every: _Optional[int] = ..., shard: _Optional[int] = ..., data_subdir: _Optional[str] = ..., deterministic: _Optional[bool] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("job_id", "role", "rank", "address", "pid", "host")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    role: str
    rank: int
    address: str
    pid: int
    host: str
    def __init__(self, job_id: _Optional[str] = ..., role: _Optional[str] = ..., rank: _Optional[int] = ..., address: _Optional[str] = ..., pid: _Optional[int] = ..., host: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("spec_yaml", "attempt", "run_dir", "ps")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    PS_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    attempt: int
    run_dir: str
    ps: PsSettings
    def __init__(self, spec_yaml: _Optional[str] = ..., attempt: _Optional[int] = ..., run_dir: _Optional[str] = ..., ps: _Optional[_Union[PsSettings, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "role", "rank", "step", "state", "message", "pid", "fatal", "prometheus")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    PROMETHEUS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    role: str
    rank: int
    step: int
    state: str
    message: str
    pid: int
    fatal: bool
    prometheus: str
    def __init__(self, job_id: _Optional[str] = ..., role: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., pid: _Optional[int] = ..., fatal: _Optional[bool] = ..., prometheus: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    def __init__(self, stop: _Optional[bool] = ...) -> None: ...

class MetricRow(_message.Message):
    __slots__ = ("step", "seconds", "name", "value")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    step: int
    seconds: float
    name: str
    value: float
    def __init__(self, step: _Optional[int] = ..., seconds: _Optional[float] = ..., name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("job_id", "rank", "rows")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    rows: _containers.RepeatedCompositeFieldContainer[MetricRow]
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[MetricRow, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterViewRequest(_message.Message):
    __slots__ = ("job_id", "worker_rank")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_RANK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_rank: int
    def __init__(self, job_id: _Optional[str] = ..., worker_rank: _Optional[int] = ...) -> None: ...

class PsEndpoint(_message.Message):
    __slots__ = ("shard", "address", "attempt", "state")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    address: str
    attempt: int
    state: str
    def __init__(self, shard: _Optional[int] = ..., address: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ClusterView(_message.Message):
    __slots__ = ("job_id", "state", "ps", "complete")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    ps: _containers.RepeatedCompositeFieldContainer[PsEndpoint]
    complete: bool
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., ps: _Optional[_Iterable[_Union[PsEndpoint, _Mapping]]] = ..., complete: _Optional[bool] = ...) -> None: ...

class MemoryTrace(_message.Message):
    __slots__ = ("job_id", "rank", "lower", "upper", "size", "method", "time_limit_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    lower: _containers.RepeatedScalarFieldContainer[int]
    upper: _containers.RepeatedScalarFieldContainer[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    method: str
    time_limit_s: float
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., lower: _Optional[_Iterable[int]] = ..., upper: _Optional[_Iterable[int]] = ..., size: _Optional[_Iterable[int]] = ..., method: _Optional[str] = ..., time_limit_s: _Optional[float] = ...) -> None: ...

class MemoryPlanRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class MemoryPlan(_message.Message):
    __slots__ = ("ready", "offsets", "size", "peak", "lower_bound", "solve_s", "method")
    READY_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    SOLVE_S_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    offsets: _containers.RepeatedScalarFieldContainer[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    peak: int
    lower_bound: int
    solve_s: float
    method: str
    def __init__(self, ready: _Optional[bool] = ..., offsets: _Optional[_Iterable[int]] = ..., size: _Optional[_Iterable[int]] = ..., peak: _Optional[int] = ..., lower_bound: _Optional[int] = ..., solve_s: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...
