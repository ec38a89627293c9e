"""The scheduler's gRPC face: every RPC validated, every error a precise status, logs streamed from files."""

from __future__ import annotations

import functools
import logging
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc

from seraphim.proto import scheduler_pb2, scheduler_pb2_grpc
from seraphim.proto.errors import InvalidArgument, SeraphimError
from seraphim.scheduler.master import TERMINAL, Master

log = logging.getLogger("seraphim.scheduler")

#: a log's name under the run's logs/ ("job", "ps-0", "worker-1"): never a path, so no file outside logs/ is read
LOG_SOURCE_PATTERN = r"[\w-]{0,64}"  # a node name; bounded, as the log file's name must be


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def rpc(self: "SchedulerService", request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except SeraphimError as exc:
            context.abort(exc.code, str(exc))
        except Exception as exc:  # a bug must not kill the scheduler
            log.error("%s failed: %s", method.__name__, traceback.format_exc())
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {type(exc).__name__}: {exc}")

    return rpc


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, master: Master) -> None:
        self.master = master

    @_guarded
    def SubmitJob(self, request, context):
        if not request.spec_yaml.strip():
            raise InvalidArgument("submitted job spec is empty")
        return self.master.status(self.master.submit(request.spec_yaml, request.launcher, request.run_root))

    @_guarded
    def GetJob(self, request, context):
        return self.master.status(self.master.job(request.job_id))

    @_guarded
    def ListJobs(self, request, context):
        return scheduler_pb2.ListJobsReply(jobs=[self.master.status(j) for j in self.master.store.jobs()])

    @_guarded
    def CancelJob(self, request, context):
        return self.master.status(self.master.cancel(request.job_id))

    @_guarded
    def PlanMemory(self, request, context):
        return self.master.plan_memory(request)

    @_guarded
    def GetMemoryPlan(self, request, context):
        return self.master.memory_plan(request.job_id)

    @_guarded
    def Register(self, request, context):
        return self.master.register(request)

    @_guarded
    def Heartbeat(self, request, context):
        return scheduler_pb2.HeartbeatReply(stop=self.master.heartbeat(request))

    @_guarded
    def ReportMetrics(self, request, context):
        self.master.report_metrics(request)
        return scheduler_pb2.Ack()

    @_guarded
    def GetClusterView(self, request, context):
        rank = request.worker_rank if request.HasField("worker_rank") else None
        return self.master.cluster_view(request.job_id, rank)

    def GetLogs(self, request, context):
        try:
            job = self.master.job(request.job_id)
            if not re.fullmatch(LOG_SOURCE_PATTERN, request.source):
                raise InvalidArgument(f"log source {request.source[:80]!r} is not a log name such as 'job', 'ps-0' or "
                                      f"'worker-1' (at most 64 letters, digits, '_' and '-'), or empty for every "
                                      f"source")
        except SeraphimError as exc:
            context.abort(exc.code, str(exc))
        yield from _follow_logs(self.master, job.job_id, Path(job.run_dir) / "logs", request.source, request.follow,
                                context)


def _follow_logs(master: Master, job_id: str, log_dir: Path, source: str, follow: bool,
                 context: grpc.ServicerContext) -> Iterator[scheduler_pb2.LogChunk]:
    """The job's log (job.log) and its processes' logs; with follow, new lines until the job ends."""
    offsets: dict[Path, int] = {}
    if source not in ("", "all") and not (log_dir / f"{source}.log").exists() and not follow:
        known = ", ".join(p.stem for p in sorted(log_dir.glob("*.log")))
        context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} has no log {source!r}; sources: {known}")
    while True:
        ended = master.job(job_id).state in TERMINAL
        files = sorted(log_dir.glob("*.log")) if source in ("", "all") else [log_dir / f"{source}.log"]
        for path in files:
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                data = f.read(4 * 1024 * 1024)
            data = data[: data.rfind(b"\n") + 1]
            if data:
                offsets[path] = offsets.get(path, 0) + len(data)
                yield scheduler_pb2.LogChunk(source=path.stem, text=data.decode(errors="replace"))
        if not follow or ended or not context.is_active():
            return
        time.sleep(0.5)
