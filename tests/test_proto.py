"""The wire: generated stubs are fresh, the tensor codec round-trips and rejects bad payloads, chunks reassemble;
and the heap policy a worker process may opt into."""

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from seraphim.proto import common_pb2, ps_pb2
from seraphim.proto.codec import (decode_array, decode_keys, decode_pull_reply, decode_push_request, encode_array,
                                  encode_keys, encode_pull_reply, encode_push_request)
from seraphim.proto.errors import DataLoss, InvalidArgument
from seraphim.proto.generate import stale_files
from seraphim.proto.partition import dense_block, dense_shard_of, group_by_shard, sparse_shard_of
from seraphim.proto.resources import KEEP_FREED_MEMORY_ENV, apply_worker_heap_policy, glibc_version
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
    with pytest.raises(InvalidArgument, match="too large for an array"):  # empty, but numpy cannot size it
        decode_array(common_pb2.Tensor(dtype="float32", shape=[2, 0, 2**40, 2**40], data=b""))
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


@pytest.mark.parametrize("n, dim, dtype, mode, worker, table", [
    (3, 4, "float32", 0, 0, "t"), (1000, 64, "float32", 2, 7, "emb"), (0, 8, "float32", 1, 1, "x" * 300),
    (5, 3, "bfloat16", 0, -1, "t\u00e9ble"), (2, 200, "int64", 1, 0, ""), (4, 16, "bytes", 1, 2**31 - 1, "b")])
def test_hand_built_wire_bytes_are_protobufs_own(n, dim, dtype, mode, worker, table):
    rng = np.random.default_rng(n)
    keys = rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64)
    wire = {"bfloat16": np.uint16, "bytes": np.uint8}.get(dtype, dtype)
    values = (rng.normal(size=(n, dim)) * 100).astype(wire)
    push = encode_push_request(table, keys, values, mode, worker, dtype)
    assert push == ps_pb2.PushRequest(table=table, keys=encode_keys(keys), values=encode_array(values, dtype),
                                      mode=mode, worker=worker).SerializeToString()
    fields = decode_push_request(push)
    assert (fields.table, fields.mode) == (table, mode) and not fields.values.flags.writeable
    np.testing.assert_array_equal(fields.keys, keys)
    np.testing.assert_array_equal(fields.values, values)
    reply = encode_pull_reply(values, dtype)
    assert reply == ps_pb2.PullReply(values=encode_array(values, dtype)).SerializeToString()
    np.testing.assert_array_equal(decode_array(ps_pb2.PullReply.FromString(reply).values), values)
    back = decode_pull_reply(reply)
    assert back.dtype == values.dtype and back.shape == (n, dim)
    np.testing.assert_array_equal(back, values)


def test_wire_readers_take_any_layout_protobuf_accepts_and_reject_damage():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = encode_array(values).SerializeToString()
    # a message repeated on the wire merges (protobuf's rule); the reader falls back to the generated parser
    merged = b"\x0a" + bytes([len(tensor)]) + tensor + b"\x0a\x00"
    np.testing.assert_array_equal(decode_pull_reply(merged), values)
    unpacked_shape = b"\x0a\x07float32\x10\x06\x1a\x18" + values.tobytes()  # shape [6] as one unpacked varint
    np.testing.assert_array_equal(decode_pull_reply(b"\x0a" + bytes([len(unpacked_shape)]) + unpacked_shape),
                                  values.ravel())
    later_fields_first = ps_pb2.PushRequest(mode=ps_pb2.ADD).SerializeToString() + ps_pb2.PushRequest(
        table="t", keys=encode_keys(np.array([5])), values=encode_array(values[:1])).SerializeToString()
    fields = decode_push_request(later_fields_first)
    assert (fields.table, fields.mode, fields.keys.tolist()) == ("t", ps_pb2.ADD, [5])
    with pytest.raises(InvalidArgument, match="carries no values"):
        decode_pull_reply(b"")
    with pytest.raises(InvalidArgument, match="push to 't' carries no values"):
        decode_push_request(ps_pb2.PushRequest(table="t").SerializeToString())
    good = encode_pull_reply(values)
    with pytest.raises(InvalidArgument, match="malformed protobuf message"):
        decode_pull_reply(good[:-5])
    short = b"\x0a\x07float32\x12\x02\x02\x03\x1a\x04abcd"  # shape [2, 3] with 4 data bytes
    with pytest.raises(InvalidArgument, match="4 bytes but dtype float32 and shape \\[2, 3\\] need 24"):
        decode_pull_reply(b"\x0a" + bytes([len(short)]) + short)
    with pytest.raises(InvalidArgument, match="dtype 'complex' is unknown"):
        decode_push_request(encode_push_request("t", np.array([1]), values[:1], 0, 0).replace(b"float32",
                                                                                                b"complex"))


def test_pull_reply_buffer_fills_the_same_bytes_protobuf_would_send():
    from seraphim.proto.codec import pull_reply_buffer, writable_bytes

    rows = np.arange(24, dtype=np.float32).reshape(6, 4)
    data, view = pull_reply_buffer("float32", rows.shape)
    view[...] = rows
    expected = ps_pb2.PullReply(values=encode_array(rows)).SerializeToString()
    assert isinstance(data, bytes) and data == expected
    with pytest.raises(ValueError, match="size >= 2"):
        writable_bytes(1)


_STEPS_SCRIPT = """
import resource
import torch
from seraphim.proto.resources import apply_worker_heap_policy
apply_worker_heap_policy()
def step():
    x = torch.ones(1 << 24)                      # a 64 MiB activation and what a step derives from it
    y = torch.softmax(x.view(256, -1), dim=1)
    return float((x + y.view(-1)).sum())
for _ in range(4):                               # a kept heap settles within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(glibc_version() is None, reason="keep_freed_memory tunes glibc's malloc only")
def test_a_worker_that_keeps_freed_memory_reuses_it_instead_of_faulting_in_fresh_pages():
    def faults(keep: str) -> int:
        done = subprocess.run([sys.executable, "-c", _STEPS_SCRIPT], capture_output=True, text=True, timeout=120,
                              check=True, env={**os.environ, KEEP_FREED_MEMORY_ENV: keep})
        return int(done.stdout.split()[-1])

    default, kept = faults("0"), faults("1")
    assert default > 6 * (3 << 26) // 4096 // 2  # glibc maps the big blocks afresh each step: >= 1 fault per page
    # the kept heap faults nothing in most runs; in some, one or two of its 64 MiB blocks come back once (16k pages)
    assert kept < default // 4


def test_a_heap_policy_other_than_0_or_1_is_refused(monkeypatch):
    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "yes")
    with pytest.raises(InvalidArgument, match="SERAPHIM_KEEP_FREED_MEMORY='yes': use 1"):
        apply_worker_heap_policy()
