"""How federated parties talk: named peers, tagged byte messages, and the errors a protocol must handle.

The BlindFL protocol (``seraphim.algorithms.vfl``) is written against this interface only; the gRPC ``Exchange``
transport (``seraphim.worker.exchange``) and the in-process one used by protocol unit tests implement it.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from seraphim.proto.errors import FatalJobError


class PartyError(RuntimeError):
    """A federated session cannot go on: a party is missing, late, gone, or sent something invalid."""


class PartyTimeout(PartyError):
    """A peer did not send the expected message in time (missing, late or gone)."""


class PartyMessageRejected(FatalJobError, PartyError):
    """A message failed its integrity checks: replayed, reordered, truncated, tampered or unauthenticated (a wrong
    token, certificate or key); fatal to the job because a restarted party would be refused the same way."""


class PartyChannel(Protocol):
    """This party's endpoint: ``send`` delivers ``payload`` to ``peer`` under ``tag``; ``recv`` waits for it.

    Messages between two parties with the same tag arrive in order, exactly once; ``recv`` raises
    ``PartyTimeout`` after ``timeout_s`` and ``PartyMessageRejected`` for a message that fails its checks.
    """

    @property
    def party(self) -> str:
        """This party's name."""

    def peers(self) -> list[str]:
        """The other parties of the session."""

    def send(self, peer: str, tag: str, payload: bytes) -> None:
        """Deliver ``payload`` to ``peer`` under ``tag``; raises PartyError when the peer cannot be reached."""

    def recv(self, peer: str, tag: str, timeout_s: float = 60.0) -> bytes:
        """The next message from ``peer`` under ``tag``."""

    def close(self) -> None:
        """Stop serving and release the connection."""


def send_json(chan: PartyChannel, peer: str, tag: str, value: Any) -> None:
    """Send a JSON-serialisable value (plans, schemas, small control messages)."""
    chan.send(peer, tag, json.dumps(value).encode())


def recv_json(chan: PartyChannel, peer: str, tag: str, timeout_s: float) -> Any:
    """The next JSON message from ``peer`` under ``tag``; PartyError naming the peer and tag when it is not JSON."""
    try:
        return json.loads(chan.recv(peer, tag, timeout_s))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PartyError(f"party {peer!r} sent a malformed {tag!r} message: {exc}") from None
