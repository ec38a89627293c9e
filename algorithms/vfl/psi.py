"""Private set intersection of sample ids: two-party ECDH-PSI over ristretto255, a prime-order group.

Why this group and library: ECDH-PSI needs a hash onto a prime-order group (x ↦ H(x)^a must be a permutation of the
group that commutes between parties). Ristretto255 is prime-order by construction and libsodium's
``crypto_core_ristretto255_from_hash`` is a proper hash-to-group (two Elligator maps of a 64-byte hash, added).
PyNaCl's libsodium does not export the ristretto255 symbols, so we use ``rbcl`` (MIT; the libsodium build that the
``oblivious`` package ships, with Python wrappers). X25519 (``cryptography``) has no hash-to-curve; P-256 would
need a hand-written one.

Protocol (semi-honest; A and B each hold a list of distinct ids; any channel carries the byte lists)::

    a = PsiParty()                              b = PsiParty()
    m1_a = a.blind(ids_a)  ───────────────►     (H(id)^α for each id, shuffled; a.order remembers how)
                           ◄───────────────     m1_b = b.blind(ids_b)
    m2_a = a.reblind(m1_b) ───────────────►     (H(id_b)^βα, in the order of m1_b)
                           ◄───────────────     m2_b = b.reblind(m1_a)
    rows_a = intersect(a.order, m2_b, m2_a)     rows_b = intersect(b.order, m2_a, m2_b)

``rows_a`` indexes ``ids_a``; ``ids_a[rows_a][k] == ids_b[rows_b][k]`` for every k: both parties order the
intersection by its doubly-blinded value, which they share, so their rows align without either revealing ids.
Each party learns the intersection and the size of the other's list, nothing else (DDH in ristretto255, H a
random oracle): the messages are group elements, ids outside the intersection never appear in clear, and the
shuffle in ``blind`` keeps the position of a match from saying anything about the peer's other ids.
Use :func:`intersection_size` to refuse an empty or too-small intersection before training.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from typing import Sequence

import numpy as np
import rbcl

from .paillier import HEPool

__all__ = ["DOMAIN", "POINT_BYTES", "PsiParty", "hash_to_group", "intersect", "intersection_size",
           "pack_points", "unpack_points"]

DOMAIN = b"seraphim/vfl/psi/ristretto255-sha512/v1\x00"  #: domain separation of the id hash
POINT_BYTES = 32


def _remove_rbcl_library_copy() -> None:
    """rbcl writes its bundled libsodium to a new temporary file at every import and never deletes it; once loaded
    the library is mapped, so the file can go (otherwise each process importing this module leaves 2.7 MB in /tmp)."""
    path = getattr(sys.modules.get("rbcl._sodium"), "lib_path", None)
    if path and os.path.exists(path):
        os.unlink(path)


_remove_rbcl_library_copy()


def _id_bytes(x) -> bytes:
    """Ids compare by their text: ints (Python or numpy) as decimal, str as UTF-8, bytes as they are."""
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x)).encode("ascii")
    raise TypeError(f"ids must be str, bytes or integers, got {type(x).__name__} {x!r}")


def hash_to_group(ids: Sequence) -> list[bytes]:
    """H(id) = ristretto255_from_hash(SHA-512(DOMAIN ‖ id)) for each id."""
    return [rbcl.crypto_core_ristretto255_from_hash(hashlib.sha512(DOMAIN + _id_bytes(x)).digest()) for x in ids]


def _blind_task(task: tuple[bytes, list]) -> list[bytes]:
    secret, ids = task
    return [rbcl.crypto_scalarmult_ristretto255(secret, point) for point in hash_to_group(ids)]


def _reblind_task(task: tuple[bytes, int, list[bytes]]) -> list[bytes]:
    secret, offset, points = task
    out = []
    for i, point in enumerate(points):
        if not isinstance(point, bytes) or len(point) != POINT_BYTES:
            raise ValueError(f"point {offset + i} is not {POINT_BYTES} bytes: {point!r:.80}")
        try:
            out.append(rbcl.crypto_scalarmult_ristretto255(secret, point))
        except RuntimeError:
            raise ValueError(f"point {offset + i} is not a valid ristretto255 encoding (or is the identity)") from None
    return out


def _chunks(items: list, pool: HEPool | None) -> list[tuple[int, list]]:
    parts = 1 if pool is None else pool.processes * 4
    step = max(1, -(-len(items) // parts))
    return [(i, items[i:i + step]) for i in range(0, len(items), step)]


def _gather(fn, tasks: list, pool: HEPool | None) -> list[bytes]:
    parts = [fn(t) for t in tasks] if pool is None or len(tasks) <= 1 else pool.map(fn, tasks)
    return [point for part in parts for point in part]


class PsiParty:
    """One side of the ECDH-PSI: a secret scalar α, the blinding H(id)^α and the re-blinding P^α."""

    def __init__(self, secret: bytes | None = None) -> None:
        if secret is None:
            secret = rbcl.crypto_core_ristretto255_scalar_random()
        elif (not isinstance(secret, bytes) or len(secret) != POINT_BYTES
              or rbcl.crypto_core_ristretto255_scalar_reduce(secret + bytes(32)) != secret or not any(secret)):
            raise ValueError("secret must be a non-zero, reduced 32-byte ristretto255 scalar")
        self._secret = secret
        self.order: np.ndarray | None = None  #: after blind: message position k carries ids[order[k]]

    def blind(self, ids: Sequence, pool: HEPool | None = None) -> list[bytes]:
        """Round 1: H(id)^α for every id, in a random order (kept in ``self.order``). Ids must be distinct."""
        ids = list(ids)
        keys = [_id_bytes(x) for x in ids]
        if len(set(keys)) != len(keys):
            seen: set[bytes] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))
            raise ValueError(f"ids must be distinct; {dup!r} appears more than once")
        order = list(range(len(ids)))
        random.SystemRandom().shuffle(order)
        self.order = np.array(order, dtype=np.int64)
        shuffled = [keys[i] for i in order]
        return _gather(_blind_task, [(self._secret, chunk) for _, chunk in _chunks(shuffled, pool)], pool)

    def reblind(self, points: Sequence[bytes], pool: HEPool | None = None) -> list[bytes]:
        """Round 2: P^α for each of the peer's points, in the order received (the peer maps them back)."""
        points = list(points)
        return _gather(_reblind_task, [(self._secret, off, chunk) for off, chunk in _chunks(points, pool)], pool)


