"""The PS over real gRPC against real PS processes: tables, optimizers, PSFs, clocks, recovery, bad input."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch

from seraphim.proto import common_pb2, ps_pb2, ps_pb2_grpc
from seraphim.proto.partition import dense_block, sparse_shard_of
from seraphim.proto.codec import encode_array, encode_keys
from seraphim.proto.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from seraphim.proto.rpc import make_channel, split_message
from seraphim.worker import SGD, Adam, Constant, Normal, PSClient, Zeros
from seraphim.worker.client import _plan


def test_sparse_rows_appear_on_first_touch_and_sgd_runs_on_push(two_ps):
    with PSClient(two_ps.addresses) as ps:
        emb = ps.sparse_table("emb", dim=8, init=Normal(0.0, 0.5), optimizer=SGD(lr=0.1), seed=7)
        keys = np.array([3, 10**12, -5, 3, 77], dtype=np.int64)
        first = emb.pull(keys)
        assert first.shape == (5, 8) and np.abs(first).sum() > 0
        np.testing.assert_array_equal(first[0], first[3])  # repeats get the same row
        np.testing.assert_array_equal(emb.pull(keys), first)  # made once, then stored
        grads = np.ones((5, 8), np.float32)
        emb.push(keys, grads)  # key 3 appears twice: its gradients are summed before the push
        after = emb.pull(keys)
        np.testing.assert_allclose(after[0], first[0] - 0.1 * 2, rtol=1e-6)
        np.testing.assert_allclose(after[1], first[1] - 0.1, rtol=1e-6)
        np.testing.assert_array_equal(emb.pull([3, 424242], create=False), np.stack([after[0], np.zeros(8)]))
        total = sum(t.rows for s in ps.stats() for t in s.tables if t.name == "emb")
        assert total == 4  # the read-only pull created no row


def test_dense_table_adam_matches_torch_and_lr_scales_apply(two_ps):
    rows, cols = 37, 5
    init = np.random.default_rng(0).normal(size=(rows, cols)).astype(np.float32)
    with PSClient(two_ps.addresses) as ps:
        w = ps.dense_table("w", (rows, cols), init=Zeros(), optimizer=Adam(lr=0.01), lr_scales=[(30, 37, 0.0)])
        w.push_all(init, mode="assign")
        ref = torch.nn.Parameter(torch.from_numpy(init.copy()))
        opt = torch.optim.Adam([ref], lr=0.01)
        rng = np.random.default_rng(1)
        for _ in range(4):
            g = rng.normal(size=(rows, cols)).astype(np.float32)
            w.push_all(g)
            ref.grad = torch.from_numpy(g)
            opt.step()
        got = w.pull_all()
        np.testing.assert_allclose(got[:30], ref.detach().numpy()[:30], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[30:], init[30:])  # scale 0: frozen rows


def test_psf_norm_sum_and_topk_merge_over_shards(two_ps):
    data = np.random.default_rng(2).normal(size=(101, 4)).astype(np.float32)
    with PSClient(two_ps.addresses) as ps:
        t = ps.dense_table("psf", (101, 4), init=Zeros())
        t.push_all(data, mode="assign")
        total, per_column = t.call("norm")
        assert float(total) == pytest.approx(np.linalg.norm(data), rel=1e-5)
        np.testing.assert_allclose(per_column, np.linalg.norm(data, axis=0), rtol=1e-5)
        total, per_column = t.call("sum")
        np.testing.assert_allclose(per_column, data.sum(axis=0, dtype=np.float64), rtol=1e-5)
        keys, scores = t.call("topk", k=3, by="norm")
        expected = np.argsort(-np.linalg.norm(data, axis=1))[:3]
        np.testing.assert_array_equal(keys, expected)
        t.call("fill", value=2.0)
        np.testing.assert_array_equal(t.pull_all(), np.full((101, 4), 2.0, np.float32))
        with pytest.raises(NotFound, match="unknown PSF 'nope'"):
            t.call("nope")


def test_bsp_clock_waits_for_the_slowest_worker(cluster_factory):
    cluster = cluster_factory(num_ps=2, num_workers=2, staleness=0, ram_mb=4, page_kb=64)
    fast = PSClient(cluster.addresses, worker_id=0, num_workers=2)
    slow = PSClient(cluster.addresses, worker_id=1, num_workers=2)
    try:
        done = threading.Event()
        threading.Thread(target=lambda: (fast.clock(), done.set()), daemon=True).start()
        assert not done.wait(0.5)  # worker 0 finished clock 1; worker 1 has not: BSP blocks
        slow.clock()
        assert done.wait(10)
    finally:
        fast.close()
        slow.close()


def test_ssp_lets_a_worker_run_ahead_by_the_staleness(cluster_factory):
    cluster = cluster_factory(num_ps=1, num_workers=2, staleness=2, ram_mb=4, page_kb=64)
    with PSClient(cluster.addresses, worker_id=0, num_workers=2) as fast:
        fast.clock()
        fast.clock()  # two ahead of worker 1: allowed with staleness 2
        done = threading.Event()
        threading.Thread(target=lambda: (fast.clock(), done.set()), daemon=True).start()
        assert not done.wait(0.5)  # a third would be too far ahead
        with PSClient(cluster.addresses, worker_id=1, num_workers=2) as slow:
            slow.clock()
            assert done.wait(10)


def test_a_deterministic_ps_applies_a_clocks_pushes_in_worker_order_at_the_barrier(cluster_factory):
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(2)]
    keys = np.arange(6, dtype=np.int64)
    plain = cluster_factory("plain", num_ps=2, num_workers=1, ram_mb=4, page_kb=64)
    with PSClient(plain.addresses) as ps:  # Adam's steps do not commute: the order is visible in the bits
        in_order, reversed_order = (ps.sparse_table(n, dim=4, init=Constant(0.5), optimizer=Adam(lr=0.1))
                                    for n in ("in-order", "reversed"))
        for table, order in ((in_order, (0, 1)), (reversed_order, (1, 0))):
            table.pull(keys)
            for w in order:
                table.push(keys, grads[w])
        expected, other = in_order.pull(keys), reversed_order.pull(keys)
        in_order.push(keys, grads[1])
        expected_after_redo = in_order.pull(keys)
    assert not np.array_equal(expected, other)

    cluster = cluster_factory("deterministic", num_ps=2, num_workers=2, ram_mb=4, page_kb=64,
                              extra_args=("--deterministic",))
    clients = [PSClient(cluster.addresses, worker_id=w, num_workers=2) for w in (0, 1)]

    def open_table(client: PSClient):
        return client.sparse_table("emb", dim=4, init=Constant(0.5), optimizer=Adam(lr=0.1))

    def barrier() -> None:
        ticked = threading.Thread(target=clients[1].clock, daemon=True)
        ticked.start()
        clients[0].clock()
        ticked.join(10)

    try:
        assert all(h.deterministic for h in clients[0].health())
        tables = [open_table(c) for c in clients]
        initial = tables[0].pull(keys)
        tables[1].push(keys, grads[1])  # worker 1's push arrives first
        tables[0].push(keys, grads[0])
        assert np.array_equal(tables[0].pull(keys), initial)  # held until the clock completes
        ticked = threading.Thread(target=clients[1].clock, daemon=True)
        ticked.start()
        assert np.array_equal(tables[0].pull(keys), initial)  # one worker's clock is not the barrier
        clients[0].clock()
        ticked.join(10)
        assert np.array_equal(tables[1].pull(keys), expected)  # worker 0's update first, then worker 1's

        # worker 1 restarts in clock 2 after pushing once: the same push number replaces it, and a redo of clock 1
        # (a shard that had completed it) is dropped
        tables[1].push(keys, grads[0])
        with PSClient(cluster.addresses, worker_id=1, num_workers=2) as restarted:
            open_table(restarted).push(keys, grads[1])  # the fresh client says clock 1: applied already
            restarted.resume()
            open_table(restarted).push(keys, grads[1])  # clock 2, push 1: replaces the first attempt's
        barrier()
        assert np.array_equal(tables[0].pull(keys), expected_after_redo)
        with pytest.raises(FailedPrecondition, match="no optimizer"):  # checked on arrival, not at the barrier
            clients[0].dense_table("plain", (2, 4)).push([0], np.ones((1, 4), np.float32))
    finally:
        for c in clients:
            c.close()


def test_a_worker_stopped_between_its_clock_calls_resumes_after_that_clock(cluster_factory):
    """Worker 1 dies after its Clock(1) reached shard 0 only: shard 0 applied clock 1, shard 1 still holds it. The
    restarted worker resumes at clock 1 and ticks shard 1, so both shards end at the same model."""
    rng = np.random.default_rng(4)
    grads = [rng.normal(size=(40, 4)).astype(np.float32) for _ in range(2)]
    keys = np.arange(40, dtype=np.int64)
    assert set(sparse_shard_of(keys, 2).tolist()) == {0, 1}
    cluster = cluster_factory("stopped", num_ps=2, num_workers=2, ram_mb=4, page_kb=64, extra_args=("--deterministic",))
    clients = [PSClient(cluster.addresses, worker_id=w, num_workers=2, clock_timeout_s=15) for w in (0, 1)]
    try:
        tables = [c.sparse_table("emb", dim=4, init=Constant(0.5), optimizer=Adam(lr=0.1)) for c in clients]
        for w in (0, 1):
            tables[w].push(keys, grads[w])
        on_shard_0 = threading.Thread(target=clients[1]._invoke, daemon=True, args=(
            0, "Clock", ps_pb2.ClockRequest(worker=1, clock=1, timeout_s=30), ps_pb2.ClockReply))
        on_shard_0.start()
        worker_0 = threading.Thread(target=clients[0].clock, daemon=True)
        worker_0.start()
        on_shard_0.join(10)
        assert [c.clocks[1] for c in clients[0]._all("GetClock", lambda s: ps_pb2.GetClockRequest(),
                                                      ps_pb2.ClockReply)] == [1, 0]
        clients[1].close()
        with PSClient(cluster.addresses, worker_id=1, num_workers=2) as restarted:
            assert restarted.resume() == 1
        worker_0.join(10)
        assert not worker_0.is_alive()
        after = tables[0].pull(keys)
    finally:
        clients[0].close()
    plain = cluster_factory("plain", num_ps=2, num_workers=1, ram_mb=4, page_kb=64)
    with PSClient(plain.addresses) as ps:
        table = ps.sparse_table("emb", dim=4, init=Constant(0.5), optimizer=Adam(lr=0.1))
        for w in (0, 1):
            table.push(keys, grads[w])
        np.testing.assert_array_equal(after, table.pull(keys))


def test_kill_9_recovers_the_last_snapshot(cluster_factory):
    cluster = cluster_factory(num_ps=2, num_workers=1, snapshot_every=1, ram_mb=4, page_kb=64)
    keys = np.arange(0, 5000, 7, dtype=np.int64)
    with PSClient(cluster.addresses, retry_s=60) as ps:
        emb = ps.sparse_table("rec", dim=16, init=Constant(1.0), optimizer=SGD(lr=1.0))
        emb.push(keys, np.full((len(keys), 16), 0.5, np.float32))
        ps.clock()  # clock boundary 1: a snapshot on every shard
        at_snapshot = emb.pull(keys)
        emb.push(keys, np.full((len(keys), 16), 0.25, np.float32))  # after the snapshot: lost by the crash
        emb.pull(np.arange(10**6, 10**6 + 3000, dtype=np.int64))  # new keys after the snapshot
        for shard in range(2):
            cluster.kill_ps(shard)
            cluster.start_ps(shard)
        assert [h.restored_clock for h in ps.health()] == [1, 1]
        np.testing.assert_array_equal(emb.pull(keys), at_snapshot)
        assert ps.resume() == 1


def test_a_deterministic_strict_ps_killed_mid_clock_applies_every_acknowledged_push(cluster_factory):
    rng = np.random.default_rng(5)
    grads = [rng.normal(size=(300, 8)).astype(np.float32) for _ in range(2)]
    keys = np.arange(0, 3000, 10, dtype=np.int64)

    def run(cluster, crash: bool) -> np.ndarray:
        clients = [PSClient(cluster.addresses, worker_id=w, num_workers=2, retry_s=60) for w in (0, 1)]
        try:
            tables = [c.sparse_table("emb", dim=8, init=Normal(0.0, 0.1), optimizer=Adam(lr=0.05)) for c in clients]
            levels = [c.dense_table("levels", (2, 8)) for c in clients]  # written (ASSIGN) as propagation does
            for step in range(2):
                for w in (1, 0):
                    tables[w].pull(keys)
                    tables[w].push(keys, grads[w] * (step + 1))
                    levels[w].push([w], grads[w][:1] * (step + 1), mode="assign")
                ticked = threading.Thread(target=clients[0].clock, daemon=True)
                ticked.start()
                if crash and step == 1:  # both pushes acknowledged, one tick in: kill -9 every shard
                    time.sleep(0.3)
                    for shard in range(2):
                        cluster.kill_ps(shard)
                        cluster.start_ps(shard)
                    assert [h.restored_clock for h in clients[1].health()] == [1, 1]
                clients[1].clock()
                ticked.join(60)
            return np.concatenate([tables[0].pull(keys), levels[1].pull_all()])
        finally:
            for c in clients:
                c.close()

    spec = dict(num_ps=2, num_workers=2, ram_mb=4, page_kb=64, durability="strict", extra_args=("--deterministic",))
    expected = run(cluster_factory("quiet", **spec), crash=False)
    np.testing.assert_array_equal(run(cluster_factory("crashed", **spec), crash=True), expected)


def test_bad_input_gets_precise_status_and_the_server_keeps_serving(two_ps):
    with PSClient(two_ps.addresses) as ps:
        t = ps.dense_table("d", (10, 3), init=Constant(5.0))
        before = t.pull_all()
        channel = make_channel(two_ps.addresses[0])
        stub = ps_pb2_grpc.ParameterServerStub(channel)

        def status(call, request):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=10)
            return info.value.code(), info.value.details()

        code, msg = status(stub.Pull, ps_pb2.PullRequest(table="missing", keys=encode_keys(np.array([1]))))
        assert code == grpc.StatusCode.NOT_FOUND and "table 'missing' does not exist" in msg
        code, msg = status(stub.Pull, ps_pb2.PullRequest(table="d", keys=encode_keys(np.array([7]))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds rows [0, 5)" in msg
        code, msg = status(stub.Pull, ps_pb2.PullRequest(table="d", keys=encode_keys(np.array([99]))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the table" in msg
        code, msg = status(stub.Pull, ps_pb2.PullRequest(table="d", keys=b"abc"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "multiple of 8" in msg
        wrong_shape = ps_pb2.PushRequest(table="d", keys=encode_keys(np.array([1])), mode=ps_pb2.ASSIGN,
                                         values=encode_array(np.ones((1, 4), np.float32)))
        code, msg = status(stub.Push, wrong_shape)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected [1, 3]" in msg
        wrong_dtype = ps_pb2.PushRequest(table="d", keys=encode_keys(np.array([1])), mode=ps_pb2.ASSIGN,
                                         values=encode_array(np.ones((1, 3), np.int64)))
        code, msg = status(stub.Push, wrong_dtype)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "int64" in msg
        no_opt = ps_pb2.PushRequest(table="d", keys=encode_keys(np.array([1])), mode=ps_pb2.GRADIENT,
                                    values=encode_array(np.ones((1, 3), np.float32)))
        code, msg = status(stub.Push, no_opt)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "has no optimizer" in msg
        chunks = list(split_message("Push", wrong_shape.SerializeToString(), chunk_bytes=10))
        code, msg = status(lambda r, timeout: list(stub.Chunked(iter(r), timeout=timeout)), chunks[:-1])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in msg
        corrupt = [common_pb2.Chunk(method=c.method, index=c.index, total=c.total, size=c.size, crc32=c.crc32 ^ 1,
                                    data=c.data) for c in chunks]
        code, msg = status(lambda r, timeout: list(stub.Chunked(iter(r), timeout=timeout)), corrupt)
        assert code == grpc.StatusCode.DATA_LOSS and "CRC-32" in msg
        channel.close()

        with pytest.raises(FailedPrecondition, match="has no optimizer"):
            t.push([1], np.ones((1, 3), np.float32))
        with pytest.raises(InvalidArgument, match="outside dense table 'd' with 10 rows"):
            t.pull([10])
        with pytest.raises(AlreadyExists, match="exists with a different spec"):
            ps.dense_table("d", (11, 3))
        np.testing.assert_array_equal(t.pull_all(), before)  # nothing stored was lost
        assert all(h.status == "SERVING" for h in ps.health())


def test_messages_over_the_limit_are_chunked(cluster_factory):
    cluster = cluster_factory(num_ps=1, ram_mb=16, page_kb=1024, extra_args=("--max-message-mb", "1"))
    big = np.random.default_rng(3).normal(size=(4, 200_000)).astype(np.float32)  # 3.2 MB, one 800 KB row each
    with PSClient(cluster.addresses, max_message_bytes=2**20) as ps:
        t = ps.dense_table("big", (4, 200_000))
        t.push_all(big, mode="assign")
        np.testing.assert_array_equal(t.pull_all(), big)


def test_token_is_required(cluster_factory):
    cluster = cluster_factory(num_ps=1, token="s3cret", ram_mb=4, page_kb=64)
    with PSClient(cluster.addresses, retry_s=1) as anonymous:
        with pytest.raises(Unauthenticated, match="missing or wrong cluster token"):
            anonymous.health()
    with PSClient(cluster.addresses, token="wrong", retry_s=1) as wrong:
        with pytest.raises(Unauthenticated):
            wrong.health()
    with PSClient(cluster.addresses, token="s3cret") as ok:
        assert ok.health()[0].status == "SERVING"


def test_a_table_larger_than_the_ram_budget_spills_and_stays_correct(cluster_factory):
    cluster = cluster_factory(num_ps=2, ram_mb=1, page_kb=64)  # 1 MiB per PS; the table is 12 MB
    rng = np.random.default_rng(4)
    with PSClient(cluster.addresses) as ps:
        t = ps.sparse_table("huge", dim=64, init=Zeros(), optimizer=SGD(lr=1.0))
        keys = np.arange(48_000, dtype=np.int64) * 1_000_003
        expected = np.zeros((len(keys), 64), np.float32)
        for _ in range(3):
            idx = rng.choice(len(keys), 8000, replace=False)
            g = rng.normal(size=(8000, 64)).astype(np.float32)
            t.push(keys[idx], g)
            expected[idx] -= g
        np.testing.assert_allclose(t.pull(keys), expected, rtol=1e-5, atol=1e-6)
        stats = ps.stats()
        assert all(s.ram_used <= s.ram_budget for s in stats)
        assert all(s.peak_rss_bytes > s.ram_used for s in stats)
        assert sum(tab.bytes_disk for s in stats for tab in s.tables) > 4 * sum(s.ram_budget for s in stats)


def test_a_clean_stop_keeps_every_update(cluster_factory):
    import signal

    cluster = cluster_factory(num_ps=1, snapshot_every=0, ram_mb=4, page_kb=64)
    keys = np.arange(100, dtype=np.int64)
    with PSClient(cluster.addresses, retry_s=60) as ps:
        t = ps.sparse_table("kept", dim=4, init=Zeros(), optimizer=SGD(lr=1.0))
        t.push(keys, np.ones((100, 4), np.float32))  # no clock, no periodic snapshot: only the stop saves it
        cluster.kill_ps(0, signal.SIGTERM)
        cluster.start_ps(0)
        np.testing.assert_array_equal(t.pull(keys), -np.ones((100, 4), np.float32))


def test_client_routing_kernel_keeps_the_partition_contract():
    rng = np.random.default_rng(5)
    keys = np.concatenate([rng.integers(-2**63, 2**63 - 1, 3000, dtype=np.int64), rng.integers(0, 50, 2000)])
    for n in (1, 2, 3):
        grouped, bounds, row_of = _plan(keys.view(np.uint64), n, np.empty(0, np.int64))
        grouped = grouped.view(np.int64)
        np.testing.assert_array_equal(grouped[row_of], keys)  # every key finds its row
        assert len(grouped) == len(np.unique(keys)) and bounds[-1] == len(grouped)
        for s in range(n):
            assert (sparse_shard_of(grouped[bounds[s]:bounds[s + 1]], n) == s).all()
    rows = 1003
    starts = np.array([dense_block(rows, 3, s)[0] for s in range(3)], dtype=np.int64)
    dense = rng.integers(0, rows, 4000)
    grouped, bounds, row_of = _plan(dense.view(np.uint64), 3, starts)
    grouped = grouped.view(np.int64)
    np.testing.assert_array_equal(grouped[row_of], dense)
    for s in range(3):
        lo, hi = dense_block(rows, 3, s)
        assert ((grouped[bounds[s]:bounds[s + 1]] >= lo) & (grouped[bounds[s]:bounds[s + 1]] < hi)).all()


def test_pull_async_prefetches_and_repeated_keys_merge_as_each_mode_says(two_ps):
    with PSClient(two_ps.addresses) as ps:
        t = ps.sparse_table("modes", dim=3, init=Constant(1.0), optimizer=SGD(lr=1.0))
        keys = np.array([[7, 8, 7], [9, 7, 10**15]], dtype=np.int64)
        ahead = t.pull_async(keys)
        rows = t.pull(keys)
        assert rows.shape == (2, 3, 3)
        np.testing.assert_array_equal(ahead.result(), rows)
        np.testing.assert_array_equal(t.pull_async([424242], create=False).result(), np.zeros((1, 3)))
        values = np.arange(18, dtype=np.float32).reshape(6, 3)
        t.push(keys, values, mode="assign")  # key 7 three times: the first occurrence wins
        np.testing.assert_array_equal(t.pull([7, 8, 9]), values[[0, 1, 3]])
        t.push(keys, np.ones((6, 3), np.float32), mode="add")
        np.testing.assert_array_equal(t.pull([7, 8]), values[[0, 1]] + [[3], [1]])
        t.push_async(keys, np.ones((6, 3), np.float32)).result()  # gradient: SGD lr 1 on the summed rows
        np.testing.assert_array_equal(t.pull([7, 8]), values[[0, 1]] + [[3], [1]] - [[3], [1]])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_tables_pull_float32_and_take_merged_gradients(two_ps, dtype):
    with PSClient(two_ps.addresses) as ps:
        t = ps.sparse_table(f"half-{dtype}", dim=4, dtype=dtype, init=Constant(1.0), optimizer=SGD(lr=1.0))
        keys = np.array([3, 5, 3, 11], dtype=np.int64)
        np.testing.assert_array_equal(t.pull(keys), np.ones((4, 4), np.float32))
        t.push(keys, np.full((4, 4), 0.25, np.float32))  # key 3 twice: 0.5 in all, exact in either dtype
        got = t.pull(keys)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.array([[0.5], [0.75], [0.5], [0.75]], np.float32).repeat(4, 1))


def test_pull_replies_are_protobufs_own_bytes_and_push_checks_repeats(two_ps):
    with PSClient(two_ps.addresses) as ps:
        t = ps.sparse_table("wire", dim=5, init=Normal(0.0, 1.0))
        keys = np.arange(40, dtype=np.int64)
        rows = t.pull(keys)
        channel = make_channel(two_ps.addresses[0])
        mine = keys[sparse_shard_of(keys, 2) == 0]
        raw_pull = channel.unary_unary("/seraphim.ps.ParameterServer/Pull")  # no deserializer: the wire bytes
        raw = raw_pull(ps_pb2.PullRequest(table="wire", keys=encode_keys(mine)).SerializeToString(), timeout=10)
        reply = ps_pb2.PullReply.FromString(raw)
        assert reply.SerializeToString() == raw
        np.testing.assert_array_equal(np.frombuffer(reply.values.data, np.float32).reshape(-1, 5), rows[mine])
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        repeated = ps_pb2.PushRequest(table="wire", keys=encode_keys(mine[[0, 1, 0]]), mode=ps_pb2.ASSIGN,
                                      values=encode_array(np.zeros((3, 5), np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            stub.Push(repeated, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"key {mine[0]} repeats" in info.value.details()
        channel.close()
        np.testing.assert_array_equal(t.pull(keys), rows)
