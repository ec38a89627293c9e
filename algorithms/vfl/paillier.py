"""Paillier encryption for BlindFL's source layers: gmpy2 arithmetic over numpy object arrays, no per-number objects.

Why not ``phe``'s ``EncryptedNumber``: one Python object and one exponent per number is slow, and phe's float encoding
leaks each value's magnitude through the exponent. Here a :class:`CipherTensor` is a numpy object array of ``mpz``
ciphertexts; plaintexts are integers (:class:`FixedPoint` encodes floats at a constant scale the protocol tracks).

Choices, and what each costs on the 2-core machine (2048-bit keys; ``bench/paillier_primitives.py`` measures them):

- ``g = n + 1``, so ``g^m = 1 + m·n mod n²`` and an encryption is ``(1 + m·n)·r^n mod n²``: one multiplication
  online when ``r^n`` comes from a :class:`RandomnessPool`, whose background processes compute ``r^n`` ahead of use.
- Under a *peer's* key, ``r`` is uniform in ``Z_n^*``: a re-randomised ciphertext is then distributed exactly as a
  fresh encryption *even for the key owner*, who knows the factorisation. BlindFL relies on that when one party
  re-randomises a product under the other party's key before sending it.
- Under its *own* key (gradients, its encrypted weight share), the owner encrypts for parties that do not know the
  factorisation: that is the setting of Damgård–Jurik's short-exponent randomness ``hs^α``, ``hs = (−x²)^n mod n²``,
  ``α`` uniform below ``2^(bits/2)``, which SecretFlow's HEU (ZPaillier) uses by default; its semantic security
  rests on DCR plus the small-exponent assumption of that paper. With a fixed base, windowed tables mod p² and q²
  (CRT) make a value ~2·128 half-size multiplications: 5.5× faster than uniform ``r`` by CRT, 20× faster than
  without the factors (:class:`_FixedBaseRandomness`).
- Decryption by CRT over ``p²`` and ``q²``; values come back centre-lifted into ``(-n/2, n/2)``.
- Ciphertext × plaintext: negative multipliers use the inverse base (``gmpy2.powmod`` with a negative exponent),
  never ``m mod n``: with 32-bit multipliers the full-size exponent ``m mod n`` measured 17-25× slower.
- ``plain @ cipher`` products are multi-exponentiations ``∏_d c_d^(x_d)`` with windows of w bits and per-base
  tables ``c^-2^(w-1) .. c^2^(w-1)`` (signed digits; ``c^0 .. c^(2^w-1)`` when no multiplier is negative, which
  saves the inverses) that every row reuses, so a term costs about ``bits/w`` multiplications. Straus's method
  shares each output's squarings among its terms (dense X@C); where outputs have few terms (sparse X^T G) a comb
  (a table per window position, no squarings) is cheaper. A dense block goes by bit slices instead: joint
  tables of every subset product of t bases make one bit of one row cost one multiplication per t bases
  (about 0.7 times Straus's multiplications at 512 × 100 20-bit multipliers); negative multipliers are offset
  to non-negative ones and the constant correction paid once. A cost model picks the method and its sizes per
  call. 4-10× faster than one ``powmod`` per term; in the sparse methods only non-zeros cost.
- :class:`HEPool` splits products and decryptions by rows over processes started by ``forkserver`` (safe inside a
  worker that already runs gRPC threads).
- Slot packing (:func:`pack_slots`): every operation here is linear, so ``S`` small integers packed as
  ``Σ m_s·2^(s·slot_bits)`` ride in one ciphertext through add/mul/matmul and cut encryptions, re-randomisations,
  decryptions and products by ``S`` when the caller packs the ``H`` columns of a weight share.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import queue
import secrets
import struct
import weakref
from typing import Callable, Sequence

import gmpy2
import numpy as np
import scipy.sparse as sp
from gmpy2 import mpz

__all__ = [
    "STAT_SECURITY_BITS", "MIN_KEY_BITS", "generate_keypair", "PublicKey", "PrivateKey", "FixedPoint",
    "RandomnessPool", "CipherTensor", "HEPool", "plain_matmul_cipher", "sparse_matmul_cipher",
    "plain_t_matmul_cipher", "sparse_t_matmul_cipher", "cipher_t_matmul_plain", "random_mask", "uniform_ints",
    "pack_slots", "unpack_slots", "slots_per_ciphertext",
]

STAT_SECURITY_BITS = 40  #: κ: a mask of (value bits + κ) bits hides the value up to statistical distance 2^-κ
MIN_KEY_BITS = 512  #: smallest modulus accepted (tests); use 2048 (≈112-bit security) or more in production
_MPZ = type(mpz(0))
_ONE = mpz(1)
_PUB_MAGIC, _PRIV_MAGIC, _CT_MAGIC = b"SPK1", b"SSK1", b"SPCT"
_CT_VERSION = 1
_CT_HEADER = struct.Struct(">4sBB8sI")  # magic, version, ndim, key id, bytes per ciphertext; then ndim u64 dims
_MAX_NDIM = 32
_TABLE_ENTRIES_MAX = 1 << 18  #: window-table entries alive at once (~140 MB at 2048 bits); more columns go in blocks
_INT64_SAFE = 1 << 62  #: signed-digit recoding in int64 stays exact below this magnitude
_FILL_NICENESS = 5  #: added to a randomness pool's background processes' niceness
_BITSLICE_ENTRIES_MAX = 1 << 22  #: largest chunk (rows × columns) a bit-sliced product densifies


def _mp_context() -> mp.context.BaseContext:
    return mp.get_context("forkserver")


# ---------------------------------------------------------------------------------------------------- integer input


def _mulmod_ufunc(modulus: mpz) -> np.ufunc:
    """Elementwise a·b mod `modulus` in one pass per element: ~9% faster than ``a * b % modulus`` on object
    arrays, which first allocates the double-size products of the whole array."""
    return np.frompyfunc(lambda a, b: a * b % modulus, 2, 1)




def _int_array(x, what: str) -> np.ndarray:
    """An object array of Python ints / mpz from integer input; floats are refused (encode them first)."""
    arr = np.asarray(x)
    if arr.dtype == object:
        bad = next((v for v in arr.flat if not isinstance(v, (int, _MPZ, np.integer)) or isinstance(v, bool)), None)
        if bad is not None:
            raise TypeError(f"{what} must hold integers, found {type(bad).__name__} {bad!r}; "
                            "encode floats with FixedPoint first")
        if any(isinstance(v, np.integer) for v in arr.flat):  # numpy scalars would overflow in big-int arithmetic
            return np.array([int(v) for v in arr.flat], dtype=object).reshape(arr.shape)
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array (int64 or object of ints), got dtype {arr.dtype}; "
                        "encode floats with FixedPoint first")
    return arr.astype(object)


def _random_below(bound: mpz, k: int) -> list[mpz]:
    """k integers uniform in [1, bound) (statistical distance < 2^-64) from the OS's CSPRNG."""
    width = (bound.bit_length() + 64 + 7) // 8
    raw = os.urandom(width * k)
    return [mpz.from_bytes(raw[i * width:(i + 1) * width], "big") % (bound - 1) + 1 for i in range(k)]


