"""The gRPC face of a ParameterServer: decode, validate, dispatch, and map errors to precise status codes.

A bad request gets INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...; an unexpected failure INTERNAL with
its message. The server keeps serving either way. Pull replies and push requests, nearly all array bytes, are
written and read as wire bytes (proto.codec; proto.rpc.wire_handler): a pull gathers its rows from the pages
straight into the reply's bytes, and a push's gradients are read where they arrived.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from typing import Any, Callable

import grpc

from seraphim.proto import ps_pb2, ps_pb2_grpc
from seraphim.proto.codec import decode_array, decode_keys, decode_push_request, encode_array, pull_reply_buffer
from seraphim.proto.errors import SeraphimError
from seraphim.proto.rpc import CHUNK_BYTES, serve_chunked, wire_handler
from seraphim.proto.telemetry import RpcMetrics
from seraphim.ps.server import ParameterServer

log = logging.getLogger("seraphim.ps")


def _answer(name: str, handler: Callable[[Any], Any], request: Any, context: grpc.ServicerContext) -> Any:
    """Run a handler; our errors become their status codes, anything else INTERNAL, logged with its traceback."""
    try:
        return handler(request)
    except SeraphimError as exc:
        context.abort(exc.code, str(exc))
    except Exception as exc:  # a bug must not kill the server; the caller gets the message
        log.error("%s failed: %s", name, traceback.format_exc())
        context.abort(grpc.StatusCode.INTERNAL, f"{name} failed on the PS: {type(exc).__name__}: {exc}")


def _size(message: Any) -> int:
    return len(message) if isinstance(message, bytes) else message.ByteSize()


def _unary(method: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """A unary RPC: answer, send a reply over the message limit back through Chunked, and time it (the RPC metrics:
    latency, request and reply bytes, the status code of a failed call)."""
    name = method.__name__

    @functools.wraps(method)
    def rpc(self: "PSService", request: Any, context: grpc.ServicerContext) -> Any:
        start, received, sent = time.perf_counter(), _size(request), 0
        try:
            reply = _answer(name, lambda r: method(self, r), request, context)
            size = _size(reply)
            if size > self.max_message_bytes:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{name} reply of {size} bytes exceeds the message limit of "
                              f"{self.max_message_bytes}; repeat the call through Chunked")
            sent = size
            return reply
        except Exception:
            self.rpc.error(name, _code_name(context))
            raise
        finally:
            self.rpc.observe(name, time.perf_counter() - start, sent, received)

    rpc.handler = method
    return rpc


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class PSService(ps_pb2_grpc.ParameterServerServicer):
    """Serves one ParameterServer over gRPC; ``rpc`` receives its calls' metrics (ps/metrics.py)."""

    def __init__(self, server: ParameterServer, max_message_bytes: int, rpc: RpcMetrics) -> None:
        self.ps = server
        self.max_message_bytes = max_message_bytes
        self.rpc = rpc
        self._routes = {
            name: (request_cls, functools.partial(_answer, name, functools.partial(getattr(PSService, name).handler,
                                                                                   self)))
            for name, request_cls in (("CreateTable", ps_pb2.CreateTableRequest), ("Pull", ps_pb2.PullRequest),
                                      ("Push", None), ("Call", ps_pb2.PsfRequest))
        }

    @_unary
    def CreateTable(self, request):
        return self.ps.create_table(request)

    @_unary
    def DropTable(self, request):
        return ps_pb2.DropTableReply(dropped=self.ps.drop_table(request.name))

    @wire_handler(reply=True)
    @_unary
    def Pull(self, request):
        """Answers PullReply wire bytes, the rows gathered from their pages straight into them (one copy)."""
        keys = decode_keys(request.keys)
        table = self.ps.table(request.table)
        with table.reading(keys, request.min_version, request.wait_s or self.ps.config.clock_timeout_s) as versions:
            reply, rows = pull_reply_buffer(table.spec.dtype, (len(keys), table.layout.dim), versions)
            self.ps.pull(request.table, keys, create=not request.read_only, out=rows)
        return reply

    @wire_handler(request=True)
    @_unary
    def Push(self, request: bytes):
        """Takes PushRequest wire bytes: keys and values are views of them, not protobuf copies."""
        push = decode_push_request(request)
        return ps_pb2.PushReply(rows=self.ps.push(push.table, push.keys, push.values, push.mode, push.worker,
                                                  push.version, push.lr_scale or 1.0, push.seq,
                                                  push.clock))

    @_unary
    def Call(self, request):
        tensors = [decode_array(t) for t in request.tensors]
        result = self.ps.call(request.table, request.name, dict(request.args), tensors)
        return ps_pb2.PsfReply(tensors=[encode_array(t) for t in result.tensors], merge=result.merge)

    @_unary
    def Clock(self, request):
        min_clock = self.ps.clock(request.worker, request.clock, request.timeout_s)
        return ps_pb2.ClockReply(min_clock=min_clock, clocks=self.ps.clocks.clocks)

    @_unary
    def GetClock(self, request):
        return ps_pb2.ClockReply(min_clock=self.ps.clocks.min_clock, clocks=self.ps.clocks.clocks)

    @_unary
    def Snapshot(self, request):
        return ps_pb2.SnapshotReply(clock=self.ps.snapshot())

    @_unary
    def Stats(self, request):
        return self.ps.stats()

    @_unary
    def Health(self, request):
        return self.ps.health()

    def Chunked(self, request_iterator, context):
        start = time.perf_counter()
        try:
            yield from serve_chunked(request_iterator, context, self._routes,
                                     chunk_bytes=min(CHUNK_BYTES, self.max_message_bytes // 2))
        finally:
            self.rpc.observe("Chunked", time.perf_counter() - start)
