"""Errors that cross the wire: each maps to one gRPC status code, both ways.

Servers raise these for bad input; the service wrapper turns them into the status and message; the client turns
a failed call back into the same class, so a user sees ``NotFound: table 'x' ...`` rather than a raw RpcError.
"""

from __future__ import annotations

import grpc


class FatalJobError(Exception):
    """An error that depends only on the job's input or spec (data that cannot be read, ids that do not intersect,
    a wrong key or certificate): a restarted worker would hit it again, so the scheduler ends the job at once
    instead of spending its restarts (the worker says so with ``HeartbeatRequest.fatal``). Workload errors of that
    kind subclass it beside their usual base."""


class SeraphimError(Exception):
    """Base of every error that a Seraphim service reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(SeraphimError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SeraphimError, KeyError):
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError quotes its message; show it plain
        return str(self.args[0]) if self.args else ""


class AlreadyExists(SeraphimError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SeraphimError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(SeraphimError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(SeraphimError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(SeraphimError):
    code = grpc.StatusCode.DATA_LOSS


class Unavailable(SeraphimError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(SeraphimError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(SeraphimError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[SeraphimError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unauthenticated,
                DeadlineExceeded, DataLoss, Unavailable, ResourceExhausted, Internal)
}


def from_rpc_error(err: grpc.RpcError, where: str) -> SeraphimError:
    """The Seraphim error for a failed call; `where` names the server, e.g. 'ps 1 (127.0.0.1:5001)'."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, SeraphimError)
    exc = cls(f"{where}: {details}")
    exc.code = code
    return exc
