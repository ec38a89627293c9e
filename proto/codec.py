"""Tensor codec: numpy or torch arrays to raw bytes with dtype and shape, and back, without per-element work.

Keys are little-endian int64 bytes. Decoding validates dtype, shape and byte count, so a corrupt payload is an
InvalidArgument naming what was wrong rather than a garbled array.
"""

from __future__ import annotations

import numpy as np

from seraphim.proto import common_pb2
from seraphim.proto.errors import InvalidArgument

#: wire dtype name -> numpy dtype of the bytes as they travel (bfloat16 as its uint16 bits, bytes as uint8)
WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "bytes": np.dtype("u1"),
    "bool": np.dtype("?"),
}
_NAME_OF = {"float32": "float32", "float16": "float16", "float64": "float64", "int64": "int64",
            "int32": "int32", "uint8": "uint8", "bool": "bool"}


def encode_keys(keys: np.ndarray) -> bytes:
    """int64 keys as little-endian bytes (one copy at most)."""
    arr = np.ascontiguousarray(keys, dtype="<i8")
    return arr.tobytes()


def decode_keys(data: bytes) -> np.ndarray:
    """Keys from little-endian int64 bytes: a read-only view of the buffer."""
    if len(data) % 8:
        raise InvalidArgument(f"keys payload has {len(data)} bytes, not a multiple of 8 (int64 keys)")
    return np.frombuffer(data, dtype="<i8")


def encode_array(arr: np.ndarray, dtype: str | None = None) -> common_pb2.Tensor:
    """A Tensor message for `arr`; pass dtype='bfloat16' or 'bytes' for arrays that carry those as raw bits."""
    arr = np.asarray(arr)
    name = dtype or _NAME_OF.get(arr.dtype.name)
    if name not in WIRE_DTYPES:
        raise InvalidArgument(f"dtype {arr.dtype} cannot travel; allowed: {sorted(WIRE_DTYPES)}")
    wire = np.ascontiguousarray(arr, dtype=WIRE_DTYPES[name])
    return common_pb2.Tensor(dtype=name, shape=list(arr.shape), data=wire.tobytes())


def decode_array(msg: common_pb2.Tensor) -> np.ndarray:
    """The array a Tensor message carries, as a read-only view of its bytes, checked against dtype and shape."""
    if msg.dtype not in WIRE_DTYPES:
        raise InvalidArgument(f"tensor dtype {msg.dtype!r} is unknown; allowed: {sorted(WIRE_DTYPES)}")
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"tensor shape {shape} has a negative dimension")
    wire = WIRE_DTYPES[msg.dtype]
    expected = int(np.prod(shape, dtype=np.int64)) * wire.itemsize
    if len(msg.data) != expected:
        raise InvalidArgument(
            f"tensor payload has {len(msg.data)} bytes but dtype {msg.dtype} and shape {list(shape)} need {expected}")
    return np.frombuffer(msg.data, dtype=wire).reshape(shape)
