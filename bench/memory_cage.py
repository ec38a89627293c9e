"""A memory limit around a set of processes (a cgroup-v1 memory group), for benchmarks of training beyond RAM.

A limit on resident memory alone would not bind: a process reading its model through a memory-mapped file, or a PS
reading LMDB, is served by the kernel's page cache, which ``ulimit`` does not count and a 24 GiB host keeps warm.
A memory cgroup charges anonymous memory and the page cache its processes touch alike, and reclaims the cache
(writing dirty pages back) when the group would pass its limit, so what is not within the limit comes from the disk.

Each contender is caged the same way: its processes start in the group without a limit; once they are set up the
bench samples the group's anonymous memory through a warm-up step (the runtime, the activations and, for the
platform, its page budgets) and the page cache present before the model was touched (libraries); the limit is then
those two plus the bytes the contender may spend on model states outside its anonymous memory. ``available()``
says why a host cannot cage processes (no cgroup-v1 memory controller, not root).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")


def available() -> str | None:
    """None when processes can be caged here, else the reason they cannot."""
    if not (ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup-v1 memory controller at {ROOT} (a cgroup-v2-only host needs memory.max support here)"
    if not os.access(ROOT, os.W_OK):
        return f"{ROOT} is not writable (run as root to cage the contenders)"
    return None


class MemoryCage:
    """One memory cgroup; processes join it by pid; removed on close (its processes must have exited)."""

    def __init__(self, name: str) -> None:
        self.path = ROOT / name
        self.path.mkdir(exist_ok=True)
        self._peak_anon = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def stat(self) -> dict[str, int]:
        rows = (line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        return {k: int(v) for k, v in rows}

    @property
    def anon_bytes(self) -> int:
        return self.stat()["total_rss"]

    @property
    def cache_bytes(self) -> int:
        return self.stat()["total_cache"]

    @property
    def usage_bytes(self) -> int:
        return int((self.path / "memory.usage_in_bytes").read_text())

    @property
    def peak_usage_bytes(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    @property
    def major_faults(self) -> int:
        """Page faults of the group's processes that had to read from the disk (the memory-mapped state, LMDB)."""
        return self.stat()["total_pgmajfault"]

    @property
    def limit_hits(self) -> int:
        """How many times the group's usage reached its limit (each time, the kernel reclaimed memory in it)."""
        return int((self.path / "memory.failcnt").read_text())

    def limit(self, limit_bytes: int) -> None:
        (self.path / "memory.limit_in_bytes").write_text(str(int(limit_bytes)))
        (self.path / "memory.max_usage_in_bytes").write_text("0")  # restart the peak under the limit

    def start_sampling(self, period_s: float = 0.02) -> None:
        """Track the peak of anonymous memory (memory.stat has no peak of its own) until stop_sampling()."""
        self._peak_anon = self.anon_bytes
        self._sampling.set()

        def sample() -> None:
            while self._sampling.is_set():
                try:
                    self._peak_anon = max(self._peak_anon, self.anon_bytes)
                except FileNotFoundError:  # a contender that died took its group along
                    return
                time.sleep(period_s)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> int:
        self._sampling.clear()
        if self._sampler is not None:
            self._sampler.join()
        return self._peak_anon

    def close(self) -> None:
        """Remove the group; processes still in it (PS shards that outlive a contender) move back to the root."""
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (ROOT / "cgroup.procs").write_text(pid)
            except OSError:  # exited meanwhile
                pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # its last processes are still being reaped
                time.sleep(0.1)
