"""A GNN worker's training progress on disk, so that a worker killed mid-run carries on where it was.

The model lives on the PS, but a data-parallel worker keeps state of its own: each finished stage's result (its
best model's logits feed the next RLU stage) and the early-stopping record of the stage in progress (best
accuracy and weights, epochs without progress, the batch order's and dropout's random states). It is saved at
every evaluation, with the job's counters at that point (clock steps, label propagations). A restarted worker resumes at the clock the PS shards hold
for it: it reads this back, recomputes the propagation levels that are complete without ticking their clocks,
and replays the training steps between its last save and that clock for their random draws only (their updates
are on the PS). Under ``consistency.deterministic`` the run then ends bitwise as if nothing had happened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch

from seraphim.algorithms.gnn.train import StageResult, StageState


class JobCounters(Protocol):
    """The job's counters: ``step`` counts the clock steps taken (trained or replayed), ``label_round`` the label
    propagations made (each has tables of its own); ``resume_step`` is the clock the PS shards held for this
    worker when it started (0 for a fresh start)."""

    step: int
    label_round: int
    resume_step: int


class WorkerProgress:
    """The :class:`~seraphim.algorithms.gnn.train.Progress` of one worker, in ``path`` (a torch file)."""

    def __init__(self, path: Path, counters: JobCounters) -> None:
        self.path, self.counters = path, counters
        self._finished: dict[int, tuple[tuple[int, int], StageResult]] = {}
        self._state: tuple[tuple[int, int], StageState] | None = None
        if counters.resume_step > 0 and path.exists():
            saved = torch.load(path, weights_only=False)
            self._finished, self._state = saved["finished"], saved["state"]
        else:
            path.unlink(missing_ok=True)  # a fresh start: an earlier run's progress does not apply

    def finished(self, stage: int) -> StageResult | None:
        if stage not in self._finished:
            return None
        at, result = self._finished[stage]
        self.counters.step, self.counters.label_round = at
        return result

    def saved(self, stage: int) -> StageState | None:
        if self._state is None or self._state[1].stage != stage:
            return None
        at, state = self._state
        self.counters.step, self.counters.label_round = at
        return state

    def save(self, record: StageState | StageResult) -> None:
        at = (self.counters.step, self.counters.label_round)
        if isinstance(record, StageResult):
            self._finished[record.stage] = (at, record)
            self._state = None
        else:
            self._state = (at, record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({"finished": self._finished, "state": self._state}, partial)
        os.replace(partial, self.path)

    def trained(self) -> bool:
        if self.counters.step < self.counters.resume_step:
            self.counters.step += 1
            return True
        return False
