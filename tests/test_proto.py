"""The wire: generated stubs are fresh, the tensor codec round-trips and rejects bad payloads, chunks reassemble."""

import zlib

import numpy as np
import pytest

from seraphim.proto import common_pb2
from seraphim.proto.codec import decode_array, decode_keys, encode_array, encode_keys
from seraphim.proto.errors import DataLoss, InvalidArgument
from seraphim.proto.generate import stale_files
from seraphim.proto.partition import dense_block, dense_shard_of, group_by_shard, sparse_shard_of
from seraphim.proto.rpc import join_chunks, split_message


def test_generated_stubs_are_fresh():
    assert stale_files() == []


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "uint8", "bool"])
def test_codec_round_trip(dtype):
    arr = (np.random.default_rng(0).normal(size=(7, 5)) * 100).astype(dtype)
    back = decode_array(encode_array(arr))
    assert back.dtype == arr.dtype and back.shape == (7, 5)
    np.testing.assert_array_equal(back, arr)


def test_codec_keeps_bfloat16_bits_and_empty_arrays():
    bits = np.array([[0x3F80, 0xC000]], dtype=np.uint16)
    msg = encode_array(bits, "bfloat16")
    assert msg.dtype == "bfloat16"
    np.testing.assert_array_equal(decode_array(msg), bits)
    assert decode_array(encode_array(np.zeros((0, 64), np.float32))).shape == (0, 64)


def test_codec_rejects_bad_payloads():
    msg = encode_array(np.ones((4, 4), np.float32))
    msg.data = msg.data[:-3]
    with pytest.raises(InvalidArgument, match="61 bytes but dtype float32 and shape \\[4, 4\\] need 64"):
        decode_array(msg)
    with pytest.raises(InvalidArgument, match="dtype 'complex64' is unknown"):
        decode_array(common_pb2.Tensor(dtype="complex64", shape=[1], data=b"12345678"))
    with pytest.raises(InvalidArgument, match="not a multiple of 8"):
        decode_keys(b"1234567")


def test_keys_are_little_endian_int64():
    keys = np.array([-1, 0, 2**40 + 3], dtype=np.int64)
    data = encode_keys(keys)
    assert data[:8] == b"\xff" * 8 and data[16:24] == (2**40 + 3).to_bytes(8, "little")
    np.testing.assert_array_equal(decode_keys(data), keys)


def test_chunks_round_trip_and_detect_damage():
    payload = np.random.default_rng(1).bytes(10_000)
    chunks = list(split_message("Push", payload, chunk_bytes=3000))
    assert len(chunks) == 4 and all(c.crc32 == zlib.crc32(payload) for c in chunks)
    assert join_chunks(iter(chunks)) == ("Push", payload)
    with pytest.raises(InvalidArgument, match="truncated: got 3 of 4 chunks"):
        join_chunks(iter(chunks[:3]))
    with pytest.raises(InvalidArgument, match="out of order"):
        join_chunks(iter([chunks[0], chunks[2]]))
    bad = common_pb2.Chunk()
    bad.CopyFrom(chunks[1])
    bad.data = bytes([bad.data[0] ^ 1]) + bad.data[1:]
    with pytest.raises(DataLoss, match="CRC-32 mismatch"):
        join_chunks(iter([chunks[0], bad, chunks[2], chunks[3]]))
    with pytest.raises(InvalidArgument, match="empty"):
        join_chunks(iter([]))


def test_partitioning_covers_every_key_once():
    rows, n = 1003, 3
    blocks = [dense_block(rows, n, s) for s in range(n)]
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(blocks[i][1] == blocks[i + 1][0] for i in range(n - 1))
    keys = np.arange(rows)
    shards = dense_shard_of(keys, rows, n)
    for s, (a, b) in enumerate(blocks):
        assert np.all(shards[a:b] == s)
    sparse = np.arange(0, 300_000, 3, dtype=np.int64)  # structured ids still spread evenly
    counts = np.bincount(sparse_shard_of(sparse, n), minlength=n)
    assert counts.min() > 0.95 * len(sparse) / n
    groups = group_by_shard(sparse_shard_of(sparse, n), n)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(sparse)))
