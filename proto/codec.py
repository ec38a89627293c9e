"""Tensor codec: numpy or torch arrays to raw bytes with dtype and shape, and back, without per-element work.

Keys are little-endian int64 bytes. Decoding validates dtype, shape and byte count, so a corrupt payload is an
InvalidArgument naming what was wrong rather than a garbled array.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from seraphim.proto import common_pb2, ps_pb2
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


def decode_keys(data: bytes | memoryview) -> np.ndarray:
    """Keys from little-endian int64 bytes: a read-only view of the buffer."""
    if len(data) % 8:
        raise InvalidArgument(f"keys payload has {len(data)} bytes, not a multiple of 8 (int64 keys)")
    return np.frombuffer(data, dtype="<i8")


def encode_array(arr: np.ndarray, dtype: str | None = None) -> common_pb2.Tensor:
    """A Tensor message for `arr`; pass dtype='bfloat16' or 'bytes' for arrays that carry those as raw bits."""
    name, wire = _wire_array(arr, dtype)
    return common_pb2.Tensor(dtype=name, shape=list(wire.shape), data=wire.tobytes())


def _wire_array(arr: np.ndarray, dtype: str | None) -> tuple[str, np.ndarray]:
    """The wire dtype name of `arr` and its bytes as a C-contiguous array of the same shape (a view if they are)."""
    arr = np.asarray(arr)
    name = dtype or _NAME_OF.get(arr.dtype.name)
    if name not in WIRE_DTYPES:
        raise InvalidArgument(f"dtype {arr.dtype} cannot travel; allowed: {sorted(WIRE_DTYPES)}")
    return name, np.ascontiguousarray(arr, dtype=WIRE_DTYPES[name]).reshape(arr.shape)


def decode_array(msg: common_pb2.Tensor) -> np.ndarray:
    """The array a Tensor message carries, as a read-only view of its bytes, checked against dtype and shape."""
    return _checked_view(msg.dtype, tuple(int(s) for s in msg.shape), msg.data)


def _checked_view(dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> np.ndarray:
    if dtype not in WIRE_DTYPES:
        raise InvalidArgument(f"tensor dtype {dtype!r} is unknown; allowed: {sorted(WIRE_DTYPES)}")
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"tensor shape {shape} has a negative dimension")
    wire = WIRE_DTYPES[dtype]
    if math.prod(s for s in shape if s) * wire.itemsize > np.iinfo(np.intp).max:  # numpy refuses it even when
        raise InvalidArgument(f"tensor shape {list(shape)} is too large for an array")  # a zero makes it empty
    expected = math.prod(shape) * wire.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"tensor payload has {len(data)} bytes but dtype {dtype} and shape {list(shape)} need {expected}")
    return np.frombuffer(data, dtype=wire).reshape(shape)


# -- protobuf wire bytes of the array-heavy messages, written and read by hand ---------------------------------------
# A pull reply or a push request is nearly all one array. Through the generated classes that array is copied three
# times on the way out (tobytes, into the message, serialization) and twice on the way in; here it goes out in one
# copy (b"".join) and comes in as a view of the received bytes. The bytes are exactly what protobuf writes (fields
# in number order, proto3 defaults omitted, shape packed), so either side may still use the generated classes.

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FIXED_BYTES = {_I64: 8, _I32: 4}
_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    value &= _U64  # a negative int32/int64 travels as 10-byte two's complement, as protobuf writes it
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, size: int) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(size)


def _tensor_head(name: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """Serialized Tensor fields up to its array bytes: dtype, packed shape, the data field's tag and length."""
    head = _len_field(1, len(name)) + name.encode()
    if shape:
        packed = b"".join(_varint(int(s)) for s in shape)
        head += _len_field(2, len(packed)) + packed
    return head + (_len_field(3, nbytes) if nbytes else b"")


def encode_pull_reply(values: np.ndarray, dtype: str | None = None) -> bytes:
    """Wire bytes of ``PullReply(values=encode_array(values, dtype))``, the array copied once."""
    name, wire = _wire_array(values, dtype)
    data, view = pull_reply_buffer(name, wire.shape)
    view[...] = wire
    return data


