"""Deterministic mode: one BSP clock's gradient pushes are held, then applied in worker order.

Floating-point updates do not commute (Adam's moments, Adagrad's sums), and pushes from data-parallel workers
arrive in whatever order the network gives, so two runs of one job with one seed drift apart bitwise. Here a
gradient push from worker w, which arrives while w is in clock c + 1 (its last completed clock is c), is held;
when the last worker completes clock c + 1, the held pushes are applied in (worker, the worker's push sequence)
order before any worker's Clock call returns. Every worker then reads exactly clock c + 1's model, and no part
of clock c + 2's, so evaluation agrees across workers and a snapshot at a clock boundary holds exactly that
clock's updates.
"""

from __future__ import annotations

import threading
from typing import Callable

from seraphim.ps.clocks import ClockTable

Apply = Callable[[], None]


class OrderedPushes:
    """Held gradient applications, by the clock they belong to; ``apply_through`` runs them in order."""

    def __init__(self, clocks: ClockTable) -> None:
        self._clocks = clocks
        self._lock = threading.Lock()
        self._held: dict[int, list[tuple[int, int, int, Apply]]] = {}
        self._arrivals = 0

    def hold(self, worker: int, seq: int, apply: Apply) -> None:
        """Hold `apply` until every worker has completed the clock `worker` is in now.

        The worker's clock cannot move while its push is being answered (it ticks only after its pushes are
        acknowledged), so reading it before taking our lock is safe, and keeps the lock order of
        ``apply_through`` (clock lock, then ours) free of cycles."""
        clock = self._clocks.clock_of(worker) + 1
        with self._lock:
            self._arrivals += 1
            self._held.setdefault(clock, []).append((worker, seq, self._arrivals, apply))

    def apply_through(self, clock: int) -> int:
        """Apply every held push of clocks <= `clock`, clock by clock, in (worker, seq, arrival) order; returns the
        number applied. Called when the slowest worker completes `clock`, under the clock table's lock."""
        with self._lock:
            due = sorted(c for c in self._held if c <= clock)
            batches = [sorted(self._held.pop(c), key=lambda held: held[:3]) for c in due]
        for batch in batches:
            for *_, apply in batch:
                apply()
        return sum(len(batch) for batch in batches)

    def held(self) -> int:
        """Pushes waiting for their clock to complete."""
        with self._lock:
            return sum(len(batch) for batch in self._held.values())
