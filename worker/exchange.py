"""The gRPC transport of a federated session: ``GrpcPartyChannel`` implements ``PartyChannel`` over PartyExchange.

Each party serves ``PartyExchange`` on its endpoint and calls its peers' servers. Why each check exists:

- **Who may call**: every call carries the cluster token (``TokenInterceptor``). With TLS configured, the channel is
  mutual TLS: a party's certificate names the party (CN and a DNS SAN equal to its name); a client checks the
  server's certificate against the peer it means to reach (``ssl_target_name_override`` = peer name) and the
  server checks that the caller's certificate names the party the Hello or Envelope claims to come from. A peer
  whose certificate our CA did not issue is ``PartyMessageRejected`` at once, not a peer to wait for.
- **Handshake** (``Hello``, once per direction): an ephemeral X25519 exchange, HKDF-SHA256 over the session id,
  both names, both Paillier public-key fingerprints and both ephemeral keys, gives each sender→receiver link its
  own HMAC key, and the server proves it holds the key (``confirm``). Keys are fresh per process, so a restarted
  party cannot pick up an old link: its new Hello tells the still-running peers that the session is broken.
- **Every message** (``Envelope``) carries session id, sender, receiver, tag, a sequence number that counts from 0
  per (sender, receiver, tag), the declared payload size, and an HMAC-SHA256 over all of them and the payload.
  The MAC rather than TLS alone gives integrity end to end and without TLS (token-only deployments on a trusted
  network); the sequence number makes replay, loss and reordering visible. The receiver rejects a message that
  fails any check (the sender's ``send`` raises ``PartyMessageRejected``) and from then on every ``recv`` from that
  peer raises it too: after a forged or replayed message the session cannot be trusted to go on.
- **Liveness**: ``handshake`` retries missing peers until its deadline (``PartyTimeout`` naming each missing party
  and its endpoint); a waiting ``recv`` pings the peer every ``liveness_s``, so a peer that died or restarted is a
  ``PartyError`` within seconds rather than at the timeout; ``close`` tells the peers (an authenticated
  ``seraphim.bye`` envelope), so they stop at once with its reason.

Endpoints: ``host:port``, or ``127.0.0.1:0`` for a local run: the party binds a free port and publishes
``host:port`` in ``<run_dir>/parties/<name>.addr`` (written atomically); its peers poll that file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from seraphim.proto import exchange_pb2, exchange_pb2_grpc
from seraphim.proto.atomic_file import atomic_write
from seraphim.proto.rpc import (CHUNK_BYTES, MAX_MESSAGE_BYTES, TlsFiles, join_chunks, make_channel, make_server,
                                serve_chunked, split_address, split_message, token_metadata)
from seraphim.worker.party_channel import PartyError, PartyMessageRejected, PartyTimeout

__all__ = ["GrpcPartyChannel", "PARTY_NAME_PATTERN", "address_file", "fingerprint", "envelope_mac"]

log = logging.getLogger("seraphim.exchange")

PARTY_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"  #: a DNS label: the name in the party's certificate
RESERVED_TAG_PREFIX = "seraphim."
BYE_TAG = "seraphim.bye"
_MAC_DOMAIN = b"seraphim/exchange/envelope/v1\x00"
_LINK_DOMAIN = b"seraphim/exchange/link/v1\x00"
_CONFIRM = b"seraphim/exchange/confirm/v1"
_REJECTED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.DATA_LOSS)
_ENVELOPE_OVERHEAD = 64 * 1024  #: room for an envelope's header fields within one gRPC message
_TLS_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"  #: gRPC's detail when the peer's certificate fails our CA's check
_TLS_SOCKET_CLOSED = "Socket closed"  #: what a client sees when the server refuses its certificate


def fingerprint(public_key: bytes) -> str:
    """16 hex digits naming a public key: the first 8 bytes of its SHA-256 (as ``paillier.PublicKey`` does)."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def address_file(run_dir: Path, party: str) -> Path:
    """Where a party serving on port 0 publishes the address it bound."""
    return Path(run_dir) / "parties" / f"{party}.addr"


