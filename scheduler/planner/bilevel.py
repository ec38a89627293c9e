"""MEMO's bi-level memory plan (§4.2): plan one layer's forward and backward, then the step with layers as blocks.

    windows = [Window("layers.0", "forward", 10, 52), Window("layers.0", "backward", 300, 371), ...]
    result = plan_bilevel(problem, windows, time_limit_s=10.0)   # result.plan: a Plan of every buffer

Input: the step's whole trace (one `Problem`) and the time windows of its layers' forward and backward passes, as
the recorder (worker/memory_trace.py) reports them. Windows must not overlap in time. A buffer belongs to a window
when its whole lifetime lies inside it: a layer's transient tensors. Everything else (skeletal activations kept
for backward, embeddings, the classifier, gradients) is an outer buffer.

Level 1: each window's buffers, shifted to start at 0, form a small problem; windows whose problems are identical
(identical layers) are solved once and share the offsets. Level 2: every window becomes one block buffer alive over
the whole window with its level-1 peak as size; the outer buffers and the blocks are planned together. A window's
buffer then sits at its block's offset plus its level-1 offset, which is valid because the block covers the
window's time and its level-1 plan is valid inside the block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from seraphim.scheduler.planner.plan import plan_memory
from seraphim.scheduler.planner.problem import Plan, Problem, ProblemError, load, peak_of

LEVEL_ONE_SHARE = 0.5  #: of the time limit, split among the distinct layer problems


@dataclass(frozen=True)
class Window:
    """The time [lower, upper) of one layer's forward or backward pass."""

    layer: str
    phase: str
    lower: int
    upper: int


@dataclass(frozen=True)
class BilevelPlan:
    plan: Plan  #: every buffer's offset; method "bilevel"
    window_peaks: dict[Window, int]  #: level-1 peak of each window (its block's size)
    distinct_layer_problems: int  #: level-1 problems actually solved (identical windows share one)
    outer_buffers: int


def window_members(problem: Problem, windows: Sequence[Window]) -> np.ndarray:
    """Per buffer, the index of the window that contains its lifetime, or -1."""
    order = sorted(range(len(windows)), key=lambda k: (windows[k].lower, windows[k].upper))  # empty ones first
    for a, b in zip(order, order[1:]):
        if windows[b].lower < windows[a].upper:
            raise ProblemError(f"windows {windows[a]} and {windows[b]} overlap in time; a window is one layer's "
                               "forward or backward pass and they run one after another")
    lowers = np.array([windows[k].lower for k in order], np.int64)
    uppers = np.array([windows[k].upper for k in order], np.int64)
    k = np.searchsorted(lowers, problem.lower, side="right") - 1
    inside = (k >= 0) & (problem.upper <= uppers[np.maximum(k, 0)])
    return np.where(inside, np.array(order, np.int64)[np.maximum(k, 0)], -1)


def plan_bilevel(problem: Problem, windows: Sequence[Window], time_limit_s: float = 10.0) -> BilevelPlan:
    """Level 1 on each distinct window problem (half the time, shared), level 2 on outer buffers plus blocks."""
    start = time.perf_counter()
    member = window_members(problem, windows)
    groups: dict[tuple, list[int]] = {}  # identical local problems -> their windows
    local: dict[int, np.ndarray] = {}
    for w, window in enumerate(windows):
        local[w] = np.flatnonzero(member == w)
        key = (problem.lower[local[w]] - window.lower).tobytes() + (problem.upper[local[w]] - window.lower).tobytes()
        groups.setdefault((key, problem.size[local[w]].tobytes()), []).append(w)
    local_offsets: dict[int, np.ndarray] = {}
    window_peaks: dict[Window, int] = {}
    share = time_limit_s * LEVEL_ONE_SHARE / max(len(groups), 1)
    for same in groups.values():
        buffers = local[same[0]]
        sub = problem.subset(buffers)
        solved = plan_memory(sub, share).offsets if len(buffers) else np.zeros(0, np.int64)
        for w in same:
            local_offsets[w] = solved
            window_peaks[windows[w]] = peak_of(sub, solved)
    outer = np.flatnonzero(member < 0)
    blocks = [w for w in range(len(windows)) if window_peaks[windows[w]] > 0]
    level_two = Problem(
        tuple(problem.ids[i] for i in outer) + tuple(f"window:{w}" for w in blocks),
        np.concatenate([problem.lower[outer], [windows[w].lower for w in blocks]]).astype(np.int64),
        np.concatenate([problem.upper[outer], [windows[w].upper for w in blocks]]).astype(np.int64),
        np.concatenate([problem.size[outer], [window_peaks[windows[w]] for w in blocks]]).astype(np.int64))
    left = max(time_limit_s - (time.perf_counter() - start), 0.1)
    top = plan_memory(level_two, left).offsets
    offsets = np.zeros(len(problem), np.int64)
    offsets[outer] = top[:len(outer)]
    for k, w in enumerate(blocks):
        offsets[local[w]] = top[len(outer) + k] + local_offsets[w]
    plan = Plan(problem, offsets, peak_of(problem, offsets), load(problem), time.perf_counter() - start, "bilevel")
    return BilevelPlan(plan, window_peaks, len(groups), len(outer))
