"""Shared fixtures: real PS processes on loopback, stopped after each test even when it fails."""

from __future__ import annotations

import pytest

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


class SchedulerProcess:
    """A real `seraphim scheduler start` process on loopback, for tests."""

    def __init__(self, data_dir, port: int = 0, heartbeat_timeout: float = 3.0, extra=()) -> None:
        import subprocess
        import sys
        import time

        self.data_dir = data_dir
        port_file = data_dir / "port"
        data_dir.mkdir(parents=True, exist_ok=True)
        port_file.unlink(missing_ok=True)
        self.log = open(data_dir / "scheduler.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seraphim.scheduler.cli", "scheduler", "start", "--data-dir", str(data_dir),
             "--port", str(port), "--port-file", str(port_file), "--heartbeat-timeout", str(heartbeat_timeout),
             *extra], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert self.proc.poll() is None, (data_dir / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.address = f"127.0.0.1:{self.port}"
        self.token_file = data_dir / "token"
        self.token = self.token_file.read_text().strip()

    def client(self, **kw):
        from seraphim.scheduler.client import SchedulerClient

        return SchedulerClient(self.address, token=self.token, **kw)

    def kill(self, sig=None) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()

    def job_pids(self) -> list[int]:
        """Every process the scheduler has launched for any job, from its store."""
        import sqlite3

        db = sqlite3.connect(self.data_dir / "scheduler.db")
        try:
            return [pid for (pid,) in db.execute("SELECT pid FROM nodes WHERE pid > 0")]
        finally:
            db.close()


@pytest.fixture
def scheduler_factory(tmp_path):
    """Start scheduler processes; at teardown kill them and every job process they launched."""
    import os
    import signal

    started: list[SchedulerProcess] = []

    def make(name: str = "sched", **kw) -> SchedulerProcess:
        sched = SchedulerProcess(tmp_path / name, **kw)
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
