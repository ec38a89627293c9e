"""Byte layout of one stored table row: ``[weights in the table dtype | pad | optimizer state in float32]``.

Keeping a row's optimizer state beside its weights means a push reads and writes one place (one page slot).
All multi-byte values are little-endian, so pages written to LMDB are portable between hosts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float16", "bfloat16", "int64", "bytes")
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

# How each table dtype is stored in a row (bfloat16 as its 16-bit pattern, bytes as raw octets).
_STORED = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int64": np.dtype("<i8"),
    "bytes": np.dtype("u1"),
}
_F32 = np.dtype("<f4")
_BF16_NAN = np.uint16(0x7FC0)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest, ties to even; NaN becomes 0x7FC0.

    Same rounding as torch's ``.to(torch.bfloat16)`` (torch's own NaN bits differ between its scalar and SIMD
    paths; any NaN stays a NaN).
    """
    f = np.ascontiguousarray(x, dtype=_F32)
    bits = f.view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), _BF16_NAN, rounded)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(_F32)


def describe_array(a: object) -> str:
    """'float32 [3, 4]' for an array, the type name otherwise: for error messages."""
    return f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


@dataclass(frozen=True)
class RowLayout:
    """Bytes of one stored row: [weights in the table dtype | optimizer state in float32], so one update touches one place.

    ``dim`` counts weight values; for ``bytes`` it is the byte width of a row (a ciphertext). ``int64`` and
    ``bytes`` rows carry no optimizer state. When a row has state, the weight segment is padded to a multiple
    of 4 bytes so the float32 state is aligned (a float16/bfloat16 row of odd ``dim`` gains 2 bytes).
    """

    dtype: str
    dim: int
    state_cols: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown table dtype {self.dtype!r}; allowed: {list(DTYPES)}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim <= 0:
            raise ValueError(f"dim must be a positive integer; got {self.dim!r}")
        if isinstance(self.state_cols, bool) or not isinstance(self.state_cols, (int, np.integer)) or self.state_cols < 0:
            raise ValueError(f"state_cols must be an integer >= 0; got {self.state_cols!r}")
        if self.state_cols and self.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"a {self.dtype} table cannot hold optimizer state (state_cols={self.state_cols}); "
                f"only {list(FLOAT_DTYPES)} tables can have an optimizer"
            )

    @property
    def weights_nbytes(self) -> int:
        """Bytes of the weight segment, padding included."""
        raw = self.dim * _STORED[self.dtype].itemsize
        return -(-raw // 4) * 4 if self.state_cols else raw

    @property
    def state_offset(self) -> int:
        return self.weights_nbytes

    @property
    def row_bytes(self) -> int:
        return self.weights_nbytes + 4 * self.state_cols

    @property
    def wire_dtype(self) -> np.dtype:
        """dtype of :meth:`weights_raw` (bfloat16 travels as uint16 bits, bytes as uint8)."""
        return _STORED[self.dtype]

    def _check_rows(self, rows: np.ndarray) -> None:
        if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.row_bytes:
            raise ValueError(f"rows must be uint8 [n, {self.row_bytes}] for {self}; got {describe_array(rows)}")
        if rows.shape[0] and rows.strides[1] != 1:
            raise ValueError(f"rows must be contiguous along each row (stride 1); got strides {rows.strides}")

    def _float_only(self, what: str) -> None:
        if self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{what} needs a float table dtype {list(FLOAT_DTYPES)}; this layout is {self.dtype}")

    def _stored_view(self, rows: np.ndarray) -> np.ndarray:
        width = self.dim * _STORED[self.dtype].itemsize
        return rows[:, :width].view(_STORED[self.dtype])

    def weights_raw(self, rows: np.ndarray) -> np.ndarray:
        """Weights in the wire dtype, contiguous [n, dim]: a view when rows hold nothing but weights, else a copy."""
        self._check_rows(rows)
        return np.ascontiguousarray(self._stored_view(rows))

    def weights_f32(self, rows: np.ndarray) -> np.ndarray:
        """A float32 copy [n, dim] of the weights (float dtypes only)."""
        self._check_rows(rows)
        self._float_only("weights_f32")
        stored = self._stored_view(rows)
        if self.dtype == "bfloat16":
            return from_bfloat16_bits(stored)
        return stored.astype(_F32)

    def state(self, rows: np.ndarray) -> np.ndarray:
        """A float32 *view* [n, state_cols] into ``rows``: writing it updates the rows in place.

        An all-zero state is a fresh optimizer state for every optimizer in :mod:`seraphim.ps.optimizers`.
        """
        self._check_rows(rows)
        return rows[:, self.state_offset:].view(_F32)

    def _encode(self, weights: np.ndarray) -> np.ndarray:
        """Weights [n, dim] (any float dtype for float tables) -> the stored dtype."""
        if self.dtype in FLOAT_DTYPES:
            if not np.issubdtype(weights.dtype, np.floating):
                raise ValueError(f"weights for a {self.dtype} table must be floating point; got {weights.dtype}")
            if self.dtype == "bfloat16":
                return to_bfloat16_bits(weights.astype(_F32, copy=False))
            return weights.astype(_STORED[self.dtype])
        if self.dtype == "int64":
            if not np.issubdtype(weights.dtype, np.integer):
                raise ValueError(f"weights for an int64 table must be integers; got {weights.dtype}")
            return weights.astype(_STORED["int64"])
        if weights.dtype != np.uint8:
            raise ValueError(f"weights for a bytes table must be uint8 [n, {self.dim}]; got {describe_array(weights)}")
        return weights

    def pack(self, weights: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Weights [n, dim] and state float32 [n, state_cols] (None: zeros, a fresh state) -> uint8 [n, row_bytes]."""
        weights = np.asarray(weights)
        if weights.ndim != 2 or weights.shape[1] != self.dim:
            raise ValueError(f"weights must be [n, {self.dim}] for {self}; got {describe_array(weights)}")
        n = weights.shape[0]
        rows = np.zeros((n, self.row_bytes), dtype=np.uint8)
        self._stored_view(rows)[:] = self._encode(weights)
        if state is not None:
            state = np.asarray(state)
            if state.shape != (n, self.state_cols) or not np.issubdtype(state.dtype, np.floating):
                raise ValueError(f"state must be float32 [{n}, {self.state_cols}] for {self}; got {describe_array(state)}")
            self.state(rows)[:] = state
        return rows

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`weights_raw`: wire-dtype weights [n, dim] -> uint8 rows [n, row_bytes] with a fresh (zero) state."""
        raw = np.asarray(raw)
        if raw.dtype != self.wire_dtype or raw.ndim != 2 or raw.shape[1] != self.dim:
            raise ValueError(
                f"raw weights of a {self.dtype} table must be {self.wire_dtype} [n, {self.dim}]; got {describe_array(raw)}"
            )
        rows = np.zeros((raw.shape[0], self.row_bytes), dtype=np.uint8)
        self._stored_view(rows)[:] = raw
        return rows
