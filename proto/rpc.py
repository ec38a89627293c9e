"""Channel and server helpers shared by every Seraphim service: message limits, the cluster token, TLS, and the
chunked transport for messages larger than one gRPC message.

Every call carries the cluster token in the ``x-seraphim-token`` metadata entry; a server built here refuses a
call without the right token with UNAUTHENTICATED. A message over the limit is cut into CRC-checked chunks and
sent through the service's ``Chunked`` stream, never rejected.
"""

from __future__ import annotations

import hmac
import os
import zlib
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import grpc

from seraphim.proto import common_pb2
from seraphim.proto.errors import DataLoss, InvalidArgument, SeraphimError

TOKEN_METADATA_KEY = "x-seraphim-token"
Handler = Callable[..., Any]
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS: the server uses cert and key; a client uses ca (and cert/key for mutual TLS)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # name the server's certificate was issued for, when it is not the host

    def read(self, which: str) -> bytes | None:
        path = getattr(self, which)
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read TLS {which} file {path!r}: {exc.strerror}") from exc


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` as (host, port); InvalidArgument naming the address when it is not one (port 0..65535, where
    0 asks to pick a free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"address {address!r} is not host:port (port 0..65535; 0 = pick a free one locally)")
    return host, int(port)


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),
    ]


def make_channel(address: str, tls: TlsFiles | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A channel to `address` with raised message limits, over TLS when tls names a CA."""
    options = channel_options(max_message_bytes)
    if tls is not None and tls.ca is not None:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=tls.read("ca"), private_key=tls.read("key"),
                                             certificate_chain=tls.read("cert"))
        return grpc.secure_channel(address, creds, options=options)
    return grpc.insecure_channel(address, options=options)


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_METADATA_KEY, token),) if token else ()


def resolve_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The cluster token from an argument, a file, or SERAPHIM_TOKEN / SERAPHIM_TOKEN_FILE in the environment."""
    if token:
        return token
    token_file = token_file or os.environ.get("SERAPHIM_TOKEN_FILE")
    if token_file:
        try:
            value = Path(token_file).read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read token file {token_file!r}: {exc.strerror}") from exc
        if not value:
            raise InvalidArgument(f"token file {token_file!r} is empty")
        return value
    return os.environ.get("SERAPHIM_TOKEN") or None


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks the cluster token, before any handler runs."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY and hmac.compare_digest(value.encode(), self._token):
                return continuation(handler_call_details)
        return _refusal(continuation(handler_call_details))


def wire_handler(request: bool = False, reply: bool = False) -> Callable[[Handler], Handler]:
    """Mark a unary servicer method that reads its request and/or writes its reply as protobuf wire bytes itself
    (proto.codec does so for the array-heavy messages, copying the array once); a server from make_server then
    hands it the request bytes and sends its reply bytes as they are, whatever (de)serializer it was registered
    with."""

    def mark(method: Handler) -> Handler:
        method.wire_request, method.wire_reply = request, reply
        return method

    return mark


class WireBytesInterceptor(grpc.ServerInterceptor):
    """Drops the request deserializer / reply serializer of the methods marked with wire_handler."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        behavior = handler.unary_unary if handler is not None else None
        wire_request, wire_reply = getattr(behavior, "wire_request", False), getattr(behavior, "wire_reply", False)
        if not (wire_request or wire_reply):
            return handler
        return handler._replace(request_deserializer=None if wire_request else handler.request_deserializer,
                                response_serializer=None if wire_reply else handler.response_serializer)


class RequestParsingInterceptor(grpc.ServerInterceptor):
    """Parses each request inside its handler, so that bytes which are not the method's request message get
    INVALID_ARGUMENT naming the method; gRPC's own deserializer would answer a bare INTERNAL ("Exception
    deserializing request!"), which reads as a server bug. Methods that read wire bytes themselves are left as
    they are."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse, method = handler.request_deserializer, handler_call_details.method

        def parsed(data: bytes, context: grpc.ServicerContext) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # protobuf's DecodeError has no stable import path
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{method}: the request ({len(data)} bytes) does not parse as its message: {exc}")

        if handler.request_streaming:
            kind = "stream_stream" if handler.response_streaming else "stream_unary"
            behavior = getattr(handler, kind)

            def run(requests: Iterable[bytes], context: grpc.ServicerContext) -> Any:
                return behavior((parsed(r, context) for r in requests), context)
        else:
            kind = "unary_stream" if handler.response_streaming else "unary_unary"
            behavior = getattr(handler, kind)

            def run(request: bytes, context: grpc.ServicerContext) -> Any:
                return behavior(parsed(request, context), context)

        return handler._replace(request_deserializer=None, **{kind: run})


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None

    def deny(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong cluster token: pass the token of this cluster "
                      "(--token, --token-file or SERAPHIM_TOKEN)")

    # a refused request is never parsed: bytes that are not the method's message get UNAUTHENTICATED too
    kw = dict(request_deserializer=None, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


def make_server(host: str, port: int, token: str | None = None, tls: TlsFiles | None = None,
                max_workers: int = 32, max_message_bytes: int = MAX_MESSAGE_BYTES,
                require_client_auth: bool = False) -> tuple[grpc.Server, int]:
    """A started-later server bound to host:port (port 0 picks a free one); returns it with the bound port.

    ``require_client_auth``: mutual TLS, for servers whose callers are identified by their certificate (the parties
    of a federated session): the TLS handshake refuses a caller without a certificate issued by ``tls.ca``.
    Raises OSError naming the address when the port is taken.
    """
    if require_client_auth and (tls is None or not (tls.cert and tls.key and tls.ca)):
        raise InvalidArgument(f"require_client_auth (mutual TLS) needs tls with cert, key and the ca that issued the "
                              f"clients' certificates; got {tls}")
    interceptors = ([TokenInterceptor(token)] if token else []) + [RequestParsingInterceptor(),
                                                                    WireBytesInterceptor()]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors,
                         options=channel_options(max_message_bytes) + [("grpc.so_reuseport", 0)])
    address = f"{host}:{port}"
    try:
        if tls is not None and tls.cert is not None:
            creds = grpc.ssl_server_credentials([(tls.read("key"), tls.read("cert"))],
                                                root_certificates=tls.read("ca"),
                                                require_client_auth=require_client_auth)
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local")
    return server, bound


def split_message(method: str, payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[common_pb2.Chunk]:
    """Cut a serialized message into chunks that each carry its total size and CRC."""
    crc = zlib.crc32(payload)
    total = max(1, -(-len(payload) // chunk_bytes))
    view = memoryview(payload)
    for i in range(total):
        yield common_pb2.Chunk(method=method, index=i, total=total, size=len(payload), crc32=crc,
                               data=bytes(view[i * chunk_bytes:(i + 1) * chunk_bytes]))


def join_chunks(chunks: Iterable[common_pb2.Chunk]) -> tuple[str, bytes]:
    """Reassemble a message; a missing, repeated or out-of-order chunk is InvalidArgument, a bad CRC DataLoss."""
    parts: list[bytes] = []
    first: common_pb2.Chunk | None = None
    for chunk in chunks:
        if first is None:
            first = chunk
            if chunk.total < 1 or chunk.size < 0:
                raise InvalidArgument(f"chunk header is malformed: total={chunk.total}, size={chunk.size}")
        if chunk.index != len(parts) or chunk.total != first.total or chunk.method != first.method:
            raise InvalidArgument(
                f"chunk stream out of order: expected chunk {len(parts)} of {first.total} for {first.method!r}, "
                f"got chunk {chunk.index} of {chunk.total} for {chunk.method!r}")
        parts.append(chunk.data)
        if len(parts) == first.total:
            break
    if first is None:
        raise InvalidArgument("chunk stream is empty: expected at least one chunk")
    payload = b"".join(parts)
    if len(parts) < first.total or len(payload) != first.size:
        raise InvalidArgument(f"chunk stream truncated: got {len(parts)} of {first.total} chunks, "
                              f"{len(payload)} of {first.size} bytes for {first.method!r}")
    if zlib.crc32(payload) != first.crc32:
        raise DataLoss(f"chunked {first.method!r} message is corrupt: CRC-32 mismatch over {first.size} bytes")
    return first.method, payload


def serve_chunked(request_iterator: Iterable[common_pb2.Chunk], context: grpc.ServicerContext,
                  routes: dict[str, tuple[type | None, Handler]], chunk_bytes: int = CHUNK_BYTES
                  ) -> Iterator[common_pb2.Chunk]:
    """Server side of ``Chunked``: rebuild the request, run the unary handler it names, chunk the reply.

    A route without a request class gets the request's wire bytes; a handler may answer wire bytes.
    """
    try:
        method, payload = join_chunks(request_iterator)
        if method not in routes:
            raise InvalidArgument(f"chunked call names unknown method {method!r}; known: {sorted(routes)}")
        request_cls, handler = routes[method]
        request = payload if request_cls is None else request_cls()
        try:
            if request_cls is not None:
                request.ParseFromString(payload)
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            raise InvalidArgument(f"chunked {method!r} request does not parse: {exc}") from exc
    except SeraphimError as exc:
        context.abort(exc.code, str(exc))
    reply = handler(request, context)
    yield from split_message(method, reply if isinstance(reply, bytes) else reply.SerializeToString(), chunk_bytes)
