"""In-process PartyChannel: parties as threads of one process, messages through queues.

Why: protocol unit tests and benchmarks run every party of a BlindFL session in one process without gRPC, with the
same ordering and error semantics as ``worker.exchange`` (per (sender, receiver, tag) FIFO, ``PartyTimeout`` when
nothing arrives, ``PartyError`` once a party closed). A hub can record every message that crosses between parties
(the privacy tests inspect them) and pass each through an ``intercept`` hook (tests tamper with messages there).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from seraphim.worker.party_channel import PartyError, PartyTimeout


@dataclass(frozen=True)
class Message:
    """One payload as it crossed from ``sender`` to ``receiver``."""

    sender: str
    receiver: str
    tag: str
    payload: bytes


Intercept = Callable[[Message], bytes]


class LocalHub:
    """The parties of one in-process session; ``channel(name)`` is that party's PartyChannel."""

    def __init__(self, parties: Sequence[str], record: bool = False, intercept: Intercept | None = None) -> None:
        if len(set(parties)) != len(parties) or len(parties) < 2:
            raise ValueError(f"a session needs at least two distinct party names, got {list(parties)}")
        self.parties = list(parties)
        self.record = record
        self.intercept = intercept
        self.messages: list[Message] = []
        self._queues: dict[tuple[str, str, str], queue.Queue] = {}
        self._closed: dict[str, str] = {}
        self._lock = threading.Lock()

    def channel(self, party: str) -> "LocalChannel":
        if party not in self.parties:
            raise ValueError(f"party {party!r} is not one of {self.parties}")
        return LocalChannel(self, party)

    def _queue(self, sender: str, receiver: str, tag: str) -> queue.Queue:
        with self._lock:
            return self._queues.setdefault((sender, receiver, tag), queue.Queue())

    def _deliver(self, message: Message) -> None:
        payload = self.intercept(message) if self.intercept else message.payload
        delivered = Message(message.sender, message.receiver, message.tag, bytes(payload))
        if self.record:
            with self._lock:
                self.messages.append(delivered)
        self._queue(message.sender, message.receiver, message.tag).put(delivered.payload)


class LocalChannel:
    """One party's endpoint on a :class:`LocalHub` (implements ``worker.party_channel.PartyChannel``)."""

    _POLL_S = 0.05

    def __init__(self, hub: LocalHub, party: str) -> None:
        self._hub = hub
        self._party = party

    @property
    def party(self) -> str:
        return self._party

    def peers(self) -> list[str]:
        return [p for p in self._hub.parties if p != self._party]

    def _check_peer(self, peer: str) -> None:
        if peer == self._party or peer not in self._hub.parties:
            raise PartyError(f"party {self._party!r} has no peer {peer!r}; peers are {self.peers()}")

    def send(self, peer: str, tag: str, payload: bytes) -> None:
        self._check_peer(peer)
        for name in (self._party, peer):
            if name in self._hub._closed:
                raise PartyError(f"cannot send {tag!r} to {peer!r}: party {name!r} closed "
                                 f"({self._hub._closed[name]})")
        self._hub._deliver(Message(self._party, peer, tag, bytes(payload)))

    def recv(self, peer: str, tag: str, timeout_s: float = 60.0) -> bytes:
        self._check_peer(peer)
        q = self._hub._queue(peer, self._party, tag)
        waited = 0.0
        while True:
            try:
                return q.get(timeout=min(self._POLL_S, max(timeout_s - waited, 0.0)))
            except queue.Empty:
                waited += self._POLL_S
            if peer in self._hub._closed:
                raise PartyError(f"party {peer!r} closed ({self._hub._closed[peer]}) while {self._party!r} waited "
                                 f"for {tag!r}")
            if waited >= timeout_s:
                raise PartyTimeout(f"party {self._party!r} waited {timeout_s:.1f} s for {tag!r} from {peer!r}")

    def close(self, reason: str = "closed") -> None:
        self._hub._closed.setdefault(self._party, reason)
