"""Row versions of a versioned table: gradients summed over the data-parallel workers, applied once per version.

A versioned table (``TableSpec.sum_workers`` = N > 0) holds model pages (Angel-PTM's Page: see
``worker/paged/``). Each row's version is the number of optimizer steps applied to it, so it is the step whose
update the row holds, and it is stored in the row itself (Adam's step count), so a restarted PS knows it. A
GRADIENT push names the version its gradients were computed at:

- rows already past that version drop the push (a restarted worker recomputing a step whose update landed);
- a worker's second push of the same version for a row is dropped (the retry of a push that was applied);
- otherwise the gradients are summed into the version's accumulator; when N workers have added theirs and the row
  is at that version, the optimizer runs once on the sum and the row moves to version + 1. A version that arrives
  early (one-step-delayed updates let a worker run ahead) waits in its accumulator and is applied right after
  the one before it.

A pull may ask for a minimum version: it waits until every row it reads holds it, and reads them under the same
lock that applies updates, so the versions it reports are those of the bytes it returns. Nothing waits for a
global barrier: a reader waits only for the rows it reads (Angel-PTM's lock-free update). Lock order: this
condition, then the store's lock (inside the apply and the gather).

Accumulators live in RAM; a PS crash loses the partial sums with the pushes since the last snapshot, and workers
recompute from the snapshot's clock (the rows' versions are part of the snapshot).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
from numba import njit

from seraphim.proto.errors import DeadlineExceeded, InvalidArgument

RECORDED_VERSIONS = 64  # versions whose applied gradient norm a table keeps (Stats' applied_grad_sq)
ApplyFn = Callable[[np.ndarray, np.ndarray, float], None]  # (local rows, summed gradients, lr factor)


class _Accumulator:
    """The gradient sums of one version: a slot per row that some worker has pushed, reused once applied. Ordered,
    it keeps each worker's gradients apart ([slot, worker, dim]) and sums them in worker order when the row is
    complete, so the sum's bits do not depend on the order pushes arrived in (deterministic mode)."""

    def __init__(self, n_rows: int, dim: int, workers: int, ordered: bool = False) -> None:
        self.slot_of_row = np.full(n_rows, -1, dtype=np.int64)
        self.ordered = ordered
        self.sums = np.zeros((0, workers, dim) if ordered else (0, dim), dtype=np.float32)
        self.added = np.zeros((0, workers), dtype=bool)  # which workers' gradients a slot holds
        self.counts = np.zeros(0, dtype=np.int32)
        self.free: list[np.ndarray] = []
        self.used = 0
        self.lr_factor = 1.0

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """Slots of rows, given fresh zeroed slots where a row has none."""
        slots = self.slot_of_row[rows]
        new = slots < 0
        if new.any():
            fresh = self._take(int(new.sum()))
            slots[new] = fresh
            self.slot_of_row[rows[new]] = fresh
        return slots

    def _take(self, n: int) -> np.ndarray:
        reused = np.concatenate(self.free) if self.free else np.empty(0, dtype=np.int64)
        taken, rest = reused[:n], reused[n:]
        self.free = [rest] if len(rest) else []
        extra = n - len(taken)
        if extra:
            start = self.used
            if start + extra > len(self.counts):
                cap = max(start + extra, 2 * len(self.counts))
                grow = cap - len(self.counts)
                self.sums = np.concatenate([self.sums, np.zeros((grow, *self.sums.shape[1:]), dtype=np.float32)])
                self.added = np.concatenate([self.added, np.zeros((grow, self.added.shape[1]), dtype=bool)])
                self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int32)])
            self.used = start + extra
            taken = np.concatenate([taken, np.arange(start, start + extra, dtype=np.int64)])
        self.sums[taken] = 0
        self.added[taken] = False
        self.counts[taken] = 0
        return taken

    def add(self, slots: np.ndarray, worker: int, grads: np.ndarray) -> None:
        if self.ordered:
            self.sums[slots, worker] = grads
        else:
            self.sums[slots] += grads

    def total(self, slots: np.ndarray) -> np.ndarray:
        """The summed gradients of complete slots."""
        if not self.ordered:
            return self.sums[slots]
        parts = self.sums[slots]
        total = parts[:, 0].copy()
        for worker in range(1, parts.shape[1]):
            total += parts[:, worker]
        return total

    def release(self, rows: np.ndarray) -> None:
        slots = self.slot_of_row[rows]
        self.slot_of_row[rows] = -1
        self.free.append(slots)

    @property
    def empty(self) -> bool:
        return sum(len(f) for f in self.free) == self.used