def intersect(order: np.ndarray, own_double: Sequence[bytes], peer_double: Sequence[bytes]) -> np.ndarray:
    """Indices into this party's ids of the common ids, ordered by doubly-blinded value (the same at both parties).

    order: ``party.order`` after ``blind``; own_double: the peer's ``reblind`` of this party's round-1 message;
    peer_double: this party's ``reblind`` of the peer's round-1 message.
    """
    order = np.asarray(order, dtype=np.int64)
    if len(order) != len(own_double):
        raise ValueError(f"own_double has {len(own_double)} points for {len(order)} blinded ids: the peer must "
                         "reblind this party's whole round-1 message, in order")
    peer = set(peer_double)
    hits = sorted((point, k) for k, point in enumerate(own_double) if point in peer)
    return order[np.array([k for _, k in hits], dtype=np.int64)]


def intersection_size(own_double: Sequence[bytes], peer_double: Sequence[bytes]) -> int:
    """How many ids the two parties share."""
    return len(set(own_double) & set(peer_double))


def pack_points(points: Sequence[bytes]) -> bytes:
    """Points as one byte string (32 bytes each) for a channel message."""
    if any(len(p) != POINT_BYTES for p in points):
        raise ValueError(f"every point must be {POINT_BYTES} bytes")
    return b"".join(points)


def unpack_points(payload: bytes) -> list[bytes]:
    """Inverse of :func:`pack_points`; the points themselves are validated by :meth:`PsiParty.reblind`."""
    if len(payload) % POINT_BYTES:
        raise ValueError(f"a point list is a multiple of {POINT_BYTES} bytes, got {len(payload)}")
    return [bytes(payload[i:i + POINT_BYTES]) for i in range(0, len(payload), POINT_BYTES)]
