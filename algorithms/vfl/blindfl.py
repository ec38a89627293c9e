"""BlindFL's federated source layers (Fu et al., SIGMOD'22): the first layer of a vertical model, computed across a
label party B and feature parties A_1..A_k so that nobody sees another party's features, weights or gradients.

Every party runs its own layer object against its ``PartyChannel`` (in-process ``LocalHub`` or gRPC); the objects
exchange tagged messages ``blindfl/<layer>/<what>`` in lockstep.

Public API (each party calls the same methods in the same order)::

    keys = PartyKeys(private_key, peer_public_keys, pool_processes=0, he_processes=0)
    layer = MatMulSourceLayer(name, channel, keys, label_party, in_dims={party: D_p}, out_dim=H,
                              precision=Precision(), init_std=0.01, store=MemoryShareStore)
    layer = EmbedSourceLayer(name, channel, keys, label_party, in_dims={party: vocab_p}, out_dim=E,
                             fields={party: F_p}, ...)
    z = layer.forward(x)          # x: this party's rows (dense float [B, D_p] or CSR; Embed: int codes [B, F_p]
                                  # into its vocabulary); label party gets Z float64, feature parties None
    layer.backward(dz, lr)        # label party: dL/dZ [B, width] and the SGD step; feature parties: backward()
    layer.state() / layer.load_state(d)    # dict of arrays/bytes: resume after a completed step
    reveal_weight(layer, peer_private_key) # tests / an agreed model release only: W = U + V in the clear

The protocol (two-party core, per feature party A and the label party B; [[.]]_P is Paillier under P's key):

- **Weights are shared.** A's weights W_A = U_A + V_A: A holds U_A in plaintext and [[V_A]]_B (drawn and encrypted by
  B once). B's own weights W_B = U_B + V_B: B holds U_B and [[V_B]]_P where P ("partner", one feature party) drew
  V_B. Nobody ever holds V in the clear after the setup, so nobody knows W.
- **Forward.** A computes [[X_A V_A]]_B (only non-zeros of X_A cost), subtracts a statistically hiding mask ε_A
  (``paillier.random_mask``: value bits + 40), packs several rows into one ciphertext, re-randomises and sends it;
  B decrypts the share X_A V_A − ε_A. Symmetrically B sends [[X_B V_B − ε_B]]_P to P. A sends T_A = X_A U_A + ε_A
  (+ P's decrypted share of B's product, + zero-sum masks among the feature parties) and B sums
  Z = Σ_A (T_A + share_A) + X_B U_B + ε_B = Σ_A X_A W_A + X_B W_B. With several feature parties, pairwise masks
  from seeds the feature parties agree on (Paillier-encrypted to each other) cancel in the sum, so B learns Z and
  not each party's part; V_B hides B's own part from B.
- **Backward.** B (top model in torch) gets dL/dZ and sends [[-lr·dL/dZ]]_B (fresh encryptions, columns packed);
  A updates [[V_A]] += X_A^T [[-lr·dL/dZ]] on the rows its batch touched: A never sees a gradient, B never sees
  which rows moved or any weight gradient of A. B updates U_B -= lr·X_B^T dL/dZ in plaintext (V_B stays hidden).
- **Fixed point, no growth.** Features at 2^-feature_bits, the gradient at 2^-grad_bits, so V lives at scale
  feature+grad bits and every update lands at that same scale: scales never grow over steps (no truncation
  needed); Z arrives at 2·feature+grad bits and is decoded. Encrypted values carry no exponent.
- **Embed** (categorical fields): the same with one-hot inputs: the encrypted product is a gather of [[V]] rows
  and the update a scatter-add (feature bits 0); outputs are per field, [B, F·E] per party, concatenated.
- **Packing.** A slot holds a masked value (``Scales.slot_bits``); a ciphertext holds ``hc`` output columns of a
  row, and before a share is sent ``rp`` rows are folded into one ciphertext (Horner: hc·slot squarings per value),
  so re-randomisation (a full r^n under the peer's key) and decryption are paid per packed ciphertext. The
  gradient [[-lr·dL/dZ]] is packed by columns only (its rows are multiplied by different features).
- **Checks.** Every received ciphertext is parsed against the expected key and shape; decrypted shares must lie
  in the range the masks allow (a tampered or forged ciphertext decrypts to an out-of-range value with
  overwhelming probability), else ``PartyMessageRejected`` and nothing derived from it is sent. Semi-honest
  security, as BlindFL: a party that forges an in-range share corrupts Z undetected (it learns nothing from it).
- **What the label party learns**: Z (for Embed: each party's field embeddings, which Z concatenates), the widths
  of every party's inputs and the batch size, nothing else; feature parties learn nothing (ciphertexts under the
  label party's key and statistically masked shares).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import gmpy2
import numpy as np
import scipy.sparse as sp

from seraphim.algorithms.vfl import paillier as he
from seraphim.worker.party_channel import PartyChannel, PartyMessageRejected

__all__ = ["Precision", "Scales", "PartyKeys", "ShareStore", "MemoryShareStore", "PSShareStore", "ps_store",
           "SourceLayer", "MatMulSourceLayer", "EmbedSourceLayer", "reveal_weight", "ints_to_bytes",
           "ints_from_bytes"]

_INT_MAGIC = b"SINT"
_INT_HEADER = struct.Struct(">4sBI")  # magic, ndim, bytes per value; then ndim u64 dims
_SEED_BYTES = 32
_T_SLACK_BITS = 16  #: the plaintext share T adds masks of several parties: allow this many bits above one mask


# --------------------------------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """Fixed-point settings of the source layers.

    Features at 2^-16 (the multipliers of every ciphertext product: their bits set its cost), gradients at 2^-32
    (-lr·dL/dZ is small: this keeps ~6 significant digits of it). ``value_bits`` bounds every real value the protocol
    hides (|z|, |w| < 2^value_bits): the masks are sized for it (plus 40 statistical bits) and so is a packed slot;
    a larger value is refused by the receiver's range check (raise ``value_bits`` for unscaled data). With these
    defaults a slot is 122 bits and a 2048-bit ciphertext carries 16 of them.
    """

    feature_bits: int = 16
    grad_bits: int = 32
    value_bits: int = 16

    def __post_init__(self) -> None:
        for name in ("feature_bits", "grad_bits", "value_bits"):
            if not 0 <= getattr(self, name) <= 256:
                raise ValueError(f"Precision.{name} must be in [0, 256], got {getattr(self, name)}")

    def scales(self, feature_bits: int | None = None) -> "Scales":
        return Scales(self.feature_bits if feature_bits is None else feature_bits, self.grad_bits, self.value_bits)


@dataclass(frozen=True)
class Scales:
    """Scales (bits after the binary point) of one layer: features x, gradients g, weights w = x + g, outputs
    z = x + w; ``share_bits`` bounds a hidden output and ``slot_bits`` is one packed slot (value, mask, sign)."""

    x: int
    g: int
    value_bits: int

    @property
    def w(self) -> int:
        return self.x + self.g

    @property
    def z(self) -> int:
        return self.x + self.w

    @property
    def share_bits(self) -> int:
        return self.z + self.value_bits

    @property
    def mask_bits(self) -> int:
        """Bits of a mask that hides a share (``he.random_mask``'s width for ``share_bits``)."""
        return self.share_bits + he.STAT_SECURITY_BITS

    @property
    def slot_bits(self) -> int:
        return self.mask_bits + 2


# ----------------------------------------------------------------------------------------------------- keys


class PartyKeys:
    """This party's private key, its peers' public keys, randomness pools for the keys it encrypts under every step
    and an optional process pool for ciphertext products and decryptions.

    Every pool gets ``pool_processes`` background processes, which run at a lower CPU priority and so fill the
    pools from the cores a step leaves idle (a party waiting for its peer): the own key's pool serves the label
    party's per-step gradient encryptions (B·H values) with the owner's fixed-base ``hs^α`` by CRT (see paillier's
    notes), a peer key's pool the re-randomisation of the packed shares a party sends (uniform ``r^n``, a full
    exponentiation each).
    """

    def __init__(self, private: he.PrivateKey, peers: Mapping[str, he.PublicKey], pool_processes: int = 0,
                 pool_size: int = 16, he_processes: int = 0) -> None:
        self.private = private
        self.public = private.public
        self.peers = dict(peers)
        self.pool_processes, self.pool_size = pool_processes, pool_size
        self._pools: dict[he.PublicKey, he.RandomnessPool] = {}
        self._setup_pool: he.RandomnessPool | None = None  #: own-key randomness for one-off encryptions
        self.he = he.HEPool(he_processes) if he_processes > 0 else None

    def of(self, party: str) -> he.PublicKey:
        try:
            return self.peers[party]
        except KeyError:
            raise ValueError(f"no public key for party {party!r}; known: {sorted(self.peers)}") from None

    def _owner(self, pub: he.PublicKey) -> he.PrivateKey | None:
        return self.private if pub == self.public else None

    def pool(self, pub: he.PublicKey, per_step: int) -> he.RandomnessPool:
        """The pool for a key used every step, holding two steps' worth (``per_step`` values each) at least."""
        if pub not in self._pools:
            own = self._owner(pub)
            self._pools[pub] = he.RandomnessPool(pub, max(self.pool_size, 2 * per_step), self.pool_processes,
                                                 private_key=own)
        return self._pools[pub]

    def drain_pools(self) -> int:
        """Discard the values the pools hold now and return how many: a benchmark then times the rate the
        background sustains, not a pool filled before the timing began."""
        return sum(len(pool.take(pool.available())) for pool in self._pools.values())

    def encrypt_once(self, pub: he.PublicKey, m: np.ndarray) -> he.CipherTensor:
        """A one-off encryption (setup), without background processes; under our own key with the owner's
        fixed-base randomness, whose tables are built once for every such call."""
        own = self._owner(pub)
        if own is None:
            return pub.encrypt(m)
        if self._setup_pool is None:
            self._setup_pool = he.RandomnessPool(pub, 1, processes=0, private_key=own)
        return pub.encrypt(m, self._setup_pool)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._setup_pool is not None:
            self._setup_pool.close()
            self._setup_pool = None
        if self.he is not None:
            self.he.close()


# ------------------------------------------------------------------------------------------- wire formats


def ints_to_bytes(m: np.ndarray, max_bits: int) -> bytes:
    """Signed integers (object array, any shape) as fixed-width big-endian two's complement: the width comes from
    the bound, not the data, so a message's size says nothing about its values."""
    width = max_bits // 8 + 1
    flat = [int(v) for v in np.asarray(m, dtype=object).reshape(-1)]
    limit = 1 << max_bits
    if any(abs(v) >= limit for v in flat):
        raise ValueError(f"an integer share exceeds 2^{max_bits}: the value bound of the layer's Precision is "
                         "too small for this data")
    head = _INT_HEADER.pack(_INT_MAGIC, m.ndim, width) + struct.pack(f">{m.ndim}Q", *m.shape)
    return head + b"".join(v.to_bytes(width, "big", signed=True) for v in flat)


def ints_from_bytes(b: bytes, shape: tuple[int, ...], max_bits: int, what: str) -> np.ndarray:
    """Inverse of :func:`ints_to_bytes`, checked: PartyMessageRejected unless the shape is ``shape`` and every
    value is below 2^max_bits."""
    b = bytes(b)
    try:
        magic, ndim, width = _INT_HEADER.unpack_from(b)
        dims = struct.unpack_from(f">{ndim}Q", b, _INT_HEADER.size)
    except struct.error:
        raise PartyMessageRejected(f"{what}: truncated integer message ({len(b)} bytes)") from None
    start = _INT_HEADER.size + 8 * ndim
    if magic != _INT_MAGIC or tuple(dims) != tuple(shape) or width != max_bits // 8 + 1 \
            or len(b) - start != math.prod(dims) * width:
        raise PartyMessageRejected(f"{what}: expected integers of shape {tuple(shape)} and width "
                                   f"{max_bits // 8 + 1}, got magic {magic!r} shape {tuple(dims)} width {width} "
                                   f"and {len(b) - start} payload bytes")
    vals = [int.from_bytes(b[start + i * width:start + (i + 1) * width], "big", signed=True)
            for i in range(math.prod(dims))]
    limit = 1 << max_bits
    if any(abs(v) >= limit for v in vals):
        raise PartyMessageRejected(f"{what}: a value exceeds the bound 2^{max_bits}")
    return np.array(vals, dtype=object).reshape(shape)


def _recv_cipher(chan: PartyChannel, peer: str, tag: str, pub: he.PublicKey, shape: tuple[int, ...],
                 timeout_s: float) -> he.CipherTensor:
    raw = chan.recv(peer, tag, timeout_s)
    try:
        ct = he.CipherTensor.from_bytes(raw, pub)
    except ValueError as exc:
        raise PartyMessageRejected(f"{tag} from {peer!r}: {exc}") from None
    if ct.shape != tuple(shape):
        raise PartyMessageRejected(f"{tag} from {peer!r}: ciphertexts of shape {ct.shape}, expected {tuple(shape)}")
    return ct


# ------------------------------------------------------------------------------------------------ packing


class _Packing:
    """Slot packing under one key: ``hc`` output columns per ciphertext, ``c`` ciphertexts per row, and ``rp``
    rows folded into one ciphertext before a share is sent (so re-randomisation and decryption cost per packed
    ciphertext, not per value)."""

    def __init__(self, pub: he.PublicKey, h: int, slot_bits: int) -> None:
        slots = he.slots_per_ciphertext(pub, slot_bits)
        if slots < 1:
            raise ValueError(f"a {pub.bits}-bit key cannot hold one {slot_bits}-bit slot: use a larger key or lower "
                             "Precision bits")
        self.pub, self.h, self.slot = pub, h, slot_bits
        self.c = -(-h // slots)  # fewest ciphertexts per row (products cost per ciphertext) ...
        self.hc = -(-h // self.c)  # ... filled evenly, so that as many rows as possible share one when sent
        self.rp = max(1, slots // self.hc)

    def cols(self, m: np.ndarray) -> np.ndarray:
        """[n, h] ints → [n, c] packed plaintexts."""
        n = m.shape[0]
        padded = np.zeros((n, self.c * self.hc), dtype=object)
        padded[:, :self.h] = m
        return he.pack_slots(padded.reshape(n, self.c, self.hc), self.slot)

    def uncols(self, m: np.ndarray) -> np.ndarray:
        n = m.shape[0]
        return he.unpack_slots(m, self.hc, self.slot).reshape(n, self.c * self.hc)[:, :self.h]

    def packed_rows(self, n: int) -> int:
        return -(-n // self.rp)

    def rows_plain(self, m: np.ndarray) -> np.ndarray:
        """[n, c] packed plaintexts → [ceil(n/rp), c]: row r of a group shifted by r·hc slots."""
        n = m.shape[0]
        padded = np.zeros((self.packed_rows(n) * self.rp, self.c), dtype=object)
        padded[:n] = m
        return he.pack_slots(np.moveaxis(padded.reshape(-1, self.rp, self.c), 1, -1), self.hc * self.slot)

    def rows_cipher(self, ct: he.CipherTensor) -> he.CipherTensor:
        """The same fold on ciphertexts (Horner: one shift costs hc·slot squarings per value)."""
        n = ct.shape[0]
        if self.rp == 1:
            return ct
        nsq = self.pub.nsquare
        padded = np.full((self.packed_rows(n) * self.rp, self.c), gmpy2.mpz(1), dtype=object)
        padded[:n] = ct.values
        grouped = padded.reshape(-1, self.rp, self.c)
        acc = grouped[:, self.rp - 1].reshape(-1)
        shift = 1 << (self.hc * self.slot)
        for r in range(self.rp - 2, -1, -1):
            acc = np.array(gmpy2.powmod_base_list(list(acc), shift, nsq), dtype=object) \
                * grouped[:, r].reshape(-1) % nsq
        return he.CipherTensor(acc.reshape(-1, self.c), self.pub)

    def unrows(self, m: np.ndarray, n: int) -> np.ndarray:
        """Decrypted [ceil(n/rp), c] → [n, h]."""
        slots = he.unpack_slots(m, self.rp * self.hc, self.slot)  # [np, c, rp*hc]
        slots = slots.reshape(m.shape[0], self.c, self.rp, self.hc).transpose(0, 2, 1, 3)
        return slots.reshape(m.shape[0] * self.rp, self.c * self.hc)[:n, :self.h]


# ---------------------------------------------------------------------------------------------- share stores


class ShareStore(Protocol):
    """Where a party keeps the encrypted share [[V]] of its weights: ``rows`` × ``cols`` packed ciphertexts under
    the peer's key. Rows are addressed by int64 indices (None: all rows, in order)."""

    public: he.PublicKey
    rows: int
    cols: int

    def get(self, idx: np.ndarray | None) -> he.CipherTensor:
        """[[V]] rows ``idx`` (repeats allowed)."""

    def put(self, idx: np.ndarray | None, ct: he.CipherTensor) -> None:
        """Overwrite rows ``idx`` (distinct)."""

    def add(self, idx: np.ndarray | None, delta: he.CipherTensor) -> None:
        """[[V[idx]]] ← [[V[idx] + delta]] (homomorphic; ``idx`` distinct)."""

    def dump(self) -> bytes:
        """Every row, for a checkpoint."""

    def load(self, b: bytes) -> None:
        """Inverse of :meth:`dump`."""


StoreFactory = Callable[[str, he.PublicKey, int, int], ShareStore]


class MemoryShareStore:
    """[[V]] as a numpy object array in this process (the default)."""

    def __init__(self, name: str, public: he.PublicKey, rows: int, cols: int) -> None:
        self.name, self.public, self.rows, self.cols = name, public, rows, cols
        self._values = np.full((rows, cols), gmpy2.mpz(0), dtype=object)  # 0 is no ciphertext: put() first

    def get(self, idx: np.ndarray | None) -> he.CipherTensor:
        return he.CipherTensor(self._values if idx is None else self._values[idx], self.public)

    def put(self, idx: np.ndarray | None, ct: he.CipherTensor) -> None:
        self._values[slice(None) if idx is None else idx] = ct.values

    def add(self, idx: np.ndarray | None, delta: he.CipherTensor) -> None:
        sel = slice(None) if idx is None else idx
        self._values[sel] = self._values[sel] * delta.values % self.public.nsquare

    def dump(self) -> bytes:
        return he.CipherTensor(self._values, self.public).to_bytes()

    def load(self, b: bytes) -> None:
        ct = he.CipherTensor.from_bytes(b, self.public)
        if ct.shape != (self.rows, self.cols):
            raise ValueError(f"store {self.name!r}: checkpoint holds shape {ct.shape}, expected "
                             f"{(self.rows, self.cols)}")
        self._values = ct.values.copy()


class PSShareStore:
    """[[V]] in a dense ``bytes`` table of this party's PS: a row is ``cols`` ciphertexts of ``public.width``
    bytes. Pulls and pushes move only the rows a batch touches; for tables larger than a party's memory."""

    def __init__(self, client, name: str, public: he.PublicKey, rows: int, cols: int) -> None:
        self.name, self.public, self.rows, self.cols = name, public, rows, cols
        self.width = public.width
        self.table = client.dense_table(f"blindfl.{name}", shape=(rows, cols * self.width), dtype="bytes")

    def _keys(self, idx: np.ndarray | None) -> np.ndarray:
        return np.arange(self.rows, dtype=np.int64) if idx is None else np.asarray(idx, dtype=np.int64)

    def get(self, idx: np.ndarray | None) -> he.CipherTensor:
        keys = self._keys(idx)
        uniq, inverse = np.unique(keys, return_inverse=True)
        raw = self.table.pull(uniq)
        w = self.width
        vals = np.array([gmpy2.mpz.from_bytes(bytes(row[j * w:(j + 1) * w]), "big")
                         for row in raw for j in range(self.cols)], dtype=object).reshape(len(uniq), self.cols)
        if vals.size and (vals == 0).any():
            raise ValueError(f"store {self.name!r}: rows of table blindfl.{self.name} were never written (the "
                             "layer's setup did not run or the PS lost them)")
        return he.CipherTensor(vals[inverse.reshape(-1)], self.public)

    def put(self, idx: np.ndarray | None, ct: he.CipherTensor) -> None:
        w = self.width
        raw = np.frombuffer(b"".join(v.to_bytes(w, "big") for v in ct.values.reshape(-1)), dtype=np.uint8)
        self.table.push(self._keys(idx), raw.reshape(ct.shape[0], self.cols * w), mode="assign")

    def add(self, idx: np.ndarray | None, delta: he.CipherTensor) -> None:
        current = self.get(idx)
        self.put(idx, current + delta)

    def dump(self) -> bytes:
        return self.get(None).to_bytes()

    def load(self, b: bytes) -> None:
        ct = he.CipherTensor.from_bytes(b, self.public)
        if ct.shape != (self.rows, self.cols):
            raise ValueError(f"store {self.name!r}: checkpoint holds shape {ct.shape}, expected "
                             f"{(self.rows, self.cols)}")
        self.put(None, ct)


def ps_store(client) -> StoreFactory:
    """A StoreFactory that keeps every layer's [[V]] in ``client``'s PS (this party's shards)."""
    return lambda name, public, rows, cols: PSShareStore(client, name, public, rows, cols)


# --------------------------------------------------------------------------------------------------- helpers


def _prg_ints(seed: bytes, label: str, shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Integers uniform in [0, 2^bits) from SHAKE-256(seed, label): the pairwise zero-sum masks."""
    return he.uniform_ints(hashlib.shake_256(seed + label.encode()).digest, shape, bits)


def _random_normal(shape: tuple[int, ...], std: float) -> np.ndarray:
    """Weight shares from the OS's entropy (a share must be unpredictable to the other party)."""
    return np.random.default_rng(secrets.randbits(128)).normal(0.0, std, size=shape)


def _quantize(x, bits: int) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray | sp.csr_matrix]:
    """(round(x·2^bits) as int64, the same values as float64) for a dense array or CSR matrix."""
    scale = float(1 << bits)
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        data = np.rint(np.asarray(x.data, dtype=np.float64) * scale)
        if data.size and np.abs(data).max() >= 2.0 ** 62:
            raise ValueError(f"a feature of magnitude {np.abs(x.data).max():.3g} does not fit 62 bits at "
                             f"2^-{bits}: scale the features or lower feature_bits")
        xi = sp.csr_matrix((data.astype(np.int64), x.indices, x.indptr), shape=x.shape)
        return xi, sp.csr_matrix((data / scale, x.indices, x.indptr), shape=x.shape)
    x = np.asarray(x, dtype=np.float64)
    q = np.rint(x * scale)
    if q.size and np.abs(q).max() >= 2.0 ** 62:
        raise ValueError(f"a feature of magnitude {np.abs(x).max():.3g} does not fit 62 bits at 2^-{bits}: scale "
                         "the features or lower feature_bits")
    return q.astype(np.int64), q / scale


def _compact_columns(x: sp.csr_matrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """(the columns with non-zeros, x restricted and renumbered to them)."""
    x = sp.csr_matrix(x)
    x.sum_duplicates()
    used, local = np.unique(x.indices, return_inverse=True)
    return used, sp.csr_matrix((x.data, local.astype(np.int64), x.indptr), shape=(x.shape[0], len(used)))


# ------------------------------------------------------------------------------------------------- the layer


class SourceLayer(ABC):
    """One party's end of a federated source layer; subclasses say what the input is (MatMul, Embed).

    ``in_dims`` maps every party to its input width (0: the party has no input for this layer); every party
    passes the same ``in_dims``, ``out_dim`` and ``precision``.
    """

    sums = True  #: outputs of the parties add up (MatMul) or are concatenated (Embed)

    def __init__(self, name: str, channel: PartyChannel, keys: PartyKeys, label_party: str,
                 in_dims: Mapping[str, int], out_dim: int, precision: Precision = Precision(),
                 init_std: float = 0.01, store: StoreFactory = MemoryShareStore, timeout_s: float = 600.0) -> None:
        if "/" in name or not name:
            raise ValueError(f"layer name {name!r} must be non-empty without '/'")
        parties = {channel.party, *channel.peers()}
        if set(in_dims) != parties or label_party not in parties:
            raise ValueError(f"layer {name!r}: in_dims must name exactly the session's parties {sorted(parties)} "
                             f"(label party {label_party!r}), got {sorted(in_dims)}")
        if out_dim < 1 or any(d < 0 for d in in_dims.values()):
            raise ValueError(f"layer {name!r}: out_dim must be >= 1 and input widths >= 0, got {out_dim}, "
                             f"{dict(in_dims)}")
        self.name, self.chan, self.keys = name, channel, keys
        self.me, self.label = channel.party, label_party
        self.is_label = self.me == label_party
        self.in_dims = dict(in_dims)
        self.h, self.precision, self.init_std = out_dim, precision, init_std
        self.scales = precision.scales(self._feature_bits())
        self.timeout_s = timeout_s
        self.features = sorted(p for p in parties if p != label_party)
        if not self.features:
            raise ValueError(f"layer {name!r} needs at least one feature party")
        self.active = [p for p in self.features if in_dims[p] > 0]
        self.partner = (self.active or self.features)[0]  #: holds the key of the label party's [[V]]
        self.label_has_input = in_dims[label_party] > 0
        self.counter = 0  #: forwards done (names the zero-sum masks)
        self.seeds: dict[str, bytes] = {}
        self.ready = False
        self.U: np.ndarray | None = None
        self.store: ShareStore | None = None
        self._last = None
        d = in_dims[self.me]
        if d > 0:
            peer_key = self.keys.of(self.partner if self.is_label else label_party)
            self.packing = _Packing(peer_key, self.h, self.scales.slot_bits)
            self.store = store(f"{name}.{self.me}", peer_key, d, self.packing.c)
        self.own_packing = _Packing(self.keys.public, self.h, self.scales.slot_bits)  #: shares others send us
        self._tag = f"blindfl/{name}/"

    # -- what subclasses define ----------------------------------------------------------------------------
    def _feature_bits(self) -> int:
        return self.precision.feature_bits

    def _out_rows(self, party: str, batch: int) -> int:
        """Rows of party's product for a batch (MatMul: batch; Embed: batch × fields)."""
        return batch

    @abstractmethod
    def _prepare(self, x):
        """(integer input for ciphertext products, float input for plaintext products, batch size)."""

    @abstractmethod
    def _cipher_product(self, xi) -> he.CipherTensor:
        """[[x·V]]: the integer input times our share held encrypted under the partner's key."""

    @abstractmethod
    def _plain_product(self, xq) -> np.ndarray:
        """x·U: the input times our plaintext share."""

    @abstractmethod
    def _cipher_grad(self, xi, g: he.CipherTensor) -> tuple[np.ndarray | None, he.CipherTensor]:
        """(rows of the encrypted share it touches, or None for all; [[x^T·g]]) from an encrypted gradient."""

    @abstractmethod
    def _plain_grad(self, xq, g: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(rows of U it touches, or None for all; x^T·g) from a plaintext gradient."""

    # -- setup -------------------------------------------------------------------------------------------------
    def _encrypt_share(self, rows: int, pub: he.PublicKey) -> he.CipherTensor:
        """A fresh random share V [rows, h] for a peer, encrypted under our key (we never keep V)."""
        v = he.FixedPoint(self.scales.w).encode(_random_normal((rows, self.h), self.init_std / math.sqrt(2)))
        return self.keys.encrypt_once(pub, _Packing(pub, self.h, self.scales.slot_bits).cols(v))

    def setup(self) -> None:
        """Draw the plaintext shares and exchange the encrypted ones (and the zero-sum seeds). Sends first."""
        tag = self._tag
        own = self.keys.public
        if self.in_dims[self.me] > 0:
            self.U = _random_normal((self.in_dims[self.me], self.h), self.init_std / math.sqrt(2))
        if self.is_label:
            for p in self.active:
                self.chan.send(p, tag + "init", self._encrypt_share(self.in_dims[p], own).to_bytes())
            if self.label_has_input:
                self.store.put(None, _recv_cipher(self.chan, self.partner, tag + "init", self.store.public,
                                                  (self.in_dims[self.me], self.packing.c), self.timeout_s))
        else:
            if self.me == self.partner and self.label_has_input:
                self.chan.send(self.label, tag + "init",
                               self._encrypt_share(self.in_dims[self.label], own).to_bytes())
            if self.sums and self.me in self.active:
                self._exchange_seeds()
            if self.in_dims[self.me] > 0:
                self.store.put(None, _recv_cipher(self.chan, self.label, tag + "init", self.store.public,
                                                  (self.in_dims[self.me], self.packing.c), self.timeout_s))
        self.ready = True

    def _exchange_seeds(self) -> None:
        """Pairwise secret seeds between the active feature parties (the lower name draws it, encrypted to the
        other), so that their masks cancel in the sum and the label party learns only the total."""
        for p in self.active:
            if p > self.me:
                seed = secrets.token_bytes(_SEED_BYTES)
                self.seeds[p] = seed
                pub = self.keys.of(p)
                ct = self.keys.encrypt_once(pub, np.array([int.from_bytes(seed, "big")], dtype=object))
                self.chan.send(p, self._tag + "seed", ct.to_bytes())
        for p in self.active:
            if p < self.me:
                ct = _recv_cipher(self.chan, p, self._tag + "seed", self.keys.public, (1,), self.timeout_s)
                value = int(self.keys.private.decrypt(ct)[0])
                if not 0 <= value < 1 << (8 * _SEED_BYTES):
                    raise PartyMessageRejected(f"{self._tag}seed from {p!r} is not a {_SEED_BYTES}-byte seed")
                self.seeds[p] = value.to_bytes(_SEED_BYTES, "big")

    # -- forward -------------------------------------------------------------------------------------------------
    def _send_masked_share(self, peer: str, xi, xq) -> np.ndarray:
        """Send ``peer`` [[x·V − ε]] (packed, re-randomised) and return our plaintext share ``x·U + ε`` (encoded)."""
        pk = self.packing
        ct = self._cipher_product(xi)
        eps = he.random_mask((ct.shape[0], self.h), self.scales.share_bits)
        packed = pk.rows_cipher(ct).add_plain(-pk.rows_plain(pk.cols(eps)))
        self.chan.send(peer, self._tag + "share", packed.rerandomize(self.keys.pool(pk.pub, packed.size)).to_bytes())
        return self._encode_z(self._plain_product(xq)) + eps

    def _open_share(self, peer: str, rows: int) -> np.ndarray:
        """Receive and decrypt a peer's masked share of ``rows`` rows (under our key), checked against the range
        its masks allow."""
        pk = self.own_packing
        ct = _recv_cipher(self.chan, peer, self._tag + "share", self.keys.public, (pk.packed_rows(rows), pk.c),
                          self.timeout_s)
        plain = self.keys.private.decrypt(ct, self.keys.he)
        try:
            share = pk.unrows(plain, rows)
        except ValueError as exc:
            raise PartyMessageRejected(f"{self._tag}share from {peer!r} does not decrypt to packed shares ({exc}): "
                                       "tampered, or made under another protocol setting") from None
        hi, lo = 1 << self.scales.share_bits, -(1 << (self.scales.mask_bits + 1))
        if share.size and ((share >= hi) | (share <= lo)).any():
            raise PartyMessageRejected(f"{self._tag}share from {peer!r} holds a value outside the masked range "
                                       f"(-2^{self.scales.mask_bits + 1}, "
                                       f"2^{self.scales.share_bits}): tampered, or a hidden value exceeded "
                                       f"2^{self.precision.value_bits} (raise Precision.value_bits)")
        return share

    def _t_bits(self) -> int:
        return self.scales.mask_bits + _T_SLACK_BITS

    def _zero_sum(self, rows: int) -> np.ndarray:
        label = f"{self.name}/{self.counter}"
        total = np.zeros((rows, self.h), dtype=object)
        for p, seed in self.seeds.items():
            r = _prg_ints(seed, label, (rows, self.h), self.scales.mask_bits)
            total = total + r if p > self.me else total - r
        return total

    def _encode_z(self, values: np.ndarray) -> np.ndarray:
        return he.FixedPoint(self.scales.z).encode(values)

    def forward(self, x, batch: int | None = None):
        """This party's part of the forward pass on its rows ``x``; the label party returns Z (float64
        [B, width]), feature parties None. A party without input for this layer passes ``x=None`` and ``batch``."""
        if not self.ready:
            self.setup()
        xi = xq = None
        if self.in_dims[self.me] > 0:
            if x is None:
                raise ValueError(f"layer {self.name!r}: party {self.me!r} has input width "
                                 f"{self.in_dims[self.me]} but was given no input")
            xi, xq, batch = self._prepare(x)
        if batch is None:
            raise ValueError(f"layer {self.name!r}: pass the batch size when the party has no input")
        self._last = (xi, xq, batch)
        z = self._forward_label(xi, xq, batch) if self.is_label else self._forward_feature(xi, xq, batch)
        self.counter += 1
        return z

    def _forward_feature(self, xi, xq, batch: int) -> None:
        tag = self._tag
        t = None
        if xi is not None:
            t = self._send_masked_share(self.label, xi, xq)
        back = None
        if self.me == self.partner and self.label_has_input:
            back = self._open_share(self.label, self._out_rows(self.label, batch))
        if self.sums:
            if back is not None:
                t = back if t is None else t + back
            if self.seeds:
                t = t + self._zero_sum(batch)
        elif back is not None:
            self.chan.send(self.label, tag + "back", ints_to_bytes(back, self._t_bits()))
        if t is not None:
            self.chan.send(self.label, tag + "t", ints_to_bytes(t, self._t_bits()))

    def _contributors(self) -> list[str]:
        """Feature parties that send a plaintext share T for this layer."""
        extra = [self.partner] if self.sums and self.label_has_input and self.partner not in self.active else []
        return self.active + extra

    def _forward_label(self, xi, xq, batch: int) -> np.ndarray:
        tag = self._tag
        own = None
        if xi is not None:
            own = self._send_masked_share(self.partner, xi, xq)
        shares = {p: self._open_share(p, self._out_rows(p, batch)) for p in self.active}
        ts = {p: ints_from_bytes(self.chan.recv(p, tag + "t", self.timeout_s),
                                 (self._out_rows(p, batch), self.h), self._t_bits(), f"{tag}t from {p!r}")
              for p in self._contributors()}
        if own is not None and not self.sums:
            own = own + ints_from_bytes(self.chan.recv(self.partner, tag + "back", self.timeout_s),
                                        own.shape, self._t_bits(), f"{tag}back from {self.partner!r}")
        if self.sums:
            total = np.zeros((batch, self.h), dtype=object) if own is None else own
            for p, t in ts.items():
                total = total + t + shares[p] if p in shares else total + t
            return he.FixedPoint.decode(total, self.scales.z)
        parts = [] if own is None else [own]
        parts += [ts[p] + shares[p] for p in self.active]
        return np.concatenate([he.FixedPoint.decode(p.reshape(batch, -1), self.scales.z) for p in parts], axis=1)

    # -- backward ------------------------------------------------------------------------------------------------
    def backward(self, grad: np.ndarray | None = None, lr: float = 0.0) -> None:
        """Label party: ``grad`` = dL/dZ of the last forward and the SGD step ``lr``; feature parties: no
        arguments (they apply the encrypted update they receive)."""
        if self._last is None:
            raise RuntimeError(f"layer {self.name!r}: backward without a forward")
        xi, xq, batch = self._last
        self._last = None
        if self.is_label:
            self._backward_label(xi, xq, batch, np.asarray(grad, dtype=np.float64), lr)
        elif xi is not None:
            pk = self.packing
            g = _recv_cipher(self.chan, self.label, self._tag + "grad", pk.pub,
                             (self._out_rows(self.me, batch), pk.c), self.timeout_s)
            idx, delta = self._cipher_grad(xi, g)
            self.store.add(idx, delta)

    def _grad_parts(self, grad: np.ndarray, batch: int) -> dict[str, np.ndarray]:
        """dL/dZ per party, as rows of that party's product."""
        if grad.shape[0] != batch:
            raise ValueError(f"layer {self.name!r}: gradient has {grad.shape[0]} rows for a batch of {batch}")
        if self.sums:
            if grad.shape != (batch, self.h):
                raise ValueError(f"layer {self.name!r}: gradient shape {grad.shape}, expected {(batch, self.h)}")
            return {p: grad for p in [self.me] + self.active}
        parts, start = {}, 0
        for p in ([self.me] if self.label_has_input else []) + self.active:
            rows = self._out_rows(p, batch)
            width = rows // batch * self.h
            parts[p] = grad[:, start:start + width].reshape(rows, self.h)
            start += width
        if start != grad.shape[1]:
            raise ValueError(f"layer {self.name!r}: gradient width {grad.shape[1]}, the outputs are {start} wide")
        return parts

    def _backward_label(self, xi, xq, batch: int, grad: np.ndarray, lr: float) -> None:
        parts = self._grad_parts(grad, batch)
        own_pub = self.keys.public
        pk = self.own_packing
        fp = he.FixedPoint(self.scales.g)
        payload = None
        per_step = pk.c * (batch if self.sums else sum(parts[p].shape[0] for p in self.active))
        for p in self.active:
            if payload is None or not self.sums:  # MatMul: every party gets the same [[-lr·dZ]]
                payload = own_pub.encrypt(pk.cols(fp.encode(-lr * parts[p])),
                                          self.keys.pool(own_pub, per_step)).to_bytes()
            self.chan.send(p, self._tag + "grad", payload)
        if xq is not None:
            idx, step = self._plain_grad(xq, parts[self.me])
            if idx is None:
                self.U -= lr * step
            else:
                self.U[idx] -= lr * step

    # -- state ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray | bytes]:
        """Everything needed to continue after the last completed step (keys excluded: they live in key files)."""
        out: dict[str, np.ndarray | bytes] = {"counter": np.array(self.counter), "ready": np.array(self.ready)}
        if self.U is not None:
            out["U"] = self.U.copy()
        if self.store is not None and self.ready:
            out["V"] = self.store.dump()
        for p, seed in self.seeds.items():
            out[f"seed.{p}"] = seed
        return out

    def load_state(self, state: Mapping[str, np.ndarray | bytes]) -> None:
        self.counter = int(np.asarray(state["counter"]))
        self.ready = bool(np.asarray(state["ready"]))
        if self.in_dims[self.me] > 0 and self.ready:
            self.U = np.array(state["U"], dtype=np.float64)
            if self.U.shape != (self.in_dims[self.me], self.h):
                raise ValueError(f"layer {self.name!r}: saved weights have shape {self.U.shape}, expected "
                                 f"{(self.in_dims[self.me], self.h)}")
            self.store.load(bytes(state["V"]))
        self.seeds = {k[len("seed."):]: bytes(v) for k, v in state.items() if k.startswith("seed.")}
        self._last = None


class MatMulSourceLayer(SourceLayer):
    """Z = Σ_p X_p W_p for dense or CSR sparse inputs; ciphertext work ∝ non-zeros of the batch."""

    sums = True

    def _prepare(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_dims[self.me]:
            raise ValueError(f"layer {self.name!r}: party {self.me!r} input has shape {x.shape}, expected "
                             f"[batch, {self.in_dims[self.me]}]")
        xi, xq = _quantize(x, self.scales.x)
        if sp.issparse(xi):
            used, compact = _compact_columns(xi)
            xi = (used, compact)
        return xi, xq, x.shape[0]

    def _cipher_product(self, xi) -> he.CipherTensor:
        if isinstance(xi, tuple):
            used, compact = xi
            return he.sparse_matmul_cipher(compact, self.store.get(used), self.keys.he)
        return he.plain_matmul_cipher(xi, self.store.get(None), self.keys.he)

    def _plain_product(self, xq) -> np.ndarray:
        return np.asarray(xq @ self.U)

    def _cipher_grad(self, xi, g: he.CipherTensor) -> tuple[np.ndarray | None, he.CipherTensor]:
        if isinstance(xi, tuple):
            used, compact = xi
            return used, he.sparse_t_matmul_cipher(compact, g, self.keys.he)
        return None, he.plain_t_matmul_cipher(xi, g, self.keys.he)

    def _plain_grad(self, xq, g: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        return None, np.asarray(xq.T @ g)


class EmbedSourceLayer(SourceLayer):
    """Per-field embeddings of categorical codes: party p's output is [B, F_p·E] (its F_p fields' rows of its
    table), concatenated over the parties (label party first, then feature parties by name). The ciphertext
    product is a gather and the update a scatter-add of the touched rows."""

    sums = False

    def __init__(self, name: str, channel: PartyChannel, keys: PartyKeys, label_party: str,
                 in_dims: Mapping[str, int], out_dim: int, fields: Mapping[str, int], **kw) -> None:
        self.fields = dict(fields)
        if set(self.fields) != set(in_dims) or any((self.fields[p] > 0) != (in_dims[p] > 0) for p in in_dims):
            raise ValueError(f"layer {name!r}: fields {dict(fields)} must name the parties of in_dims "
                             f"{dict(in_dims)}, with fields > 0 exactly where the vocabulary is > 0")
        super().__init__(name, channel, keys, label_party, in_dims, out_dim, **kw)

    def _feature_bits(self) -> int:
        return 0  # one-hot inputs are integers

    def _out_rows(self, party: str, batch: int) -> int:
        return batch * self.fields[party]

    def _prepare(self, x):
        x = np.asarray(x)
        f = self.fields[self.me]
        if x.ndim != 2 or x.shape[1] != f or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"layer {self.name!r}: party {self.me!r} input must be integer codes [batch, {f}], "
                             f"got {x.dtype} {x.shape}")
        flat = x.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.in_dims[self.me]):
            raise ValueError(f"layer {self.name!r}: codes must be in [0, {self.in_dims[self.me]}), got "
                             f"[{flat.min()}, {flat.max()}]")
        used, local = np.unique(flat, return_inverse=True)
        return (used, local.reshape(-1)), flat, x.shape[0]

    def _cipher_product(self, xi) -> he.CipherTensor:
        used, local = xi
        return self.store.get(used)[local]

    def _plain_product(self, xq) -> np.ndarray:
        return self.U[xq]

    def _cipher_grad(self, xi, g: he.CipherTensor) -> tuple[np.ndarray, he.CipherTensor]:
        used, local = xi
        onehot = sp.csr_matrix((np.ones(len(local), dtype=np.int64), local, np.arange(len(local) + 1)),
                               shape=(len(local), len(used)))
        return used, he.sparse_t_matmul_cipher(onehot, g, self.keys.he)

    def _plain_grad(self, xq, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        used, local = np.unique(xq, return_inverse=True)
        out = np.zeros((len(used), self.h))
        np.add.at(out, local.reshape(-1), g)
        return used, out


def reveal_weight(layer: SourceLayer, peer_private: he.PrivateKey) -> np.ndarray:
    """W = U + V of the weights ``layer``'s party owns, decrypting [[V]] with the key owner's private key: only for
    tests and for a model release both parties agree to (it needs both parties' secrets)."""
    if layer.store is None or layer.U is None:
        raise ValueError(f"party {layer.me!r} holds no weights in layer {layer.name!r}")
    pk = layer.packing
    v = pk.uncols(peer_private.decrypt(layer.store.get(None)))
    return layer.U + he.FixedPoint.decode(v, layer.scales.w)