# ------------------------------------------------------------------------------------------------------------ keys


def _random_prime(bits: int) -> mpz:
    """A prime of exactly `bits` bits whose top two bits are set, so two of them make an exactly 2·bits modulus."""
    while True:
        p = gmpy2.next_prime(mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)))
        if p.bit_length() == bits:
            return p


def generate_keypair(bits: int = 2048) -> tuple["PublicKey", "PrivateKey"]:
    """A fresh Paillier key pair with an exactly `bits`-bit modulus n = p·q (p, q of bits/2 bits each)."""
    if bits < MIN_KEY_BITS or bits % 2:
        raise ValueError(f"key size must be an even number of bits >= {MIN_KEY_BITS} (2048 for ~112-bit security), "
                         f"got {bits}")
    while True:
        p, q = _random_prime(bits // 2), _random_prime(bits // 2)
        if p != q:
            private = PrivateKey(p, q)
            return private.public, private


def _pack_ints(*values: mpz) -> bytes:
    out = b""
    for v in values:
        raw = v.to_bytes((v.bit_length() + 7) // 8, "big")
        out += struct.pack(">I", len(raw)) + raw
    return out


def _unpack_ints(b: bytes, count: int, what: str) -> list[mpz]:
    values, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(b):
            raise ValueError(f"{what} is truncated: {len(b)} bytes")
        (length,) = struct.unpack_from(">I", b, pos)
        pos += 4
        if pos + length > len(b):
            raise ValueError(f"{what} is truncated: needs {pos + length} bytes, has {len(b)}")
        values.append(mpz.from_bytes(b[pos:pos + length], "big"))
        pos += length
    if pos != len(b):
        raise ValueError(f"{what} has {len(b) - pos} trailing bytes")
    return values


class PublicKey:
    """Paillier public key (g = n + 1). Sent to the peer, who encrypts and computes under it."""

    def __init__(self, n: int | mpz) -> None:
        n = mpz(n)
        if n.bit_length() < MIN_KEY_BITS or n % 2 == 0:
            raise ValueError(f"a Paillier modulus must be odd with at least {MIN_KEY_BITS} bits, "
                             f"got {n.bit_length()} bits")
        self.n = n
        self.nsquare = n * n
        self.bits = n.bit_length()
        self.max_int = n // 3  #: plaintexts must satisfy |m| < n/3 so that sums and differences stay decodable
        self.width = (self.nsquare.bit_length() + 7) // 8  #: bytes per serialized ciphertext
        self.key_id = hashlib.sha256(self.to_bytes()).digest()[:8]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(self.n)

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, fingerprint={self.fingerprint()})"

    def to_bytes(self) -> bytes:
        return _PUB_MAGIC + _pack_ints(self.n)

    @classmethod
    def from_bytes(cls, b: bytes) -> "PublicKey":
        if bytes(b[:4]) != _PUB_MAGIC:
            raise ValueError(f"not a Seraphim Paillier public key: magic {bytes(b[:4])!r}, expected {_PUB_MAGIC!r}")
        (n,) = _unpack_ints(bytes(b[4:]), 1, "public key")
        return cls(n)

    def fingerprint(self) -> str:
        """16 hex digits naming this key in logs and errors (SHA-256 of its bytes)."""
        return self.key_id.hex()

    def check_plaintext(self, m: np.ndarray) -> None:
        if m.size and (np.abs(m) >= self.max_int).any():
            worst = max(abs(int(v)) for v in m.flat)
            raise ValueError(f"plaintext magnitude 2^{math.log2(worst):.1f} is not below n/3 ≈ "
                             f"2^{math.log2(int(self.max_int)):.1f} for this {self.bits}-bit key: use fewer fraction "
                             "bits or a larger key")

    def raw_g_pow(self, m: np.ndarray) -> np.ndarray:
        """g^m = 1 + (m mod n)·n mod n² for an object array of checked integers (the trivial encryption)."""
        return (m % self.n) * self.n + 1

    def encrypt(self, m, pool: "RandomnessPool | None" = None) -> "CipherTensor":
        """Encrypt integers of any sign (|m| < n/3), any shape. Without a pool each ``r^n`` costs a full
        exponentiation (~10 ms at 2048 bits); with one it is a multiplication."""
        m = _int_array(m, "plaintext")
        self.check_plaintext(m)
        rn = _take_rn(self, pool, m.size)
        return CipherTensor(self.raw_g_pow(m) * rn.reshape(m.shape) % self.nsquare, self)


class PrivateKey:
    """Paillier private key (p, q). Stays with its party; ``to_bytes`` is for the party's own key file."""

    def __init__(self, p: int | mpz, q: int | mpz) -> None:
        p, q = mpz(p), mpz(q)
        if p == q or not (gmpy2.is_prime(p) and gmpy2.is_prime(q)):
            raise ValueError("a Paillier private key needs two distinct primes p and q")
        if p < q:
            p, q = q, p
        self.p, self.q = p, q
        self.public = PublicKey(p * q)
        self.psquare, self.qsquare = p * p, q * q
        g = self.public.n + 1
        self.hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self.psquare) - 1) // p, p)
        self.hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self.qsquare) - 1) // q, q)
        self.q_inv_p = gmpy2.invert(q, p)

    def __repr__(self) -> str:
        return f"PrivateKey(bits={self.public.bits}, fingerprint={self.public.fingerprint()})"

    def to_bytes(self) -> bytes:
        return _PRIV_MAGIC + _pack_ints(self.p, self.q)

    @classmethod
    def from_bytes(cls, b: bytes) -> "PrivateKey":
        if bytes(b[:4]) != _PRIV_MAGIC:
            raise ValueError(f"not a Seraphim Paillier private key: magic {bytes(b[:4])!r}, expected {_PRIV_MAGIC!r}")
        p, q = _unpack_ints(bytes(b[4:]), 2, "private key")
        return cls(p, q)

    def decrypt(self, c: "CipherTensor", pool: "HEPool | None" = None) -> np.ndarray:
        """Plaintexts as an object array of Python ints, centre-lifted into (-n/2, n/2)."""
        if c.public != self.public:
            raise ValueError(f"ciphertext is under key {c.public.fingerprint()}, this private key is "
                             f"{self.public.fingerprint()}")
        flat = c.values.reshape(-1)
        parts = _run(_decrypt_task, [(self, chunk) for chunk in _split(flat, pool)], pool)
        return np.concatenate(parts).reshape(c.shape) if parts else np.empty(c.shape, dtype=object)


