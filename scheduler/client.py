"""A client of the scheduler service for the CLI and for programs that submit and watch jobs."""

from __future__ import annotations

import os
from typing import Any, Iterator

import grpc

from seraphim.proto import scheduler_pb2, scheduler_pb2_grpc
from seraphim.proto.errors import SeraphimError, Unavailable, from_rpc_error
from seraphim.proto.rpc import TlsFiles, make_channel, token_metadata

DEFAULT_SCHEDULER = "127.0.0.1:7070"


def default_address() -> str:
    return os.environ.get("SERAPHIM_SCHEDULER", DEFAULT_SCHEDULER)


class SchedulerClient:
    """Calls the scheduler at `address`; an unreachable scheduler is a one-line Unavailable."""

    def __init__(self, address: str, token: str | None = None, tls: TlsFiles | None = None,
                 timeout_s: float = 30.0) -> None:
        self.address = address
        self._channel = make_channel(address, tls)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._metadata = token_metadata(token)
        self.timeout_s = timeout_s

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _error(self, err: grpc.RpcError) -> SeraphimError:
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"cannot reach the scheduler at {self.address}: is it running? (start one with "
                               f"`seraphim scheduler start`, or pass --scheduler / SERAPHIM_SCHEDULER)")
        return from_rpc_error(err, f"scheduler at {self.address}")

    def submit(self, spec_yaml: str, launcher: str = "", run_root: str = "") -> scheduler_pb2.JobStatus:
        return self._call("SubmitJob", scheduler_pb2.SubmitJobRequest(spec_yaml=spec_yaml, launcher=launcher,
                                                                      run_root=run_root))

    def job(self, job_id: str) -> scheduler_pb2.JobStatus:
        return self._call("GetJob", scheduler_pb2.JobRef(job_id=job_id))

    def jobs(self) -> list[scheduler_pb2.JobStatus]:
        return list(self._call("ListJobs", scheduler_pb2.ListJobsRequest()).jobs)

    def cluster_view(self, job_id: str, worker_rank: int | None = None) -> scheduler_pb2.ClusterView:
        """The job's PS shards (a worker's own, when each worker has its own)."""
        request = scheduler_pb2.ClusterViewRequest(job_id=job_id)
        if worker_rank is not None:
            request.worker_rank = worker_rank
        return self._call("GetClusterView", request)

    def cancel(self, job_id: str) -> scheduler_pb2.JobStatus:
        return self._call("CancelJob", scheduler_pb2.JobRef(job_id=job_id))

    def logs(self, job_id: str, source: str = "", follow: bool = False) -> Iterator[scheduler_pb2.LogChunk]:
        request = scheduler_pb2.LogsRequest(job_id=job_id, source=source, follow=follow)
        try:
            yield from self._stub.GetLogs(request, metadata=self._metadata,
                                          timeout=None if follow else self.timeout_s)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SchedulerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
