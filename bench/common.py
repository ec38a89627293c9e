"""Helpers the benchmarks share: CTR-like key batches (bounded Zipf) and the figures they print.

Scripts in bench/ run as ``python bench/<name>.py``, so this module is imported as ``common`` (bench/ is the
script's directory and therefore on sys.path).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

MB = 1e6  #: MB/s figures are decimal megabytes per second


class BoundedZipf:
    """Zipf(alpha) over a finite key space: inverse CDF over ranks 1..num_keys, then a fixed random permutation
    of ranks to keys, so the hot keys are scattered over the key space as hashed CTR feature ids are."""

    def __init__(self, num_keys: int, alpha: float, seed: int = 0) -> None:
        if num_keys < 1:
            raise ValueError(f"num_keys must be at least 1, got {num_keys}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.num_keys, self.alpha = num_keys, alpha
        cdf = np.cumsum(np.arange(1, num_keys + 1, dtype=np.float64) ** -alpha)
        cdf /= cdf[-1]
        self._cdf = cdf
        self._key_of_rank = np.random.default_rng(seed).permutation(num_keys).astype(np.int64)

    def sample(self, shape: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """int64 keys in [0, num_keys) of the given shape, rank r drawn with probability ∝ r^-alpha."""
        ranks = np.searchsorted(self._cdf, rng.random(shape), side="right")
        return self._key_of_rank[np.minimum(ranks, self.num_keys - 1)]


def time_each(fn: Callable[[object], object], items: Iterable[object]) -> float:
    """Seconds that calling fn on every item takes, one after another."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def rates(prefix: str, rows_per_s: float, row_bytes: int) -> dict[str, float]:
    """``{prefix}_rows_per_s`` and ``{prefix}_mb_per_s`` for rows of `row_bytes` moved at `rows_per_s`."""
    return {f"{prefix}_rows_per_s": rows_per_s, f"{prefix}_mb_per_s": rows_per_s * row_bytes / MB}


def geometric_mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) that a live process has used so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_figures(figures: dict[str, float]) -> None:
    """One ``name: value`` line per figure, in the order given, so a log is easy to grep and diff."""
    for name, value in figures.items():
        print(f"{name}: {value:.3f}" if abs(value) < 1000 else f"{name}: {value:.0f}", flush=True)


def free_port() -> int:
    """A loopback port free now (for a server that cannot report the port it bound, like torch's RPC store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(procs: list[Any], join_timeout_s: float = 20.0) -> None:
    """Join each started multiprocessing process for a while, then terminate, then kill what is left."""
    deadline = time.monotonic() + join_timeout_s
    for p in procs:
        if p.pid is not None:
            p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def add_systems_option(p: argparse.ArgumentParser, systems: tuple[str, ...]) -> None:
    """``--systems``: which of a bench's systems (ours and its peers) to measure; all by default."""
    p.add_argument("--systems", default=",".join(systems), help=f"comma-separated subset of {', '.join(systems)}")


def chosen_systems(p: argparse.ArgumentParser, args: argparse.Namespace, systems: tuple[str, ...]) -> list[str]:
    """The systems ``--systems`` names, in the bench's order; an unknown name is a usage error."""
    asked = args.systems.split(",")
    unknown = set(asked) - set(systems)
    if unknown:
        p.error(f"--systems: unknown {sorted(unknown)}; choose from {', '.join(systems)}")
    return [s for s in systems if s in asked]


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM handler that unwinds through the finally blocks that stop every process a bench started."""
    raise SystemExit(128 + signum)
