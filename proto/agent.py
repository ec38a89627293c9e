"""The process side of the scheduler protocol, shared by PS and worker processes: register, heartbeat, report
metrics, learn the cluster view, and stop when the scheduler says the job is over.

Heartbeats run on a background thread and survive a scheduler restart: while it is unreachable they keep
trying, and the process carries on with its work.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import grpc

from seraphim.proto import scheduler_pb2, scheduler_pb2_grpc
from seraphim.proto.errors import DeadlineExceeded, Unavailable, from_rpc_error
from seraphim.proto.rpc import TlsFiles, make_channel, token_metadata

log = logging.getLogger("seraphim.agent")


class SchedulerAgent:
    """One process of a job as the scheduler sees it."""

    def __init__(self, scheduler: str, job_id: str, role: str, rank: int, token: str | None = None,
                 tls: TlsFiles | None = None, interval_s: float = 0.5) -> None:
        self.scheduler, self.job_id, self.role, self.rank = scheduler, job_id, role, rank
        self.interval_s = interval_s
        self._channel = make_channel(scheduler, tls)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._metadata = token_metadata(token)
        self.step = 0
        self.stop_requested = threading.Event()
        self._closed = threading.Event()
        self._rows: list[scheduler_pb2.MetricRow] = []
        self._rows_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()

    def _call(self, method: str, request: Any, timeout_s: float = 10.0) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, f"scheduler at {self.scheduler}") from None

    def _retrying(self, method: str, request: Any, timeout_s: float) -> Any:
        """Call until the scheduler answers; only an unreachable scheduler is retried."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._call(method, request)
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the scheduler at {self.scheduler} cannot be reached after {timeout_s:.0f}s "
                                      f"({exc}); check --scheduler and that it is running") from None
                time.sleep(0.5)

    def register(self, address: str = "", timeout_s: float = 60.0) -> scheduler_pb2.RegisterReply:
        """Tell the scheduler this process exists (and, for a PS, where it serves); returns the job's settings."""
        request = scheduler_pb2.RegisterRequest(job_id=self.job_id, role=self.role, rank=self.rank, address=address,
                                                pid=os.getpid(), host=socket.gethostname())
        return self._retrying("Register", request, timeout_s)

    def cluster_view(self, timeout_s: float = 300.0) -> scheduler_pb2.ClusterView:
        """Wait until every PS shard has registered its address; raise if the job ends meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            request = scheduler_pb2.ClusterViewRequest(job_id=self.job_id)
            if self.role == "worker":
                request.worker_rank = self.rank
            view = self._retrying("GetClusterView", request, timeout_s)
            if view.complete:
                return view
            if view.state in (scheduler_pb2.SUCCEEDED, scheduler_pb2.FAILED, scheduler_pb2.CANCELLED):
                raise DeadlineExceeded(f"job {self.job_id} ended ({scheduler_pb2.JobState.Name(view.state)}) "
                                       f"before its PS shards were up")
            if time.monotonic() > deadline:
                missing = [p.shard for p in view.ps if not p.address]
                raise DeadlineExceeded(f"PS shards {missing} of job {self.job_id} did not register within "
                                       f"{timeout_s:.0f}s")
            time.sleep(0.2)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Queue one step's metrics; the heartbeat thread sends them."""
        seconds = time.monotonic() - self._start
        with self._rows_lock:
            self._rows.extend(scheduler_pb2.MetricRow(step=step, seconds=seconds, name=k, value=float(v))
                              for k, v in metrics.items())
        self.step = step + 1

    def _flush_metrics(self) -> None:
        with self._rows_lock:
            rows, self._rows = self._rows, []
        if rows:
            try:
                self._call("ReportMetrics", scheduler_pb2.MetricsReport(job_id=self.job_id, rank=self.rank, rows=rows))
            except Exception:
                with self._rows_lock:
                    self._rows[:0] = rows
                raise

    def _beat(self, state: str = "RUNNING", message: str = "", fatal: bool = False) -> None:
        if self.role == "worker":
            self._flush_metrics()
        reply = self._call("Heartbeat", scheduler_pb2.HeartbeatRequest(
            job_id=self.job_id, role=self.role, rank=self.rank, step=self.step, state=state, message=message,
            pid=os.getpid(), fatal=fatal))
        if reply.stop:
            self.stop_requested.set()

    def start(self, on_stop: Callable[[], None] | None = None) -> None:
        """Heartbeat every interval_s on a daemon thread; call on_stop once when the scheduler says stop."""

        def loop() -> None:
            while not self._closed.wait(self.interval_s):
                try:
                    self._beat()
                except Exception as exc:  # the scheduler may be restarting: keep working, keep trying
                    log.debug("heartbeat to %s failed: %s", self.scheduler, exc)
                if self.stop_requested.is_set() and on_stop is not None:
                    on_stop()
                    return

        self._thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
        self._thread.start()

    def finish(self, state: str = "DONE", message: str = "", fatal: bool = False, timeout_s: float = 5.0) -> None:
        """Stop heartbeating and tell the scheduler how this process ended (metrics first); ``fatal`` with FAILED:
        the error depends only on the job's input or spec, so the scheduler ends the job instead of restarting."""
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._beat(state, message, fatal)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    log.warning("could not report %s to the scheduler: %s", state, exc)
                    break
                time.sleep(0.5)
        self._channel.close()


def request_memory_plan(scheduler: str, token: str | None, tls: TlsFiles | None,
                        trace: scheduler_pb2.MemoryTrace | None, job_id: str,
                        timeout_s: float = 300.0) -> scheduler_pb2.MemoryPlan:
    """The job's memory plan: with a trace, the scheduler plans it unless the job has a plan already; without one,
    wait until some worker's trace was planned."""
    channel = make_channel(scheduler, tls)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    metadata = token_metadata(token)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if trace is not None:
                    return stub.PlanMemory(trace, timeout=timeout_s, metadata=metadata)
                plan = stub.GetMemoryPlan(scheduler_pb2.MemoryPlanRequest(job_id=job_id), timeout=30,
                                          metadata=metadata)
            except grpc.RpcError as err:
                raise from_rpc_error(err, f"scheduler at {scheduler}") from None
            if plan.ready:
                return plan
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"no memory plan for job {job_id} after {timeout_s:.0f}s: worker 0 reports "
                                       f"the trace after its first step")
            time.sleep(0.5)
    finally:
        channel.close()
