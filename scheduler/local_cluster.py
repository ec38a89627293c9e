"""PS shards and workers as processes on this host, on loopback: the embedded default's launcher.

LocalCluster starts each PS with ``python -m seraphim.ps`` on a free port (learned through a port file), can
kill and restart one on the same port and data directory (it recovers from its LMDB), and stops every process it
started when the ``with`` block ends, even on error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from seraphim.proto.port_file import wait_for_port_file
from seraphim.proto.resources import WORKER_OPENMP_ENV


@dataclass
class PSProcessSpec:
    """How to start the PS shards of one cluster."""

    num_ps: int = 2
    num_workers: int = 1
    staleness: int = 0
    ram_mb: float = 256.0
    page_kb: int = 256
    durability: str = "snapshot"
    snapshot_every: int = 10
    token: str | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)


class LocalCluster:
    """PS processes on 127.0.0.1 with their logs under data_dir/logs; workers started on demand."""

    def __init__(self, data_dir: str | os.PathLike, spec: PSProcessSpec | None = None,
                 start_timeout_s: float = 60.0, log_dir: str | os.PathLike | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.spec = spec or PSProcessSpec()
        self.start_timeout_s = start_timeout_s
        self.log_dir = Path(log_dir) if log_dir else self.data_dir / "logs"
        self.ps_procs: list[subprocess.Popen | None] = [None] * self.spec.num_ps
        self.ports: list[int] = [0] * self.spec.num_ps
        self.workers: list[subprocess.Popen] = []
        self._logs: list[IO[bytes]] = []

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.spec.token:
            env["SERAPHIM_TOKEN"] = self.spec.token
        return env

    def _log(self, name: str) -> IO[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(f)
        return f

    def start_ps(self, shard: int) -> None:
        """Start (or restart, on its old port) PS shard `shard` and wait until it serves."""
        s = self.spec
        port_file = self.data_dir / f"ps-{shard}.port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "seraphim.ps", "--data-dir", str(self.data_dir), "--shard", str(shard),
                "--num-shards", str(s.num_ps), "--port", str(self.ports[shard]), "--port-file", str(port_file),
                "--num-workers", str(s.num_workers), "--staleness", str(s.staleness), "--ram-mb", str(s.ram_mb),
                "--page-kb", str(s.page_kb), "--durability", s.durability, "--snapshot-every",
                str(s.snapshot_every), *s.extra_args]
        log = self._log(f"ps-{shard}")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        self.ps_procs[shard] = proc
        self.ports[shard] = wait_for_port_file(proc, port_file, self.start_timeout_s, f"ps {shard}",
                                               self.log_dir / f"ps-{shard}.log")

    def start(self) -> "LocalCluster":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for shard in range(self.spec.num_ps):
            self.start_ps(shard)
        return self

    def kill_ps(self, shard: int, sig: int = signal.SIGKILL) -> None:
        proc = self.ps_procs[shard]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=120)  # a clean stop snapshots; numba may compile its kernels on a fresh install

    def start_worker(self, argv: Sequence[str], name: str) -> subprocess.Popen:
        """Start a worker process (argv after the Python executable), logging to logs/<name>.log."""
        proc = subprocess.Popen([sys.executable, *argv], stdout=self._log(name), stderr=subprocess.STDOUT,
                                env={**WORKER_OPENMP_ENV, **self.env()}, start_new_session=True)
        self.workers.append(proc)
        return proc

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM everything still running, then SIGKILL what has not exited after a grace period."""
        procs = [p for p in [*self.workers, *self.ps_procs] if p is not None and p.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
