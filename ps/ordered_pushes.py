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
        self._held: dict[int, dict[tuple[int, int, int], Apply]] = {}
        self._applied = clocks.min_clock  # every clock up to this one has been applied (or restored)
        self._arrivals = 0

    def hold(self, worker: int, clock: int, seq: int, apply: Apply) -> tuple[int, int, int, int] | None:
        """Hold `apply`, push number `seq` of `worker` in `clock`, until every worker has completed that clock.

        clock 0 means the clock the worker is in now (its last completed one + 1; it ticks only after its pushes
        are acknowledged, so that cannot move meanwhile). A push numbered like one already held replaces it: a
        restarted worker redoing its clock sends the same pushes again. Returns (clock, worker, seq, arrival), the
        push's place (arrival 0 unless the push is unnumbered), or None, dropping the push, when its clock was
        applied already (the redo of a clock that completed before the restart)."""
        current = self._clocks.clock_of(worker)  # before our lock: apply_through takes the clock lock, then ours
        clock = clock if clock > 0 else current + 1
        with self._lock:
            if clock <= self._applied:
                return None
            self._arrivals += 1
            key = (worker, seq, 0 if seq > 0 else self._arrivals)  # unnumbered: in arrival order
            self._held.setdefault(clock, {})[key] = apply
            return (clock, *key)

    def apply_through(self, clock: int) -> None:
        """Apply every held push of clocks <= `clock`, clock by clock, in (worker, seq) order. Called when the
        slowest worker completes `clock`, under the clock table's lock."""
        with self._lock:
            due = sorted(c for c in self._held if c <= clock)
            batches = [[apply for _, apply in sorted(self._held.pop(c).items())] for c in due]
            self._applied = max(self._applied, clock)
        for batch in batches:
            for apply in batch:
                apply()
