"""Shared fixtures: real PS processes on loopback, stopped after each test even when it fails."""

from __future__ import annotations

import pytest

import os
import signal
import sqlite3

from seraphim.scheduler.client import SchedulerClient
from seraphim.scheduler.embedded import SchedulerProcess
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec


@pytest.fixture
def cluster_factory(tmp_path):
    """Start LocalClusters on demand; every one started is stopped at teardown."""
    started: list[LocalCluster] = []

    def make(name: str = "cluster", **spec) -> LocalCluster:
        cluster = LocalCluster(tmp_path / name, PSProcessSpec(**spec))
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def two_ps(cluster_factory):
    return cluster_factory(num_ps=2, num_workers=1, ram_mb=8, page_kb=64)


class SchedulerUnderTest(SchedulerProcess):
    """A real scheduler process for tests: a client, SIGKILL, and the pids of every job process it launched."""

    def client(self, **kw) -> SchedulerClient:
        return SchedulerClient(self.address, token=self.token, **kw)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def job_pids(self) -> list[int]:
        db = sqlite3.connect(self.data_dir / "scheduler.db")
        try:
            return [pid for (pid,) in db.execute("SELECT pid FROM nodes WHERE pid > 0")]
        finally:
            db.close()


@pytest.fixture
def scheduler_factory(tmp_path):
    """Start scheduler processes; at teardown kill them and every job process they launched."""
    started: list[SchedulerUnderTest] = []

    def make(name: str = "sched", port: int = 0, heartbeat_timeout: float = 3.0, extra=()) -> SchedulerUnderTest:
        sched = SchedulerUnderTest(tmp_path / name, port=port, heartbeat_timeout_s=heartbeat_timeout, extra_args=extra)
        started.append(sched)
        return sched

    yield make
    for sched in started:
        sched.kill()
    for sched in started:
        for pid in sched.job_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
