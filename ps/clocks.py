"""Per-worker clocks that enforce the staleness bound (Angel's sync controller, one vector clock per PS).

A worker reports the clock it has completed; the call returns once the slowest worker is close enough:
min(clocks) >= clock - staleness. BSP is staleness 0, SSP a positive bound, ASP (-1) never waits.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from seraphim.proto.errors import DeadlineExceeded, InvalidArgument


class ClockTable:
    """Clocks of num_workers workers; on_advance(min_clock) runs (under the lock) whenever the minimum grows."""

    def __init__(self, num_workers: int, staleness: int, start: int = 0,
                 on_advance: Callable[[int], None] | None = None) -> None:
        self.num_workers = num_workers
        self.staleness = staleness
        self._clocks = [start] * num_workers
        self._cond = threading.Condition()
        self._on_advance = on_advance

    @property
    def clocks(self) -> list[int]:
        with self._cond:
            return list(self._clocks)

    @property
    def min_clock(self) -> int:
        with self._cond:
            return min(self._clocks)

    def clock_of(self, worker: int) -> int:
        """The last clock `worker` completed."""
        self._check_worker(worker)
        with self._cond:
            return self._clocks[worker]

    def _check_worker(self, worker: int) -> None:
        if not 0 <= worker < self.num_workers:
            raise InvalidArgument(f"worker {worker} is outside [0, {self.num_workers}) for this PS")

    def tick(self, worker: int, clock: int, timeout_s: float) -> int:
        """Record that `worker` completed `clock` and wait as far as the staleness says; returns the min clock."""
        self._check_worker(worker)
        if clock < 0:
            raise InvalidArgument(f"clock must be >= 0, got {clock}")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            before = min(self._clocks)
            self._clocks[worker] = max(self._clocks[worker], clock)
            after = min(self._clocks)
            if after > before:
                if self._on_advance is not None:
                    self._on_advance(after)
                self._cond.notify_all()
            if self.staleness < 0:
                return after
            while min(self._clocks) < clock - self.staleness:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    lagging = [w for w, c in enumerate(self._clocks) if c < clock - self.staleness]
                    raise DeadlineExceeded(
                        f"worker {worker} waited {timeout_s:.0f}s at clock {clock} (staleness {self.staleness}) "
                        f"for workers {lagging} at clocks {[self._clocks[w] for w in lagging]}")
                self._cond.wait(remaining)
            return min(self._clocks)