def _decrypt_task(task: tuple[PrivateKey, np.ndarray]) -> np.ndarray:
    key, values = task
    n, p, q = key.public.n, key.p, key.q
    half = n // 2
    mp_ = _crt_half(values, p, key.psquare, key.hp)
    mq = _crt_half(values, q, key.qsquare, key.hq)
    m = mq + ((mp_ - mq) * key.q_inv_p % p) * q
    return np.array([int(v - n) if v > half else int(v) for v in m], dtype=object)


def _crt_half(values: np.ndarray, p: mpz, psquare: mpz, hp: mpz) -> np.ndarray:
    """m mod p = L_p(c^(p-1) mod p²)·h_p mod p, with L_p(x) = (x - 1)/p."""
    powered = np.array(gmpy2.powmod_base_list(list(values % psquare), p - 1, psquare), dtype=object)
    return (powered - 1) // p * hp % p


# ------------------------------------------------------------------------------------------------- fixed point


class FixedPoint:
    """Floats as integers round(x·2^f) at one constant scale, so ciphertexts carry no magnitude-dependent exponent.

    A product of two encoded values has scale 2f; the protocol tracks the scale and passes it to :meth:`decode`.
    """

    def __init__(self, frac_bits: int = 32) -> None:
        if not 0 <= frac_bits <= 512:
            raise ValueError(f"frac_bits must be in [0, 512], got {frac_bits}")
        self.frac_bits = frac_bits

    def encode(self, x) -> np.ndarray:
        """round(x·2^frac_bits) as an object array of Python ints."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("cannot encode NaN or infinite values")
        y = np.rint(np.ldexp(x, self.frac_bits))
        if y.size == 0 or np.abs(y).max() < _INT64_SAFE:
            return y.astype(np.int64).astype(object)
        return np.array([int(v) for v in y.flat], dtype=object).reshape(y.shape)

    @staticmethod
    def decode(m, scale_bits: int) -> np.ndarray:
        """m / 2^scale_bits as float64 (correctly rounded for any integer size)."""
        m = np.asarray(m)
        if m.dtype != object:
            return np.ldexp(m.astype(np.float64), -scale_bits)
        if m.size == 0 or max(abs(int(v)) for v in m.flat) < _INT64_SAFE:
            return np.ldexp(m.astype(np.int64).astype(np.float64), -scale_bits)
        scale = 1 << scale_bits
        return np.array([int(v) / scale for v in m.flat], dtype=np.float64).reshape(m.shape)


def random_mask(shape, bits: int) -> np.ndarray:
    """Masks uniform in [0, 2^(bits + STAT_SECURITY_BITS)) for values with |v| < 2^bits: v + mask (or v - mask) is
    within statistical distance 2^-40 of the mask alone. Unlike masks uniform mod n, shares made this way can be
    recombined over the integers across two parties' different moduli."""
    if bits < 0:
        raise ValueError(f"bits must be >= 0, got {bits}")
    total = bits + STAT_SECURITY_BITS
    return uniform_ints(os.urandom, shape, total)


def uniform_ints(read: Callable[[int], bytes], shape, bits: int) -> np.ndarray:
    """Integers uniform in [0, 2^bits) (object array of ``shape``) from ``read(k)``, k uniform random bytes (the
    OS, a seeded PRG): each value takes its own whole bytes, top bits first."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    width = (bits + 7) // 8
    count = math.prod(shape)
    raw = read(width * count)
    cut = 8 * width - bits
    out = [int.from_bytes(raw[i * width:(i + 1) * width], "big") >> cut for i in range(count)]
    return np.array(out, dtype=object).reshape(shape)


# ---------------------------------------------------------------------------------------------- slot packing


def slots_per_ciphertext(pub: PublicKey, slot_bits: int) -> int:
    """How many signed slots of `slot_bits` bits fit one plaintext (below n/3, so it stays decodable)."""
    return (pub.bits - 3) // slot_bits


def pack_slots(m, slot_bits: int) -> np.ndarray:
    """Σ_s m[..., s]·2^(s·slot_bits) over the last axis: S signed integers in one plaintext. Each slot value must
    satisfy |v| < 2^(slot_bits-1) at decryption time (after all homomorphic operations)."""
    m = _int_array(m, "slot values")
    if m.ndim == 0:
        raise ValueError("pack_slots needs at least one axis (the slots)")
    out = np.zeros(m.shape[:-1], dtype=object)
    for s in range(m.shape[-1] - 1, -1, -1):
        out = (out << slot_bits) + m[..., s]
    return out


def unpack_slots(packed, slots: int, slot_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_slots` on decrypted values: [..., slots] signed ints. A slot that overflowed corrupts
    the slot above it; overflow out of the top slot is detected and raised."""
    rest = _int_array(packed, "packed values")
    out = np.empty(rest.shape + (slots,), dtype=object)
    low, half = (1 << slot_bits) - 1, 1 << (slot_bits - 1)
    for s in range(slots):
        digit = rest & low
        digit = np.where(digit >= half, digit - (1 << slot_bits), digit)
        out[..., s] = digit
        rest = (rest - digit) >> slot_bits
    if rest.size and (rest != 0).any():
        raise ValueError(f"a packed value does not fit {slots} slots of {slot_bits} bits: a slot overflowed "
                         f"|v| < 2^{slot_bits - 1}; use wider slots or fewer slots")
    return out


