"""Versioned tables on real PS processes: gradients summed over workers and applied once per version, pulls that
wait for a version, dropped repeats and stale pushes, versions that survive a restart."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
import torch

from seraphim.proto.errors import DeadlineExceeded, InvalidArgument
from seraphim.ps.versions import VersionedRows
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.worker.client import PSClient
from seraphim.worker.specs import SGD, AdamW, Zeros

ROWS, DIM = 12, 5


@pytest.fixture(scope="module")
def shared_ps(tmp_path_factory):
    """Two PS shards shared by this module's tests; each test uses tables of its own."""
    with LocalCluster(tmp_path_factory.mktemp("versions"), PSProcessSpec(num_ps=2, ram_mb=1, page_kb=4)) as cluster:
        yield cluster


def _table(ps: PSClient, sum_workers: int = 2, name: str = "pages"):
    return ps.dense_table(name, (ROWS, DIM), init=Zeros(), optimizer=AdamW(lr=0.05, weight_decay=0.1),
                          sum_workers=sum_workers)


@contextmanager
def _two_workers(cluster: LocalCluster, name: str, rng: np.random.Generator) -> Iterator[tuple]:
    """Workers 0 and 1 on a versioned table of their own whose rows start at normals drawn from `rng`: (worker 0's
    client, worker 0's and worker 1's table, the starting rows)."""
    start = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    with PSClient(cluster.addresses, worker_id=0, num_workers=2) as w0, \
            PSClient(cluster.addresses, worker_id=1, num_workers=2) as w1:
        t0, t1 = _table(w0, name=name), _table(w1, name=name)
        t0.push(np.arange(ROWS), start, mode="assign")
        yield w0, t0, t1, start


def test_two_workers_gradients_are_summed_and_applied_once_per_version(shared_ps):
    rng = np.random.default_rng(0)
    keys = np.arange(ROWS)
    with _two_workers(shared_ps, "summed", rng) as (w0, t0, t1, start):
        ref = torch.nn.Parameter(torch.from_numpy(start.copy()))
        opt = torch.optim.AdamW([ref], lr=0.05, weight_decay=0.1)
        for version in range(3):
            g0, g1 = (rng.normal(size=(ROWS, DIM)).astype(np.float32) for _ in range(2))
            t0.push(keys, g0, version=version, lr_scale=0.5)
            rows, versions = t0.pull_versioned(keys)
            assert (versions == version).all()  # one worker's half is not an update
            t1.push(keys, g1, version=version, lr_scale=0.5)
            for group in opt.param_groups:
                group["lr"] = 0.05 * 0.5
            ref.grad = torch.from_numpy(g0 + g1)
            opt.step()
            rows, versions = t1.pull_versioned(keys, min_version=version + 1)
            assert (versions == version + 1).all()
            np.testing.assert_allclose(rows, ref.detach().numpy(), rtol=1e-6, atol=1e-7)
        t0.push(keys, np.ones((ROWS, DIM), np.float32), version=1)  # a version these rows passed: dropped
        t1.push(keys[:4], np.ones((4, DIM), np.float32), version=3)
        t1.push(keys[:4], np.ones((4, DIM), np.float32), version=3)  # the same worker again: dropped
        assert (t0.pull_versioned(keys)[1] == 3).all()
        t0.push(keys[:4], np.zeros((4, DIM), np.float32), version=3)
        rows, versions = t0.pull_versioned(keys)
        assert versions.tolist() == [4] * 4 + [3] * 8
        np.testing.assert_allclose(rows[4:], ref.detach().numpy()[4:], rtol=1e-6, atol=1e-7)


def test_an_absent_worker_counts_as_a_zero_gradient_without_sending_values(shared_ps):
    """Routed experts: worker 1's tokens chose none of rows 0..5, so it abstains from them (keys only); they update
    from worker 0's gradient alone, as AdamW updates a stacked expert weight whose unchosen slices have zero grad."""
    rng = np.random.default_rng(1)
    keys = np.arange(ROWS)
    with _two_workers(shared_ps, "absent", rng) as (w0, t0, t1, start):
        ref = torch.nn.Parameter(torch.from_numpy(start.copy()))
        opt = torch.optim.AdamW([ref], lr=0.05, weight_decay=0.1)
        for version in range(3):
            g0, g1 = (rng.normal(size=(ROWS, DIM)).astype(np.float32) for _ in range(2))
            g1[:6] = 0.0
            t0.push(keys, g0, version=version)
            t1.abstain_async(keys[:6], version).result()
            assert (t0.pull_versioned(keys[:6], min_version=version + 1, wait_s=5)[1] == version + 1).all()
            assert (t0.pull_versioned(keys[6:])[1] == version).all()  # still waiting for worker 1's gradient
            t1.push(keys[6:], g1[6:], version=version)
            ref.grad = torch.from_numpy(g0 + g1)
            opt.step()
            rows, versions = t1.pull_versioned(keys, min_version=version + 1, wait_s=5)
            np.testing.assert_allclose(rows, ref.detach().numpy(), rtol=1e-6, atol=1e-7)
            # the global gradient's norm, summed over both shards, for the noise scale
            assert w0.applied_grad_sq(["absent"], version) == pytest.approx(float(np.sum((g0 + g1) ** 2)), rel=1e-5)
        assert w0.applied_grad_sq(["absent"], 3) is None
        dense = w0.dense_table("not_versioned", (ROWS, DIM), optimizer=AdamW(lr=0.05))
        with pytest.raises(InvalidArgument, match="versioned tables only"):
            dense.abstain_async(keys, 0).result()