class VersionedRows:
    """Versions and gradient accumulators of one table partition's rows (local row numbers 0..n_rows-1)."""

    def __init__(self, table: str, versions: np.ndarray, dim: int, sum_workers: int, ordered: bool = False) -> None:
        if sum_workers < 1:
            raise ValueError(f"sum_workers must be >= 1, got {sum_workers}")
        self.table = table
        self.ordered = ordered  # sum a version's gradients in worker order (deterministic mode)
        self.versions = np.asarray(versions, dtype=np.int64).copy()
        self.dim = dim
        self.sum_workers = sum_workers
        self.cond = threading.Condition()
        self._pending: dict[int, _Accumulator] = {}
        self.dropped_rows = 0  # pushes for versions a row had passed, or repeated by the same worker
        self.applied_grad_sq: dict[int, float] = {}  # version -> |summed gradient|^2 of the rows applied so far

    def add(self, rows: np.ndarray, grads: np.ndarray | None, version: int, worker: int, lr_factor: float,
            apply: ApplyFn) -> int:
        """Add one worker's gradients of `version` for unique local `rows`; apply every version that completes.
        grads None: the worker has no gradient for these rows (a routed expert its tokens did not choose), a zero
        contribution that completes their sum without bytes. Returns the number of rows taken (the rest were dropped
        as already applied or already added)."""
        if not 0 <= worker < self.sum_workers:
            raise InvalidArgument(f"push to versioned table {self.table!r} from worker {worker}: its gradients are "
                                  f"summed over workers 0..{self.sum_workers - 1}")
        if version < 0:
            raise InvalidArgument(f"push to versioned table {self.table!r}: version must be >= 0, got {version}")
        with self.cond:
            current = self.versions[rows] <= version
            taken = len(rows)
            if (self.sum_workers == 1 and grads is not None and version not in self._pending
                    and (self.versions[rows] == version).all()):
                apply(rows, grads, lr_factor)  # nothing to sum: the common one-worker step, without a copy
                self._record(version, grads)
                self.versions[rows] += 1
            else:
                rows = rows[current]
                if grads is not None:
                    grads = grads[current]
                acc = self._pending.get(version)
                if acc is None:
                    acc = self._pending[version] = _Accumulator(len(self.versions), self.dim, self.sum_workers,
                                                                self.ordered)
                slots = acc.slots(rows)
                fresh = ~acc.added[slots, worker]
                rows, slots = rows[fresh], slots[fresh]
                if grads is not None:
                    acc.add(slots, worker, grads[fresh])
                    acc.lr_factor = lr_factor  # an abstention carries none: it must not reset the pushes' rate
                acc.added[slots, worker] = True
                acc.counts[slots] += 1
                taken = len(rows)
                self._apply_complete(apply)
            self.dropped_rows += len(current) - taken
            self.cond.notify_all()
            return taken

    def _apply_complete(self, apply: ApplyFn) -> None:
        """Apply, in version order, every row whose current version has all its workers' gradients."""
        progressed = True
        while progressed:
            progressed = False
            for version in sorted(self._pending):
                acc = self._pending[version]
                rows = np.flatnonzero(acc.slot_of_row >= 0)
                slots = acc.slot_of_row[rows]
                ready = (acc.counts[slots] == self.sum_workers) & (self.versions[rows] == version)
                if ready.any():
                    rows, slots = rows[ready], slots[ready]
                    sums = acc.total(slots)
                    apply(rows, sums, acc.lr_factor)
                    self._record(version, sums)
                    self.versions[rows] = version + 1
                    acc.release(rows)
                    progressed = True
                if acc.empty:
                    del self._pending[version]

    def _record(self, version: int, sums: np.ndarray) -> None:
        """Add an applied gradient sum's squared norm to its version's (the last RECORDED_VERSIONS are kept)."""
        self.applied_grad_sq[version] = self.applied_grad_sq.get(version, 0.0) + _squared_norm(sums.reshape(-1))
        while len(self.applied_grad_sq) > RECORDED_VERSIONS:
            del self.applied_grad_sq[min(self.applied_grad_sq)]

    def recorded_grad_sq(self) -> dict[int, float]:
        """A copy of the recent versions' applied gradient norms (taken under the lock updates hold)."""
        with self.cond:
            return dict(self.applied_grad_sq)

    @contextmanager
    def reading(self, rows: np.ndarray, min_version: int, wait_s: float) -> Iterator[np.ndarray]:
        """Wait until every row holds at least min_version, then hold the lock (no update lands) while the caller
        reads them; yields their versions."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while len(rows) and self.versions[rows].min() < min_version:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(self._late(rows, min_version, wait_s))
                self.cond.wait(remaining)
            yield self.versions[rows].copy()

    def _late(self, rows: np.ndarray, min_version: int, wait_s: float) -> str:
        behind = rows[self.versions[rows] < min_version]
        row = int(behind[0])
        version = int(self.versions[row])
        acc = self._pending.get(version)
        slot = -1 if acc is None else int(acc.slot_of_row[row])
        missing = list(range(self.sum_workers)) if slot < 0 else np.flatnonzero(~acc.added[slot]).tolist()
        return (f"versioned table {self.table!r}: waited {wait_s:.0f}s for {len(behind)} rows to reach version "
                f"{min_version}; row {row} (local) is at version {version} and lacks the gradients of workers "
                f"{missing} for it")

    def pending_rows(self) -> int:
        with self.cond:
            return sum(acc.used - sum(len(f) for f in acc.free) for acc in self._pending.values())


@njit(cache=True, nogil=True)
def _squared_norm(values):  # pragma: no cover - compiled
    """Sum of squares of a float32 vector, accumulated in float64, on the calling thread: a float64 einsum cost a
    third of the AdamW whose gradients it measures, and a BLAS dot would wake (and spin) a BLAS thread pool in a
    process whose parallelism is its request threads."""
    total = 0.0
    for i in range(values.shape[0]):
        total += float(values[i]) * float(values[i])
    return total