# -------------------------------------------------------------------------------------------- randomness pool


def _rn_batch(n: mpz, k: int) -> list[mpz]:
    """k values r^n mod n² for uniform r ∈ Z_n^* (what anyone holding only the public key can draw)."""
    return gmpy2.powmod_base_list(_random_below(n, k), n, n * n)


class _FixedBaseRandomness:
    """The key owner's r^n: ``hs^α`` with ``hs = (−x²)^n mod n²`` for a secret random x and α uniform below
    2^(bits/2) (Damgård–Jurik; HEU's ZPaillier), computed mod p² and mod q² from fixed-base window tables (one
    multiplication per 8 bits of α, no squarings) and joined by CRT."""

    WINDOW = 8

    def __init__(self, n: mpz, p: mpz, q: mpz) -> None:
        alpha_bits = (n.bit_length() + 1) // 2
        self.alpha_bound = mpz(1) << alpha_bits
        x = _random_below(n, 1)[0]
        h = (-x * x) % n
        levels = -(-alpha_bits // self.WINDOW)
        self.moduli = (p * p, q * q)
        self.tables = [_window_table(np.array([[gmpy2.powmod(h, n, m)]], dtype=object), False, self.WINDOW, levels,
                                     m)[0][0, :, :, 0] for m in self.moduli]
        self.q_inverse = gmpy2.invert(self.moduli[1], self.moduli[0])

    def batch(self, k: int) -> list[mpz]:
        alphas = np.array(_random_below(self.alpha_bound, k), dtype=object)
        digits = _window_digits(alphas, self.WINDOW, signed=False)
        halves = []
        for table, modulus in zip(self.tables, self.moduli):
            mulmod = _mulmod_ufunc(modulus)
            acc = np.full(k, _ONE, dtype=object)
            for j in range(digits.shape[1]):
                acc = mulmod(acc, table[j, digits[:, j]])
            halves.append(acc)
        yp, yq = halves
        return list(yq + (yp - yq) * self.q_inverse % self.moduli[0] * self.moduli[1])


def _rn_source(n: mpz, factors: tuple[mpz, mpz] | None) -> Callable[[int], list[mpz]]:
    """How a pool draws k values of r^n: uniform r from the public key, or the owner's fixed-base hs^α."""
    if factors is None:
        return lambda k: _rn_batch(n, k)
    return _FixedBaseRandomness(n, *factors).batch


def _fill_worker(n: mpz, factors: tuple[mpz, mpz] | None, out: mp.Queue, chunk: int) -> None:
    os.nice(_FILL_NICENESS)
    draw = _rn_source(n, factors)
    while True:  # put() blocks while the pool is full; the parent terminates this process
        out.put(draw(chunk))


def _stop_processes(procs: list, q: mp.Queue) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
    q.cancel_join_thread()
    q.close()


class RandomnessPool:
    """Precomputed r^n mod n² for one public key, filled by `processes` background processes (0: none, every take
    computes). Each value is handed out once. A key owner passes its ``private_key``: its values are then the
    fixed-base ``hs^α`` of :class:`_FixedBaseRandomness` (for encryptions only parties without the factors see).

    ``take`` never waits: what the background has not made yet is computed in the caller, so a drained pool
    costs time, never correctness. The background runs at a lower CPU priority (``_FILL_NICENESS``): it is for
    later steps, so it takes the cores the running step leaves idle rather than slowing that step down.
    """

    def __init__(self, pub: PublicKey, size: int, processes: int = 1, private_key: PrivateKey | None = None,
                 chunk: int = 16) -> None:
        if size < 1 or processes < 0 or chunk < 1:
            raise ValueError(f"RandomnessPool needs size >= 1, processes >= 0, chunk >= 1; got size={size}, "
                             f"processes={processes}, chunk={chunk}")
        if private_key is not None and private_key.public != pub:
            raise ValueError("private_key does not belong to the pool's public key")
        self.public, self.size, self.processes, self.chunk = pub, size, processes, chunk
        self._factors = None if private_key is None else (private_key.p, private_key.q)
        self._buffer: list[mpz] = []
        self._draw: Callable[[int], list[mpz]] | None = None  # built on the first take the background cannot serve
        ctx = _mp_context()
        self._queue = ctx.Queue(maxsize=max(1, -(-size // chunk)))
        self._procs = [ctx.Process(target=_fill_worker, args=(pub.n, self._factors, self._queue, chunk),
                                   daemon=True, name=f"rn-pool-{i}") for i in range(processes)]
        for proc in self._procs:
            proc.start()
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self._queue)

    def _drain(self, want: int) -> None:
        while len(self._buffer) < want:
            try:
                self._buffer.extend(self._queue.get_nowait())
            except queue.Empty:
                return

    def available(self) -> int:
        """Values ready now (approximate while the background is writing)."""
        self._drain(self.size)
        return len(self._buffer)

    def take(self, k: int) -> np.ndarray:
        """k fresh values r^n mod n² (1-D object array), never handed out before."""
        if k < 0:
            raise ValueError(f"cannot take {k} values")
        self._drain(k)
        got, self._buffer = self._buffer[:k], self._buffer[k:]
        if len(got) < k:
            if self._draw is None:
                self._draw = _rn_source(self.public.n, self._factors)
            got += self._draw(k - len(got))
        return np.array(got, dtype=object)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "RandomnessPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _take_rn(pub: PublicKey, pool: RandomnessPool | None, k: int) -> np.ndarray:
    if pool is None:
        return np.array(_rn_batch(pub.n, k), dtype=object)
    if pool.public != pub:
        raise ValueError(f"randomness pool is for key {pool.public.fingerprint()}, not {pub.fingerprint()}")
    return pool.take(k)


# -------------------------------------------------------------------------------------------------- process pool


class HEPool:
    """Processes for big ciphertext products and decryptions; work is split by rows, one part per process.

    Started by ``forkserver``: a fresh interpreter forks the workers, so this is safe in a process running gRPC.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"HEPool needs at least 1 process, got {processes}")
        self.processes = processes
        self._pool = _mp_context().Pool(processes)
        self._finalizer = weakref.finalize(self, self._pool.terminate)

    def map(self, fn: Callable, tasks: Sequence) -> list:
        """[fn(t) for t in tasks] across the processes; fn must be a module-level function."""
        return self._pool.map(fn, tasks, chunksize=1)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "HEPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split(flat: np.ndarray, pool: HEPool | None) -> list[np.ndarray]:
    parts = 1 if pool is None else min(pool.processes, max(1, len(flat)))
    return [part for part in np.array_split(flat, parts) if len(part)] if len(flat) else []


def _run(fn: Callable, tasks: list, pool: HEPool | None) -> list:
    if pool is None or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    return pool.map(fn, tasks)


# -------------------------------------------------------------------------------------------------- ciphertexts


def _powmod_task(task: tuple[np.ndarray, np.ndarray, mpz]) -> np.ndarray:
    bases, exponents, modulus = task
    return np.array([gmpy2.powmod(b, e, modulus) for b, e in zip(bases, exponents)], dtype=object)


def _prod_mod(values: np.ndarray, axis: int, modulus: mpz) -> np.ndarray:
    """Product along `axis` mod `modulus` by pairwise halving: log2(len) vectorized steps."""
    values = np.moveaxis(values, axis, 0)
    if values.shape[0] == 0:
        return np.full(values.shape[1:], _ONE, dtype=object)
    mulmod = _mulmod_ufunc(modulus)
    while values.shape[0] > 1:
        half = values.shape[0] // 2
        paired = mulmod(values[:half], values[half:2 * half])
        values = np.concatenate([paired, values[2 * half:]]) if values.shape[0] % 2 else paired
    return values[0]


class CipherTensor:
    """Paillier ciphertexts of any shape under one public key: a numpy object array of ``mpz`` (``.values``).

    Results of arithmetic are *not* re-randomised (a product with plaintexts or a sum still shows how it was made):
    call :meth:`rerandomize` before a tensor leaves the party.
    """

    def __init__(self, values: np.ndarray, public: PublicKey) -> None:
        self.values = np.asarray(values, dtype=object)
        self.public = public

    shape = property(lambda self: self.values.shape)
    ndim = property(lambda self: self.values.ndim)
    size = property(lambda self: self.values.size)
    T = property(lambda self: CipherTensor(self.values.T, self.public))

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"CipherTensor(shape={self.shape}, key={self.public.fingerprint()})"

    def _same_key(self, other: "CipherTensor") -> None:
        if not isinstance(other, CipherTensor):
            raise TypeError(f"expected a CipherTensor, got {type(other).__name__}; use add_plain for plaintexts")
        if other.public != self.public:
            raise ValueError(f"ciphertexts under different keys: {self.public.fingerprint()} vs "
                             f"{other.public.fingerprint()}")

    def _new(self, values: np.ndarray) -> "CipherTensor":
        return CipherTensor(values, self.public)

    def __getitem__(self, index) -> "CipherTensor":
        return self._new(np.asarray(self.values[index], dtype=object))

    def reshape(self, *shape) -> "CipherTensor":
        return self._new(self.values.reshape(*shape))

    def __add__(self, other: "CipherTensor") -> "CipherTensor":
        """[[a + b]] (elementwise, numpy broadcasting)."""
        self._same_key(other)
        return self._new(self.values * other.values % self.public.nsquare)

    def __sub__(self, other: "CipherTensor") -> "CipherTensor":
        return self + other.neg()

    def add_plain(self, m) -> "CipherTensor":
        """[[a + m]] for integers m (|m| < n/3), broadcast."""
        m = _int_array(m, "plaintext")
        self.public.check_plaintext(m)
        return self._new(self.values * self.public.raw_g_pow(m) % self.public.nsquare)

    def mul_plain(self, m, pool: HEPool | None = None) -> "CipherTensor":
        """[[a · m]] for integers m of any sign, elementwise with broadcasting; cost grows with the bits of |m|."""
        m = _int_array(m, "multiplier")
        bases, exps = np.broadcast_arrays(self.values, m)
        shape = bases.shape
        tasks = [(b, e, self.public.nsquare)
                 for b, e in zip(_split(bases.reshape(-1), pool), _split(exps.reshape(-1), pool))]
        parts = _run(_powmod_task, tasks, pool)
        return self._new(np.concatenate(parts).reshape(shape) if parts else np.empty(shape, dtype=object))

    def neg(self) -> "CipherTensor":
        """[[-a]] (modular inverses)."""
        nsq = self.public.nsquare
        return self._new(np.array([gmpy2.invert(v, nsq) for v in self.values.flat], dtype=object)
                         .reshape(self.shape))

    def sum(self, axis: int | None = None) -> "CipherTensor":
        """[[Σ a]] along `axis` (all elements when None)."""
        values = self.values.reshape(-1) if axis is None else self.values
        return self._new(np.asarray(_prod_mod(values, 0 if axis is None else axis, self.public.nsquare),
                                    dtype=object))

    def rerandomize(self, pool: RandomnessPool | None) -> "CipherTensor":
        """The same plaintexts under fresh randomness (a fresh r^n each): do this before sending."""
        rn = _take_rn(self.public, pool, self.size)
        return self._new(self.values * rn.reshape(self.shape) % self.public.nsquare)

    @staticmethod
    def concat(tensors: Sequence["CipherTensor"], axis: int = 0) -> "CipherTensor":
        if not tensors:
            raise ValueError("concat needs at least one CipherTensor")
        for t in tensors[1:]:
            tensors[0]._same_key(t)
        return tensors[0]._new(np.concatenate([t.values for t in tensors], axis=axis))

    def to_bytes(self) -> bytes:
        """Header (magic, version, ndim, key id, width, shape) then each ciphertext as `width` big-endian bytes."""
        pub = self.public
        header = _CT_HEADER.pack(_CT_MAGIC, _CT_VERSION, self.ndim, pub.key_id, pub.width)
        dims = struct.pack(f">{self.ndim}Q", *self.shape)
        w = pub.width
        return header + dims + b"".join(v.to_bytes(w, "big") for v in self.values.flat)

    @classmethod
    def from_bytes(cls, b: bytes, pub: PublicKey) -> "CipherTensor":
        """Parse and validate bytes from :meth:`to_bytes`: header, key, length, and every value in [1, n²)."""
        b = bytes(b)
        if len(b) < _CT_HEADER.size:
            raise ValueError(f"ciphertext bytes truncated: {len(b)} bytes, header alone is {_CT_HEADER.size}")
        magic, version, ndim, key_id, width = _CT_HEADER.unpack_from(b)
        if magic != _CT_MAGIC or version != _CT_VERSION:
            raise ValueError(f"not a CipherTensor v{_CT_VERSION}: magic {magic!r} version {version}")
        if key_id != pub.key_id:
            raise ValueError(f"ciphertexts were made under key {key_id.hex()}…, expected {pub.fingerprint()}")
        if width != pub.width or ndim > _MAX_NDIM:
            raise ValueError(f"bad CipherTensor header: width {width} (expected {pub.width}), ndim {ndim} "
                             f"(at most {_MAX_NDIM})")
        start = _CT_HEADER.size + 8 * ndim
        if len(b) < start:
            raise ValueError(f"ciphertext bytes truncated in the shape: {len(b)} bytes, need {start}")
        shape = struct.unpack_from(f">{ndim}Q", b, _CT_HEADER.size)
        count = math.prod(shape)
        if len(b) - start != count * width:
            raise ValueError(f"ciphertext payload is {len(b) - start} bytes, shape {shape} needs {count * width}")
        values = np.array([mpz.from_bytes(b[start + i * width:start + (i + 1) * width], "big")
                           for i in range(count)], dtype=object).reshape(shape)
        if count and ((values < 1) | (values >= pub.nsquare)).any():
            raise ValueError("a ciphertext value is outside [1, n²): corrupted or not made under this key")
        return cls(values, pub)


# ------------------------------------------------------------------------------------------------ matrix products


def _max_abs(data: np.ndarray) -> int:
    if data.size == 0:
        return 0
    if data.dtype == object:
        return max(abs(int(v)) for v in data)
    return max(abs(int(data.max())), abs(int(data.min())))


def _window_digits(data: np.ndarray, w: int, signed: bool) -> np.ndarray:
    """[nnz, windows] digits with data = Σ_j digit_j·2^(w·j): in [-2^(w-1), 2^(w-1)) when signed, else [0, 2^w)
    (then no inverse table is needed). int64 fast path when the values are small enough."""
    x = data.astype(np.int64) if _max_abs(data) < _INT64_SAFE else data.astype(object)
    full, half = 1 << w, 1 << (w - 1)
    digits = []
    while x.size and (x != 0).any():
        d = x & (full - 1)
        if signed:
            d = np.where(d >= half, d - full, d)
        digits.append(np.asarray(d, dtype=np.int64))
        x = (x - d) >> w
    return np.stack(digits, axis=1) if digits else np.zeros((len(data), 0), dtype=np.int64)


def _choose_plan(rows: int, cols: int, nnz: int, h: int, bits: int, signed: bool) -> tuple[int, int, bool, int]:
    """(cost, w, comb, column block) with the fewest multiplications mod n², at most _TABLE_ENTRIES_MAX table
    entries alive at once. Straus: tables cols·h·2^w, terms nnz·h·bits/w, squarings rows·h·bits per column block.
    Comb (fixed-base: one table per window position, no squarings): tables cols·h·(bits/w)·(2^w + w), the same
    terms; it wins when outputs have few terms each (the sparse X^T G)."""
    best = None
    for w in range(2, 9):  # w = 1 has no positive signed digit: the recoding would never end
        windows = bits // w + 1
        per_base = (1 << w) + (8 if signed else 0)  # the powers, and an inverse (~8 multiplications)
        for comb in (False, True):
            levels = windows if comb else 1
            block = max(1, _TABLE_ENTRIES_MAX // (h * levels * ((1 << w) + 1)))
            cost = cols * h * levels * (per_base + (w if comb else 0)) + nnz * h * windows
            if not comb:
                cost += -(-cols // block) * rows * h * bits
            if best is None or cost < best[0]:
                best = (cost, w, comb, block)
    return best


def _window_table(bases: np.ndarray, signed: bool, w: int, levels: int, nsq: mpz) -> tuple[np.ndarray, int]:
    """(table, offset): table[c, j, offset + e] = bases[c]^(e·2^(w·j)) for j < levels, e in [-2^(w-1), 2^(w-1)]
    (signed) or [0, 2^w) (unsigned)."""
    k, h = bases.shape
    top = 1 << (w - 1) if signed else (1 << w) - 1
    offset = top if signed else 0
    table = np.empty((k, levels, offset + top + 1, h), dtype=object)
    mulmod = _mulmod_ufunc(nsq)
    base = bases
    for j in range(levels):
        if j:
            for _ in range(w):
                base = mulmod(base, base)
        level = table[:, j]
        level[:, offset] = _ONE
        level[:, offset + 1] = base
        for e in range(2, top + 1):
            level[:, offset + e] = mulmod(level[:, offset + e - 1], base)
        if signed:
            inverse = np.array([gmpy2.invert(v, nsq) for v in base.flat], dtype=object).reshape(base.shape)
            level[:, offset - 1] = inverse
            for e in range(2, top + 1):
                level[:, offset - e] = mulmod(level[:, offset - e + 1], inverse)
    return table, offset


def _row_ranks(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For terms grouped by row: (order, bounds) such that order[bounds[p]:bounds[p+1]] are the p-th terms of
    their rows, so each slice touches every row at most once and is applied with one vectorized update."""
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    order = np.argsort(rank, kind="stable")
    return order, np.searchsorted(rank[order], np.arange(rank.max(initial=-1) + 2))


def _multiexp_block(rows: np.ndarray, cols: np.ndarray, digits: np.ndarray, signed: bool, bases: np.ndarray,
                    n_rows: int, w: int, comb: bool, nsq: mpz) -> np.ndarray:
    """∏_terms bases[col]^x over the terms (row, col, digits of x) of one column block → [n_rows, h]."""
    acc = np.full((n_rows, bases.shape[1]), _ONE, dtype=object)
    if len(rows) == 0:
        return acc
    windows = digits.shape[1]
    mulmod = _mulmod_ufunc(nsq)
    table, offset = _window_table(bases, signed, w, windows if comb else 1, nsq)
    order, bounds = _row_ranks(rows)
    for j in range(windows - 1, -1, -1):
        if not comb and j != windows - 1:
            for _ in range(w):
                acc = mulmod(acc, acc)
        for p in range(len(bounds) - 1):
            sel = order[bounds[p]:bounds[p + 1]]
            digit = digits[sel, j]
            nz = digit != 0
            r = rows[sel[nz]]
            acc[r] = mulmod(acc[r], table[cols[sel[nz]], j if comb else 0, digit[nz] + offset])
    return acc


def _multiexp_task(task: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, mpz]) -> np.ndarray:
    """Rows of ∏_d bases[d]^x[r, d] for a COO chunk sorted by row; columns index `bases` [k, h]. A dense chunk
    goes by bit slices (:func:`_bitslice_multiexp`) when the cost model says it needs fewer multiplications."""
    rows, cols, data, bases, n_rows, nsq = task
    k, h = bases.shape
    signed = bool((data < 0).any())
    cost, w, comb, block = _choose_plan(n_rows, k, len(rows), h, _max_abs(data).bit_length(), signed)
    if len(rows) and n_rows * k <= _BITSLICE_ENTRIES_MAX and _max_abs(data) < _INT64_SAFE // 2:
        dense = np.zeros((n_rows, k), dtype=np.int64)
        dense[rows, cols] = data
        plan = _bitslice_plan(dense, h)
        if plan[0] < cost:
            return _bitslice_multiexp(dense, bases, nsq, *plan[1:])
    digits = _window_digits(data, w, signed)
    out = None
    for lo in range(0, k, block):
        mask = (cols >= lo) & (cols < lo + block)
        part = _multiexp_block(rows[mask], cols[mask] - lo, digits[mask], signed, bases[lo:lo + block], n_rows,
                               w, comb, nsq)
        out = part if out is None else _mulmod_ufunc(nsq)(out, part)
    return out


# Bit-sliced multi-exponentiation with joint tables ("four Russians"): ∏_d c_d^(x_rd) = ∏_j (∏_{d: bit j of x_rd}
# c_d)^(2^j). The bases go in groups of t; a group's table holds the product of every subset of its t bases (2^t
# entries, one multiplication each), so one bit position of one row costs one multiplication per group, whatever
# the bits: a dense [R, K] product of b-bit multipliers costs R·b·K/t + K·2^t/t + R·b (squarings), against
# R·K·(b/w + 1) for Straus with w-bit windows: with R = 512, K = 100, b = 20 about 0.7 times as many.
# Negative multipliers are offset to x + o ≥ 0 and the constant (∏_d c_d)^-o is paid once for all rows.


def _bitslice_plan(dense: np.ndarray, h: int) -> tuple[int, int, int, int]:
    """(cost in multiplications mod n², group size t, groups per block, offset o) for a dense int64 exponent
    matrix [R, K]; a block's tables hold at most _TABLE_ENTRIES_MAX entries and each block pays its own
    squarings. Lookups are counted as the bit patterns expected to be non-zero at the matrix's density of set
    bits."""
    n_rows, k = dense.shape
    offset = max(0, -int(dense.min()))
    top = int(dense.max()) + offset
    bits = top.bit_length()
    set_bits = sum(int(np.count_nonzero((dense + offset) >> j & 1)) for j in range(bits))
    density = set_bits / max(1, dense.size * bits)
    best = None
    for t in range(2, 13):
        groups = -(-k // t)
        per_block = max(1, _TABLE_ENTRIES_MAX // (h << t))
        blocks = -(-groups // per_block)
        lookups = n_rows * bits * groups * h * (1.0 - (1.0 - density) ** t)
        cost = int(groups * h * (1 << t) + lookups + blocks * n_rows * bits * h)
        if offset:
            cost += (k + n_rows + bits + 8) * h  # ∏ c_d, its power and inverse, one multiplication per row
        if best is None or cost < best[0]:
            best = (cost, t, per_block, offset)
    return best


def _subset_tables(bases: np.ndarray, t: int, nsq: mpz) -> np.ndarray:
    """[groups, 2^t, h]: entry e of group g is the product of the bases g·t + i for the set bits i of e (bases
    past the end count as 1)."""
    k, h = bases.shape
    mulmod = _mulmod_ufunc(nsq)
    groups = -(-k // t)
    padded = np.full((groups * t, h), _ONE, dtype=object)
    padded[:k] = bases
    padded = padded.reshape(groups, t, h)
    table = np.empty((groups, 1 << t, h), dtype=object)
    table[:, 0] = _ONE
    for e in range(1, 1 << t):
        low = e & -e
        bit = low.bit_length() - 1
        table[:, e] = padded[:, bit] if e == low else mulmod(table[:, e ^ low], padded[:, bit])
    return table


def _bit_patterns(exps: np.ndarray, t: int, bits: int) -> np.ndarray:
    """[R, groups, bits] int64: pattern[r, g, j] has bit i set when bit j of exps[r, g·t + i] is set."""
    n_rows, k = exps.shape
    groups = -(-k // t)
    padded = np.zeros((n_rows, groups * t), dtype=np.int64)
    padded[:, :k] = exps
    padded = padded.reshape(n_rows, groups, t)
    weights = np.int64(1) << np.arange(t, dtype=np.int64)
    return np.stack([((padded >> j) & 1) @ weights for j in range(bits)], axis=2)


def _bitslice_multiexp(dense: np.ndarray, bases: np.ndarray, nsq: mpz, t: int, per_block: int,
                       offset: int) -> np.ndarray:
    """[R, h]: ∏_d bases[d]^dense[r, d] by bit slices over joint tables of t bases (see the notes above)."""
    n_rows, k = dense.shape
    h = bases.shape[1]
    exps = dense + offset
    bits = int(exps.max()).bit_length()
    mulmod = _mulmod_ufunc(nsq)
    out = np.full((n_rows, h), _ONE, dtype=object)
    span = per_block * t
    for lo in range(0, k, span):
        table = _subset_tables(bases[lo:lo + span], t, nsq)
        patterns = _bit_patterns(exps[:, lo:lo + span], t, bits)
        acc = np.full((n_rows, h), _ONE, dtype=object)
        for j in range(bits - 1, -1, -1):
            if j != bits - 1:
                acc = mulmod(acc, acc)
            for g in range(table.shape[0]):
                pattern = patterns[:, g, j]
                hit = np.flatnonzero(pattern)
                if len(hit) == n_rows:
                    acc = mulmod(acc, table[g, pattern])
                elif len(hit):
                    acc[hit] = mulmod(acc[hit], table[g, pattern[hit]])
        out = acc if lo == 0 else mulmod(out, acc)
    if offset:
        total = _prod_mod(bases, 0, nsq)
        inverse = np.array([gmpy2.invert(v, nsq) for v in total], dtype=object)
        correction = np.array(gmpy2.powmod_base_list(list(inverse), offset, nsq), dtype=object)
        out = mulmod(out, correction)
    return out


def _matmul_coo(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, n_rows: int, c: CipherTensor,
                pool: HEPool | None) -> CipherTensor:
    """[[Σ_d x[r, d]·c[d, :]]] for the non-zeros (rows sorted ascending) of an integer matrix x. Only rows and
    columns with non-zeros are computed; empty rows get the trivial encryption of zero (1)."""
    out = np.full((n_rows, c.shape[1]), _ONE, dtype=object)
    if len(rows) == 0:
        return CipherTensor(out, c.public)
    used_rows, rows = np.unique(rows, return_inverse=True)
    parts = 1 if pool is None else pool.processes
    # split the used rows so that each part holds about the same number of non-zeros
    edges = np.unique(np.concatenate([[0], rows[[len(rows) * i // parts for i in range(1, parts)]],
                                      [len(used_rows)]]))
    tasks = []
    for r0, r1 in zip(edges[:-1], edges[1:]):
        lo, hi = np.searchsorted(rows, [r0, r1])
        used, local = np.unique(cols[lo:hi], return_inverse=True)
        tasks.append((rows[lo:hi] - r0, local.astype(np.int64), data[lo:hi], c.values[used], int(r1 - r0),
                      c.public.nsquare))
    out[used_rows] = np.concatenate(_run(_multiexp_task, tasks, pool))
    return CipherTensor(out, c.public)


def _check_product(x_shape: tuple, c: CipherTensor, what: str) -> None:
    if not isinstance(c, CipherTensor) or c.ndim != 2:
        raise ValueError(f"{what}: the ciphertext operand must be a 2-D CipherTensor, got "
                         f"{getattr(c, 'shape', type(c).__name__)}")
    if len(x_shape) != 2 or x_shape[1] != c.shape[0]:
        raise ValueError(f"{what}: shapes {tuple(x_shape)} and {c.shape} do not chain (inner dims must match)")


def _dense_int_matrix(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != object and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what}: plaintext matrix must be integer (int64 or object ints), got {arr.dtype}; "
                        "encode floats with FixedPoint first")
    return arr if arr.dtype == object else arr.astype(np.int64)


def plain_matmul_cipher(x_int, c: CipherTensor, pool: HEPool | None = None) -> CipherTensor:
    """[[X @ C]] for a plaintext integer X [B, D] and ciphertexts C [D, H]; zeros of X cost nothing."""
    x = _dense_int_matrix(x_int, "plain_matmul_cipher")
    _check_product(x.shape, c, "plain_matmul_cipher")
    rows, cols = np.nonzero(x != 0)
    return _matmul_coo(rows.astype(np.int64), cols.astype(np.int64), x[rows, cols], x.shape[0], c, pool)


def sparse_matmul_cipher(x: sp.spmatrix, c: CipherTensor, pool: HEPool | None = None) -> CipherTensor:
    """[[X @ C]] for a scipy sparse integer X [B, D]: cost ∝ nnz(X)·H."""
    if not sp.issparse(x):
        raise TypeError(f"sparse_matmul_cipher needs a scipy sparse matrix, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"sparse_matmul_cipher: data must be integer, got {x.dtype}; encode with FixedPoint first")
    _check_product(x.shape, c, "sparse_matmul_cipher")
    coo = sp.csr_matrix(x, copy=True)
    coo.sum_duplicates()
    coo.eliminate_zeros()
    coo = coo.tocoo()  # row-major order after sum_duplicates
    return _matmul_coo(coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.int64), x.shape[0],
                       c, pool)


def plain_t_matmul_cipher(x_int, c: CipherTensor, pool: HEPool | None = None) -> CipherTensor:
    """[[X^T @ G]] for X [B, D] and G [B, H] → [D, H] (weight gradients)."""
    return plain_matmul_cipher(_dense_int_matrix(x_int, "plain_t_matmul_cipher").T, c, pool)


def sparse_t_matmul_cipher(x: sp.spmatrix, c: CipherTensor, pool: HEPool | None = None) -> CipherTensor:
    """[[X^T @ G]] for a sparse X [B, D] and G [B, H] → [D, H]; rows of untouched features hold the trivial
    encryption of 0 (the value 1), to be re-randomised before anything leaves the party."""
    if not sp.issparse(x):
        raise TypeError(f"sparse_t_matmul_cipher needs a scipy sparse matrix, got {type(x).__name__}")
    return sparse_matmul_cipher(sp.csr_matrix(x.T), c, pool)


def cipher_t_matmul_plain(c: CipherTensor, g_int, pool: HEPool | None = None) -> CipherTensor:
    """[[C^T @ G]] for ciphertexts C [B, H] and a plaintext integer G [B, K] → [H, K]."""
    g = _dense_int_matrix(g_int, "cipher_t_matmul_plain")
    return plain_matmul_cipher(g.T, c, pool).T