def test_an_abstention_after_a_push_keeps_the_pushs_learning_rate(shared_ps):
    """Worker 0's push carries the step's learning-rate scale (a warm-up); worker 1's abstention, which carries
    none, lands after it and must not reset it."""
    rng = np.random.default_rng(2)
    keys = np.arange(ROWS)
    with _two_workers(shared_ps, "late_abstention", rng) as (w0, t0, t1, start):
        g = rng.normal(size=(ROWS, DIM)).astype(np.float32)
        t0.push(keys, g, version=0, lr_scale=0.5)
        t1.abstain_async(keys, 0).result()
        rows, versions = t1.pull_versioned(keys, min_version=1, wait_s=5)
        ref = torch.nn.Parameter(torch.from_numpy(start.copy()))
        ref.grad = torch.from_numpy(g)
        torch.optim.AdamW([ref], lr=0.05 * 0.5, weight_decay=0.1).step()
        np.testing.assert_allclose(rows, ref.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_a_pull_waits_for_the_version_it_needs_and_a_late_one_names_the_missing_worker(shared_ps):
    keys = np.arange(ROWS)
    with PSClient(shared_ps.addresses, worker_id=0, num_workers=2) as w0, \
            PSClient(shared_ps.addresses, worker_id=1, num_workers=2) as w1:
        t0, t1 = _table(w0, name="waited"), _table(w1, name="waited")
        got: dict = {}
        reader = threading.Thread(target=lambda: got.update(v=t1.pull_versioned(keys, min_version=1)[1]))
        reader.start()
        t0.push(keys, np.ones((ROWS, DIM), np.float32), version=0)
        time.sleep(0.3)
        assert reader.is_alive()  # worker 1's gradient is still missing
        t1.push(keys, np.ones((ROWS, DIM), np.float32), version=0)
        reader.join(timeout=10)
        assert (got["v"] == 1).all()
        t0.push(keys[:3], np.ones((3, DIM), np.float32), version=1)
        with pytest.raises(DeadlineExceeded, match=r"reach version 2; row 0 \(local\) is at version 1 and lacks "
                                                   r"the gradients of workers \[1\]"):
            t0.pull(keys[:3], min_version=2, wait_s=0.5)


def test_one_worker_updates_at_once_and_versions_survive_a_ps_restart(cluster_factory):
    cluster = cluster_factory(num_ps=1, num_workers=1, ram_mb=1, page_kb=4, snapshot_every=1)
    keys = np.arange(ROWS)
    with PSClient(cluster.addresses) as ps:
        table = _table(ps, sum_workers=1)
        for version in range(2):
            table.push(keys, np.ones((ROWS, DIM), np.float32), version=version)
            ps.clock()
        before = table.pull_versioned(keys)
    cluster.kill_ps(0)
    cluster.start_ps(0)
    with PSClient(cluster.addresses) as ps:
        after = _table(ps, sum_workers=1).pull_versioned(keys, min_version=2, wait_s=5)
    np.testing.assert_array_equal(after[0], before[0])
    assert (after[1] == 2).all()


def test_versioned_tables_need_a_dense_step_counting_optimizer(shared_ps):
    with PSClient(shared_ps.addresses) as ps:
        with pytest.raises(InvalidArgument, match="must be dense with an optimizer that counts steps"):
            ps.dense_table("sgd_pages", (4, 4), optimizer=SGD(lr=0.1), sum_workers=2)
        plain = ps.dense_table("plain", (4, 4), optimizer=AdamW())
        with pytest.raises(InvalidArgument, match="not versioned"):
            plain.pull([0], min_version=1)
        pages = _table(ps)
        with PSClient(shared_ps.addresses, worker_id=2, num_workers=3) as third:
            with pytest.raises(InvalidArgument, match="summed over workers 0..1"):
                _table(third).push([0], np.ones((1, DIM), np.float32))
        assert pages.pull_versioned([0])[1].tolist() == [0]


@pytest.mark.parametrize("ordered", [False, True])
def test_ordered_sums_do_not_depend_on_the_order_pushes_arrive_in(ordered):
    """Three workers' float32 gradients: arrival order changes an unordered sum's bits; deterministic mode's
    ordered sum is the same for every order."""
    grads = {0: np.float32([[1e8]]), 1: np.float32([[1.0]]), 2: np.float32([[-1e8]])}
    applied = set()
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        rows = VersionedRows("t", np.zeros(1, np.int64), dim=1, sum_workers=3, ordered=ordered)
        sums = []
        for worker in order:
            rows.add(np.array([0]), grads[worker], version=0, worker=worker, lr_factor=1.0,
                     apply=lambda r, s, f: sums.append(s.copy()))
        assert len(sums) == 1 and rows.versions[0] == 1
        applied.add(float(sums[0][0, 0]))
    assert len(applied) == (1 if ordered else 2)
