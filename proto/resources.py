"""What a process reports about itself (peak resident memory, read the same way by PS shards and workers), and the
OpenMP policy a worker process starts with."""

from __future__ import annotations

import os
import resource

#: OpenMP settings of a worker process where its environment has none: compute threads that finish a parallel
#: region sleep instead of spinning, so the cores go to the PS client's I/O threads and to the PS shards beside the
#: worker (lm-medium, batch 8, beside 2 PS shards on 2 cores: 3.3 -> 3.0 s per step; plain PyTorch alone, 1.69 ->
#: 1.75 s: spinning only pays when nothing else wants the cores).
WORKER_OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_worker_openmp_env() -> None:
    """Set WORKER_OPENMP_ENV where the environment has no value; it must run before torch loads OpenMP."""
    for name, value in WORKER_OPENMP_ENV.items():
        os.environ.setdefault(name, value)


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