def pull_reply_buffer(dtype: str, shape: tuple[int, ...],
                      versions: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:
    """The wire bytes of a ``PullReply`` for an array of `dtype` and `shape` (and the rows' `versions`, of a
    versioned table), and a writable view of the array's place in them, which the caller fills before it sends the
    bytes: the PS gathers rows from its pages straight into the reply, so they are copied once on the way out
    instead of twice (gather, then join)."""
    if dtype not in WIRE_DTYPES:
        raise InvalidArgument(f"dtype {dtype!r} cannot travel; allowed: {sorted(WIRE_DTYPES)}")
    wire = WIRE_DTYPES[dtype]
    nbytes = int(np.prod(shape, dtype=np.int64)) * wire.itemsize
    tensor = _tensor_head(dtype, tuple(shape), nbytes)
    head = _len_field(1, len(tensor) + nbytes) + tensor
    tail = b""
    if versions is not None and len(versions):
        packed = b"".join(_varint(int(v)) for v in versions)
        tail = _len_field(2, len(packed)) + packed
    data, view = writable_bytes(len(head) + nbytes + len(tail))
    view[:len(head)] = np.frombuffer(head, dtype=np.uint8)
    if tail:
        view[len(head) + nbytes:] = np.frombuffer(tail, dtype=np.uint8)
    return data, view[len(head):len(head) + nbytes].view(wire).reshape(shape)


def encode_push_request(table: str, keys: np.ndarray, values: np.ndarray, mode: int, worker: int,
                        dtype: str | None = None, version: int = 0, lr_scale: float = 0.0, seq: int = 0,
                        clock: int = 0) -> bytes:
    """Wire bytes of ``PushRequest(table=table, keys=encode_keys(keys), values=encode_array(values, dtype),
    mode=mode, worker=worker, version=version, lr_scale=lr_scale, seq=seq, clock=clock)``, keys and values copied
    once."""
    name, wire = _wire_array(values, dtype)
    keys = np.ascontiguousarray(keys, dtype="<i8")
    table_bytes = table.encode()
    head = (_len_field(1, len(table_bytes)) + table_bytes if table_bytes else b"") + (
        _len_field(2, keys.nbytes) if keys.nbytes else b"")
    tensor = _tensor_head(name, wire.shape, wire.nbytes)
    middle = _len_field(3, len(tensor) + wire.nbytes) + tensor
    tail = (_varint(4 << 3) + _varint(mode) if mode else b"") + (_varint(5 << 3) + _varint(worker) if worker else b"")
    tail += _varint(6 << 3) + _varint(version) if version else b""
    tail += _varint(7 << 3 | _I32) + np.float32(lr_scale).tobytes() if lr_scale else b""
    tail += _varint(8 << 3) + _varint(seq) if seq else b""
    tail += _varint(9 << 3) + _varint(clock) if clock else b""
    return b"".join((head, keys, middle, wire, tail))


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
_BYTES_DATA = bytes.__basicsize__ - 1  # offset of the characters in CPython's bytes object (after its header)


class _BytesMemory:
    """A fresh bytes object's characters as a numpy array interface; holds the object while the array lives."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.__array_interface__ = {"data": (id(data) + _BYTES_DATA, False), "shape": (len(data),),
                                    "typestr": "|u1", "version": 3}


def writable_bytes(size: int) -> tuple[bytes, np.ndarray]:
    """A new, uninitialized bytes object of `size` and a writable uint8 view of its characters.

    gRPC sends only ``bytes``; building a message in a bytearray and converting it costs a copy. Like CPython's own
    bytes.join, this writes the characters of a bytes object nobody else holds yet: fill the view, then hand the
    bytes on and drop the view (the bytes object must not be used as a dict key or hashed before it is filled).
    """
    if size < 2:  # 0 and 1 byte objects may be CPython's shared singletons
        raise ValueError(f"writable_bytes needs size >= 2, got {size}")
    data = _new_bytes(None, size)
    return data, np.asarray(_BytesMemory(data))


def _read_varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise InvalidArgument(f"malformed protobuf message: the varint ending at byte {pos} is cut off or too long")


def _fields(buf: memoryview) -> dict[int, int | memoryview] | None:
    """Fields of a message: number -> int (varint) or a memoryview of its bytes (length-delimited and fixed-width
    fields, no copy).

    None for a layout protobuf writes only when it concatenates messages (a field number repeats) or for a group
    wire type: the caller then parses with the generated class, which handles every case.
    """
    fields: dict[int, int | memoryview] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number in fields or wire_type not in (_VARINT, _LEN, _I32, _I64):
            return None
        if wire_type == _VARINT:
            fields[number], pos = _read_varint(buf, pos, end)
            continue
        size = _FIXED_BYTES.get(wire_type)
        if size is None:
            size, pos = _read_varint(buf, pos, end)
        if pos + size > end:
            raise InvalidArgument(f"malformed protobuf message: field {number} needs {size} bytes, "
                                  f"{end - pos} are left")
        fields[number] = buf[pos:pos + size]
        pos += size
    return fields


def _parse(cls: type, data: bytes | memoryview) -> Any:
    try:
        return cls.FromString(bytes(data))
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        raise InvalidArgument(f"{cls.__name__} message does not parse: {exc}") from exc


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _tensor_view(data: memoryview) -> np.ndarray:
    """decode_array of serialized Tensor bytes, as a read-only view of them (no message, no copy)."""
    fields = _fields(data)
    if fields is None:
        return decode_array(_parse(common_pb2.Tensor, data))
    dtype, packed, payload = fields.get(1, b""), fields.get(2, b""), fields.get(3, b"")
    if isinstance(dtype, int) or isinstance(payload, int):
        raise InvalidArgument("malformed Tensor message: dtype and data must be length-delimited fields")
    if isinstance(packed, int):  # a single unpacked shape entry: protobuf parsers accept both encodings
        shape = [packed]
    else:
        shape, pos = [], 0
        while pos < len(packed):
            value, pos = _read_varint(packed, pos, len(packed))
            shape.append(value)
    return _checked_view(bytes(dtype).decode(errors="replace"), tuple(_signed(s, 64) for s in shape), payload)


def decode_pull_reply(data: bytes) -> np.ndarray:
    """The array of a serialized PullReply, as a read-only view of `data`."""
    return decode_versioned_pull_reply(data)[0]


def decode_versioned_pull_reply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The array of a serialized PullReply (a read-only view of `data`) and its rows' versions (int64; empty for a
    table without versions)."""
    fields = _fields(memoryview(data))
    if fields is None:
        msg = _parse(ps_pb2.PullReply, data)
        fields = {1: memoryview(msg.values.SerializeToString())} if msg.HasField("values") else {}
        fields[2] = np.array(msg.versions, dtype=np.int64)
    values = fields.get(1)
    if not isinstance(values, memoryview):
        raise InvalidArgument("the pull reply carries no values")
    return _tensor_view(values), _packed_int64(fields.get(2, b""))


def _packed_int64(packed: bytes | memoryview | int | np.ndarray) -> np.ndarray:
    """A packed repeated int64 field (or one unpacked entry, which parsers accept as well)."""
    if isinstance(packed, np.ndarray):
        return packed
    if isinstance(packed, int):
        return np.array([_signed(packed, 64)], dtype=np.int64)
    out, pos = [], 0
    while pos < len(packed):
        value, pos = _read_varint(packed, pos, len(packed))
        out.append(_signed(value, 64))
    return np.array(out, dtype=np.int64)


@dataclass(frozen=True)
class PushFields:
    """A PushRequest as the PS uses it; keys and values are read-only views of the request bytes."""

    table: str
    keys: np.ndarray
    values: np.ndarray
    mode: int
    worker: int = 0
    version: int = 0
    lr_scale: float = 0.0
    seq: int = 0
    clock: int = 0


def decode_push_request(data: bytes) -> PushFields:
    """The fields of a serialized PushRequest, keys and values not copied."""
    fields = _fields(memoryview(data))
    if fields is None:
        msg = _parse(ps_pb2.PushRequest, data)
        fields = {1: memoryview(msg.table.encode()), 2: memoryview(msg.keys), 4: int(msg.mode), 5: int(msg.worker),
                  6: int(msg.version), 7: memoryview(np.float32(msg.lr_scale).tobytes()), 8: int(msg.seq),
                  9: int(msg.clock)}
        if msg.HasField("values"):
            fields[3] = memoryview(msg.values.SerializeToString())
    table, keys, values, mode = fields.get(1, b""), fields.get(2, b""), fields.get(3), fields.get(4, 0)
    worker, version, lr_scale = fields.get(5, 0), fields.get(6, 0), fields.get(7, bytes(4))
    seq, clock = fields.get(8, 0), fields.get(9, 0)
    if (isinstance(table, int) or isinstance(keys, int) or not isinstance(mode, int) or not isinstance(worker, int)
            or not isinstance(version, int) or isinstance(lr_scale, int) or len(lr_scale) != 4
            or not isinstance(seq, int) or not isinstance(clock, int)):
        raise InvalidArgument("malformed PushRequest: table and keys must be length-delimited fields, mode, worker, "
                              "version, seq and clock varints, lr_scale a 32-bit float")
    name = bytes(table).decode(errors="replace")
    if not isinstance(values, memoryview):
        raise InvalidArgument(f"push to {name!r} carries no values")
    return PushFields(name, decode_keys(keys), _tensor_view(values), _signed(mode, 32), _signed(worker, 32),
                      _signed(version, 64), float(np.frombuffer(lr_scale, dtype="<f4")[0]), _signed(seq, 64),
                      _signed(clock, 64))