def _lp(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">I", len(data)) + data


def envelope_mac(key: bytes, env: exchange_pb2.Envelope) -> bytes:
    """HMAC-SHA256 over a domain, the length-prefixed session, sender, receiver and tag, seq, payload size, payload."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(_MAC_DOMAIN + _lp(env.session_id) + _lp(env.sender) + _lp(env.receiver) + _lp(env.tag)
               + struct.pack(">QQ", env.seq, env.payload_size))
    mac.update(env.payload)
    return mac.digest()


def _link_key(shared: bytes, session_id: str, sender: str, receiver: str, sender_fp: str, receiver_fp: str,
              sender_eph: bytes, receiver_eph: bytes) -> bytes:
    info = _LINK_DOMAIN + b"".join(_lp(x) for x in (sender, receiver, sender_fp, receiver_fp, sender_eph,
                                                     receiver_eph))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(session_id.encode()).digest(),
                info=info).derive(shared)


def _confirm(key: bytes) -> bytes:
    return hmac.new(key, _CONFIRM, hashlib.sha256).digest()


def _exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise ValueError(f"exchange_key is not an X25519 public key ({len(peer_public)} bytes): {exc}") from None


@dataclass
class _Peer:
    """What this party knows about one peer: where it is, both link keys, its queues, and why it failed."""

    name: str
    endpoint: str
    address: str = ""                     #: resolved host:port
    channel: grpc.Channel | None = None
    stub: exchange_pb2_grpc.PartyExchangeStub | None = None
    out_key: bytes | None = None          #: key of our messages to it (from our Hello)
    in_key: bytes | None = None           #: key of its messages to us (from its Hello)
    public_key: bytes | None = None
    incarnation: str = ""
    next_out: dict[str, int] = field(default_factory=dict)
    next_in: dict[str, int] = field(default_factory=dict)
    queues: dict[str, deque] = field(default_factory=dict)
    send_locks: dict[str, threading.Lock] = field(default_factory=dict)
    in_lock: threading.Lock = field(default_factory=threading.Lock)
    failure: PartyError | None = None     #: the first rejected message or broken-session event
    closed: str | None = None             #: the reason it gave when it closed the session

    def where(self) -> str:
        return f"party {self.name!r} at {self.address or self.endpoint}"


class GrpcPartyChannel:
    """This party's end of a federated session over gRPC; see the module docstring for the checks it makes.

    ``endpoints`` maps every party of the session (this one included) to ``host:port``; ``public_key`` is this
    party's serialized Paillier public key, exchanged in the handshake (``peer_public_key``). Call ``handshake``
    before ``send``/``recv``; ``close`` (or the context manager) stops the server.
    """

    def __init__(self, party: str, endpoints: Mapping[str, str], session_id: str, token: str, *,
                 public_key: bytes = b"", tls: TlsFiles | None = None, run_dir: Path | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, chunk_bytes: int = CHUNK_BYTES,
                 liveness_s: float = 1.0, gone_after: int = 3, send_timeout_s: float = 300.0) -> None:
        for name in endpoints:
            if not re.match(PARTY_NAME_PATTERN, name):
                raise ValueError(f"party name {name!r} must be a DNS label (lower-case letters, digits, '-', at most "
                                 f"32): it is the name in the party's TLS certificate")
        if party not in endpoints:
            raise ValueError(f"party {party!r} is not one of the session's parties {sorted(endpoints)}")
        if len(endpoints) < 2:
            raise ValueError(f"a session needs at least 2 parties, got {sorted(endpoints)}")
        if not token:
            raise ValueError("a party exchange needs the cluster token (--token, --token-file or SERAPHIM_TOKEN): "
                             "peers refuse calls without it")
        if tls is not None and not (tls.ca and tls.cert and tls.key):
            raise ValueError(f"party {party!r}: TLS needs ca, cert and key (mutual TLS), got {tls}")
        self._party, self._session_id, self._token = party, session_id, token
        self._public_key, self._fingerprint = public_key, fingerprint(public_key)
        self._tls, self._run_dir = tls, run_dir
        self._max_message_bytes, self._chunk_bytes = max_message_bytes, chunk_bytes
        self._liveness_s, self._gone_after, self._send_timeout_s = liveness_s, gone_after, send_timeout_s
        self._metadata = token_metadata(token)
        self._incarnation = secrets.token_hex(8)
        self._peers = {name: _Peer(name, ep) for name, ep in endpoints.items() if name != party}
        for peer in self._peers.values():
            if split_address(peer.endpoint)[1] == 0 and run_dir is None:
                raise ValueError(f"{peer.where()} has port 0 (discovered through its address file): give run_dir")
        self._cond = threading.Condition()
        self._closed = False
        host, port = split_address(endpoints[party])
        if port == 0 and run_dir is None:
            raise ValueError(f"party {party!r} serves on port 0: give run_dir so that its peers find the port")
        self._server, bound = self._serve(host, port)
        self._server.start()
        self.address = f"{host}:{bound}"
        self._addr_file = address_file(run_dir, party) if port == 0 else None
        if self._addr_file is not None:
            self._addr_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._addr_file, lambda f: f.write(self.address.encode()))
        log.info("party %s serves session %s on %s", party, session_id, self.address)

    # -- PartyChannel -----------------------------------------------------------------------------------------
    @property
    def party(self) -> str:
        return self._party

    @property
    def session_id(self) -> str:
        return self._session_id

    def peers(self) -> list[str]:
        return list(self._peers)

    def peer_public_key(self, peer: str) -> bytes:
        """The public key ``peer`` presented in the handshake."""
        key = self._peer(peer).public_key
        if key is None:
            raise PartyError(f"no handshake with party {peer!r} yet: call handshake() first")
        return key

    def send(self, peer: str, tag: str, payload: bytes) -> None:
        if tag.startswith(RESERVED_TAG_PREFIX):
            raise ValueError(f"tag {tag!r}: tags starting with {RESERVED_TAG_PREFIX!r} are reserved")
        self._send(self._peer(peer), tag, payload)

    def recv(self, peer: str, tag: str, timeout_s: float = 60.0) -> bytes:
        p = self._peer(peer)
        deadline = time.monotonic() + timeout_s
        next_ping = time.monotonic() + self._liveness_s
        failed_pings = 0
        while True:
            with self._cond:
                while True:
                    if p.failure is not None:
                        raise p.failure
                    queue = p.queues.get(tag)
                    if queue:
                        return queue.popleft()
                    if p.closed is not None:
                        raise self._closed_error(p, f"it sent {tag!r}")
                    if self._closed:
                        raise PartyError(f"party {self._party!r} closed its channel while waiting for {tag!r}")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PartyTimeout(f"no message {tag!r} from {p.where()} within {timeout_s:g}s: the party "
                                           "is late or stuck (it still answers pings)")
                    wait_s = min(remaining, next_ping - time.monotonic())
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
            failed_pings = self._check_alive(p, failed_pings)
            next_ping = time.monotonic() + self._liveness_s

    def close(self, reason: str = "closed") -> None:
        """Tell every peer the session is over for this party (with ``reason``), stop serving, drop the links."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        for p in self._peers.values():
            if p.out_key is not None and p.failure is None and p.closed is None:
                try:
                    self._send(p, BYE_TAG, reason.encode()[:4096], timeout_s=2.0, retry_s=0.0)
                except PartyError as exc:
                    log.debug("could not tell %s that the session ended: %s", p.where(), exc)
        self._server.stop(grace=1.0).wait()
        for p in self._peers.values():
            if p.channel is not None:
                p.channel.close()
        if self._addr_file is not None:
            self._addr_file.unlink(missing_ok=True)

    def __enter__(self) -> "GrpcPartyChannel":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("closed" if exc is None else f"failed: {type(exc).__name__}: {exc}")

    # -- handshake --------------------------------------------------------------------------------------------
    def handshake(self, timeout_s: float = 60.0) -> None:
        """Open both directions of the link with every peer; retry missing peers until ``timeout_s``.

        Raises PartyTimeout naming every peer that did not answer or did not call (with its endpoint and the last
        error), PartyMessageRejected when a peer refuses us or presents the wrong identity or keys.
        """
        deadline = time.monotonic() + timeout_s
        pending = {name: "not tried" for name, p in self._peers.items() if p.out_key is None}
        while pending:
            for name in list(pending):
                p = self._peers[name]
                if p.failure is not None:
                    raise p.failure
                try:
                    self._hello(p, max(0.5, min(5.0, deadline - time.monotonic())))
                    del pending[name]
                except _Retry as exc:
                    pending[name] = str(exc)
            if pending and time.monotonic() > deadline:
                raise PartyTimeout(f"party {self._party!r}: handshake timed out after {timeout_s:g}s; missing: " +
                                   "; ".join(f"{self._peers[n].where()} ({why})" for n, why in pending.items()))
            if pending:
                time.sleep(0.1)
        with self._cond:
            while True:
                for p in self._peers.values():
                    if p.failure is not None:
                        raise p.failure
                silent = [p for p in self._peers.values() if p.in_key is None]
                if not silent:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PartyTimeout(f"party {self._party!r}: handshake timed out after {timeout_s:g}s; no Hello "
                                       "from " + ", ".join(p.where() for p in silent))
                self._cond.wait(min(remaining, 0.5))

    def _hello(self, p: _Peer, timeout_s: float) -> None:
        """Our half of the link to ``p``; raises _Retry while it may still come up."""
        self._connect(p)
        ephemeral = X25519PrivateKey.generate()
        mine = ephemeral.public_key().public_bytes_raw()
        request = exchange_pb2.HelloRequest(session_id=self._session_id, party=self._party, peer=p.name,
                                            public_key=self._public_key, fingerprint=self._fingerprint,
                                            exchange_key=mine, incarnation=self._incarnation)
        try:
            reply = p.stub.Hello(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            details = err.details() or ""
            if err.code() in _REJECTED:
                raise PartyMessageRejected(f"{p.where()} refused our Hello: {details}") from None
            if self._tls is not None and _TLS_VERIFY_FAILED in details:
                raise PartyMessageRejected(f"{p.where()} presented a TLS certificate that fails verification against "
                                           f"our CA {self._tls.ca} (not issued by it, or expired): {details}") from None
            if self._tls is not None and _TLS_SOCKET_CLOSED in details:
                details += ("; under mutual TLS a peer closes the socket when its CA did not issue our certificate: "
                            f"check that {p.name!r}'s tls_ca issued our tls_cert {self._tls.cert}")
            raise _Retry(f"{err.code().name}: {details}") from None
        if reply.party != p.name:
            raise _Retry(f"{p.address} is served by party {reply.party!r}, not {p.name!r} (a stale address?)")
        if fingerprint(reply.public_key) != reply.fingerprint:
            raise PartyMessageRejected(f"{p.where()} sent a public key whose fingerprint is "
                                       f"{fingerprint(reply.public_key)}, not the {reply.fingerprint} it claims")
        try:
            shared = _exchange(ephemeral, reply.exchange_key)
        except ValueError as exc:
            raise PartyMessageRejected(f"{p.where()}: {exc}") from None
        key = _link_key(shared, self._session_id, self._party, p.name, self._fingerprint, reply.fingerprint, mine,
                        reply.exchange_key)
        if not hmac.compare_digest(reply.confirm, _confirm(key)):
            raise PartyMessageRejected(f"{p.where()} does not hold the link key we derived: key confirmation failed "
                                       "(tampered handshake?)")
        with self._cond:
            self._check_same_peer(p, reply.public_key, reply.incarnation)
            p.out_key = key
            p.next_out.clear()
        log.info("party %s: link to %s is up (its key %s)", self._party, p.where(), reply.fingerprint)

    def _check_same_peer(self, p: _Peer, public_key: bytes, incarnation: str) -> None:
        """Both directions of a link must come from one process with one key (caller holds the lock)."""
        if p.public_key is not None and p.public_key != public_key:
            raise self._fail(p, PartyMessageRejected(
                f"{p.where()} presented two public keys ({fingerprint(p.public_key)} and {fingerprint(public_key)})"))
        if p.incarnation and p.incarnation != incarnation:
            raise self._fail(p, PartyError(f"{p.where()} restarted during the handshake (a new process); start the "
                                           "session again"))
        p.public_key, p.incarnation = public_key, incarnation

    def _connect(self, p: _Peer) -> None:
        """(Re)open the gRPC channel to the peer's current address (its address file for port 0)."""
        host, port = split_address(p.endpoint)
        address = p.endpoint
        if port == 0:
            path = address_file(self._run_dir, p.name)
            try:
                address = path.read_text().strip()
            except FileNotFoundError:
                raise _Retry(f"it has not published its address in {path} yet") from None
        if address != p.address or p.channel is None:
            if p.channel is not None:
                p.channel.close()
            tls = None
            if self._tls is not None:
                tls = TlsFiles(ca=self._tls.ca, cert=self._tls.cert, key=self._tls.key, server_name=p.name)
            p.address = address
            p.channel = make_channel(address, tls, self._max_message_bytes)
            p.stub = exchange_pb2_grpc.PartyExchangeStub(p.channel)

    # -- sending ----------------------------------------------------------------------------------------------
    def _send(self, p: _Peer, tag: str, payload: bytes, timeout_s: float | None = None, retry_s: float = 5.0) -> None:
        if p.out_key is None:
            raise PartyError(f"no link to {p.where()}: call handshake() before sending {tag!r}")
        if p.failure is not None:
            raise p.failure
        if p.closed is not None:
            raise self._closed_error(p, f"message {tag!r} could be delivered")
        lock = p.send_locks.setdefault(tag, threading.Lock())
        with lock:
            seq = p.next_out.get(tag, 0)
            env = exchange_pb2.Envelope(session_id=self._session_id, sender=self._party, receiver=p.name, tag=tag,
                                        seq=seq, payload_size=len(payload), payload=payload)
            env.mac = envelope_mac(p.out_key, env)
            self._deliver(p, env, timeout_s or self._send_timeout_s, retry_s)
            p.next_out[tag] = seq + 1

    def _deliver(self, p: _Peer, env: exchange_pb2.Envelope, timeout_s: float, retry_s: float) -> None:
        """One Deliver call (Chunked when over the limit); a peer that cannot be reached gets ``retry_s``."""
        chunked = env.ByteSize() > self._max_message_bytes - _ENVELOPE_OVERHEAD
        deadline = time.monotonic() + retry_s
        what = f"message {env.tag!r} #{env.seq} ({env.payload_size} bytes) to {p.where()}"
        while True:
            try:
                if chunked:
                    replies = p.stub.Chunked(split_message("Deliver", env.SerializeToString(), self._chunk_bytes),
                                             timeout=timeout_s, metadata=self._metadata)
                    join_chunks(replies)
                else:
                    p.stub.Deliver(env, timeout=timeout_s, metadata=self._metadata)
                return
            except grpc.RpcError as err:
                code, details = err.code(), err.details()
                if code in _REJECTED:
                    raise PartyMessageRejected(f"{what} was rejected: {details}") from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise PartyTimeout(f"{what} was not acknowledged within {timeout_s:g}s") from None
                if p.failure is not None:  # e.g. its restarted process said hello meanwhile
                    raise p.failure from None
                if p.closed is not None:  # it said goodbye, then stopped serving
                    raise self._closed_error(p, f"{what} could be delivered") from None
                if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() > deadline:
                    raise self._fail(p, PartyError(f"{p.where()} is unreachable (gone?): {what} failed for "
                                                   f"{retry_s:g}s: {details}")) from None
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise PartyError(f"{what} failed: {code.name}: {details}") from None
            time.sleep(0.2)

    # -- liveness ---------------------------------------------------------------------------------------------
    def _check_alive(self, p: _Peer, failed: int) -> int:
        """Ping a peer we wait for; returns the count of consecutive failures, raises once it is gone."""
        if p.stub is None:
            return failed
        try:
            reply = p.stub.Ping(exchange_pb2.PingRequest(session_id=self._session_id, party=self._party),
                                timeout=max(2.0, self._liveness_s * 2), metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                return failed  # slow to answer is not gone
            if failed + 1 >= self._gone_after:
                raise self._fail(p, PartyError(f"{p.where()} is gone: {err.details()} ({failed + 1} pings in a row "
                                               "failed)")) from None
            return failed + 1
        if reply.party != p.name or reply.session_id != self._session_id or reply.incarnation != p.incarnation:
            raise self._fail(p, PartyError(
                f"{p.where()} was replaced: it now serves party {reply.party!r} (process {reply.incarnation}) in "
                f"session {reply.session_id!r}; the session must start again"))
        return 0

    def _fail(self, p: _Peer, error: PartyError) -> PartyError:
        """Record the first failure of a peer's link; every later recv from it raises it."""
        with self._cond:
            if p.failure is None:
                p.failure = error
                log.error("party %s: %s", self._party, error)
            self._cond.notify_all()
            return p.failure

    @staticmethod
    def _closed_error(p: _Peer, before: str) -> PartyError:
        """The error for talking to a peer that said goodbye: its reason says why the session ended."""
        return PartyError(f"{p.where()} closed the session ({p.closed}) before {before}")

    def _peer(self, name: str) -> _Peer:
        try:
            return self._peers[name]
        except KeyError:
            raise ValueError(f"party {name!r} is not a peer of {self._party!r}; peers: {list(self._peers)}") from None

    # -- serving ----------------------------------------------------------------------------------------------
    def _serve(self, host: str, port: int) -> tuple[grpc.Server, int]:
        """A server with the token check; with TLS, mutual TLS: the party identity is the client certificate."""
        server, bound = make_server(host, port, self._token, self._tls, max_workers=16,
                                    max_message_bytes=self._max_message_bytes,
                                    require_client_auth=self._tls is not None)
        exchange_pb2_grpc.add_PartyExchangeServicer_to_server(_Service(self), server)
        return server, bound

    def _identity(self, context: grpc.ServicerContext) -> str | None:
        """The party name in the caller's certificate (None without TLS)."""
        if self._tls is None:
            return None
        names = context.auth_context().get("x509_common_name") or [b""]
        return names[0].decode(errors="replace")

    def _check_caller(self, claimed: str, session_id: str, receiver: str, context: grpc.ServicerContext) -> _Peer:
        """The peer a call claims to come from, after the checks every call makes; aborts the call otherwise."""
        if claimed not in self._peers:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{claimed!r} is not a party of session "
                                                             f"{self._session_id!r} (parties: {self._parties()})")
        p = self._peers[claimed]
        identity = self._identity(context)
        if identity is not None and identity != claimed:
            self._reject(p, context, grpc.StatusCode.UNAUTHENTICATED,
                         f"a caller whose certificate names {identity!r} claimed to be party {claimed!r}")
        if session_id != self._session_id or receiver != self._party:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,  # another session's traffic: refused, not our failure
                          f"a call from {claimed!r} for party {receiver!r} in session {session_id!r} reached party "
                          f"{self._party!r} of session {self._session_id!r}")
        return p

    def _parties(self) -> list[str]:
        return sorted([self._party, *self._peers])

    def _reject(self, p: _Peer, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self._fail(p, PartyMessageRejected(f"rejected a message from {p.where()}: {message}"))
        context.abort(code, f"party {self._party!r} rejected it: {message}")

    def _on_hello(self, request: exchange_pb2.HelloRequest, context: grpc.ServicerContext) -> exchange_pb2.HelloReply:
        p = self._check_caller(request.party, request.session_id, request.peer, context)
        if fingerprint(request.public_key) != request.fingerprint:
            self._reject(p, context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"Hello's public key has fingerprint {fingerprint(request.public_key)}, not the "
                         f"{request.fingerprint} it claims")
        ephemeral = X25519PrivateKey.generate()
        mine = ephemeral.public_key().public_bytes_raw()
        try:
            shared = _exchange(ephemeral, request.exchange_key)
        except ValueError as exc:
            self._reject(p, context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        key = _link_key(shared, self._session_id, p.name, self._party, request.fingerprint, self._fingerprint,
                        request.exchange_key, mine)
        with self._cond:
            if p.in_key is not None and (request.incarnation != p.incarnation or p.next_in):
                why = (f"{p.where()} handshook again mid-session (a restarted process): this session cannot go on; "
                       "restart this party too, both resume from their last completed step")
                self._fail(p, PartyError(why))
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"party {request.party!r} already joined session {self._session_id!r} at party "
                              f"{self._party!r}; retry once it has restarted")
            try:
                self._check_same_peer(p, request.public_key, request.incarnation)
            except PartyError as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            p.in_key = key
            p.next_in.clear()
            self._cond.notify_all()
        return exchange_pb2.HelloReply(party=self._party, public_key=self._public_key, fingerprint=self._fingerprint,
                                       exchange_key=mine, confirm=_confirm(key), incarnation=self._incarnation)

    def _on_deliver(self, env: exchange_pb2.Envelope, context: grpc.ServicerContext) -> exchange_pb2.Ack:
        p = self._check_caller(env.sender, env.session_id, env.receiver, context)
        what = f"message {env.tag!r} #{env.seq}"
        with p.in_lock:
            if p.in_key is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"party {self._party!r} has no handshake from {env.sender!r} in session "
                              f"{self._session_id!r} (did it restart?); {what} not delivered")
            if p.failure is not None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"party {self._party!r} no longer accepts messages from {env.sender!r}: {p.failure}")
            if len(env.payload) != env.payload_size:
                self._reject(p, context, grpc.StatusCode.DATA_LOSS,
                             f"{what} is truncated: {len(env.payload)} of its {env.payload_size} bytes arrived")
            if not hmac.compare_digest(env.mac, envelope_mac(p.in_key, env)):
                self._reject(p, context, grpc.StatusCode.UNAUTHENTICATED,
                             f"{what} failed its MAC check: tampered with, truncated or not from this session's link")
            expected = p.next_in.get(env.tag, 0)
            if env.seq < expected:
                self._reject(p, context, grpc.StatusCode.INVALID_ARGUMENT,
                             f"{what} is a replay: messages up to #{expected - 1} under this tag were delivered")
            if env.seq > expected:
                self._reject(p, context, grpc.StatusCode.INVALID_ARGUMENT,
                             f"{what} is out of order: #{expected} is next under this tag (lost or reordered)")
            p.next_in[env.tag] = expected + 1
            with self._cond:
                if env.tag == BYE_TAG:
                    p.closed = env.payload.decode(errors="replace") or "closed"
                else:
                    p.queues.setdefault(env.tag, deque()).append(env.payload)
                self._cond.notify_all()
        return exchange_pb2.Ack(seq=env.seq)

    def _on_ping(self, request: exchange_pb2.PingRequest, context: grpc.ServicerContext) -> exchange_pb2.PingReply:
        return exchange_pb2.PingReply(party=self._party, session_id=self._session_id, incarnation=self._incarnation)


class _Retry(Exception):
    """A handshake attempt that failed in a way that may pass (peer not up yet)."""


class _Service(exchange_pb2_grpc.PartyExchangeServicer):
    """PartyExchange served by a GrpcPartyChannel."""

    def __init__(self, channel: GrpcPartyChannel) -> None:
        self._channel = channel
        self._routes = {"Deliver": (exchange_pb2.Envelope, channel._on_deliver)}

    def Hello(self, request, context):
        return self._channel._on_hello(request, context)

    def Deliver(self, request, context):
        return self._channel._on_deliver(request, context)

    def Ping(self, request, context):
        return self._channel._on_ping(request, context)

    def Chunked(self, request_iterator, context):
        yield from serve_chunked(request_iterator, context, self._routes, self._channel._chunk_bytes)
