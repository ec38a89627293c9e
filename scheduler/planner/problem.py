"""The offline dynamic storage allocation (DSA) problem, its plans, the load lower bound and the plan validator.

A buffer is ``(id, lower, upper, size)`` with the half-open lifetime ``[lower, upper)``: two buffers conflict iff
``lower_i < upper_j and lower_j < upper_i``, so a buffer freed at t and one allocated at t may share memory. A
plan gives every buffer an offset; it is valid when no two conflicting buffers overlap in ``[offset, offset +
size)``, and its peak is ``max(offset + size)``. The load (the most bytes alive at one moment) bounds every
peak from below. Everything here is numpy or numba: instances reach 60k buffers and 180M conflicting pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from numba import njit


class ProblemError(ValueError):
    """A buffer list that is not a DSA instance (the message names the buffer, the field and the rule)."""


class PlanError(ValueError):
    """A plan that breaks the instance: a missing offset, a negative one, or two live buffers that overlap."""


class Buffer(NamedTuple):
    """One allocation: alive during [lower, upper), `size` bytes."""

    id: str
    lower: int
    upper: int
    size: int


@dataclass(frozen=True)
class Problem:
    """A DSA instance as parallel int64 arrays (ids are strings, kept for output only)."""

    ids: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    size: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("lower", "upper", "size"):
            array = np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            if array.shape != (n,):
                raise ProblemError(f"{name} has shape {array.shape}; expected ({n},), one per id")
            object.__setattr__(self, name, array)
        bad = np.flatnonzero(self.lower >= self.upper)
        if len(bad):
            i = int(bad[0])
            raise ProblemError(f"buffer {self.ids[i]!r}: lower {self.lower[i]} >= upper {self.upper[i]}; a lifetime "
                               "[lower, upper) must be non-empty")
        bad = np.flatnonzero(self.size < 0)
        if len(bad):
            i = int(bad[0])
            raise ProblemError(f"buffer {self.ids[i]!r}: size {self.size[i]} is negative")
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            duplicate = next(i for i in self.ids if i in seen or seen.add(i))
            raise ProblemError(f"buffer id {duplicate!r} appears more than once; ids must be unique")

    @classmethod
    def from_buffers(cls, buffers: Iterable[Buffer | Sequence]) -> "Problem":
        rows = [Buffer(*b) for b in buffers]
        return cls(tuple(str(b.id) for b in rows), np.array([b.lower for b in rows], np.int64),
                   np.array([b.upper for b in rows], np.int64), np.array([b.size for b in rows], np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> "Problem":
        """The buffers at `index` (an int array), in that order."""
        return Problem(tuple(self.ids[i] for i in index), self.lower[index], self.upper[index], self.size[index])


@dataclass(frozen=True)
class Plan:
    """Offsets for every buffer of `problem`, with how good and how costly they are.

    `lower_bound` is the load unless a method proved more (the MIP's dual bound, or an exhausted search at a
    capacity); `method` names what produced the offsets (``best_fit``, ``search``, ``mip``, ``bilevel``).
    """

    problem: Problem = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    peak: int
    lower_bound: int
    solve_s: float
    method: str

    @property
    def gap(self) -> float:
        """(peak - lower_bound) / peak: 0 means proven optimal."""
        return (self.peak - self.lower_bound) / self.peak if self.peak else 0.0


def peak_of(problem: Problem, offsets: np.ndarray) -> int:
    """max(offset + size) over the buffers, 0 for none."""
    return int((offsets + problem.size).max()) if len(problem) else 0


def events(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(buffer, +1 alloc / -1 free) in time order, frees before allocations at the same time (half-open
    lifetimes), ties in buffer order."""
    n = len(lower)
    times = np.concatenate([upper, lower])
    kinds = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])  # 0 = free sorts first
    order = np.lexsort((np.concatenate([np.arange(n), np.arange(n)]), kinds, times))
    return order % n, np.where(order >= n, 1, -1)


@dataclass(frozen=True)
class Sections:
    """Time cut at every distinct lower and upper: section s is [times[s], times[s + 1]), and buffer i is alive
    in sections first[i] .. end[i] - 1. `load[s]` is the bytes alive in section s."""

    times: np.ndarray
    first: np.ndarray
    end: np.ndarray
    load: np.ndarray


def sections_of(problem: Problem) -> Sections:
    times = np.unique(np.concatenate([problem.lower, problem.upper]))
    first = np.searchsorted(times, problem.lower)
    end = np.searchsorted(times, problem.upper)
    change = np.zeros(max(len(times), 1), np.int64)
    np.add.at(change, first, problem.size)
    np.add.at(change, end, -problem.size)
    return Sections(times, first, end, np.cumsum(change)[:max(len(times) - 1, 0)])


def range_max(values: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """max(values[first[i]:end[i]]) for every i (all ranges non-empty), by a sparse table: O(S log S + n)."""
    table = [values]  # table[k][j] = max(values[j : j + 2**k])
    while (1 << len(table)) <= len(values):
        half = 1 << (len(table) - 1)
        table.append(np.maximum(table[-1][:-half], table[-1][half:]))
    levels = np.floor(np.log2(end - first)).astype(np.int64)
    out = np.empty(len(first), values.dtype)
    for level in np.unique(levels):
        at = levels == level
        out[at] = np.maximum(table[level][first[at]], table[level][end[at] - (1 << level)])
    return out


def load(problem: Problem) -> int:
    """The most bytes alive at any moment: a lower bound on every plan's peak (exact, over the sections)."""
    return int(sections_of(problem).load.max()) if len(problem) else 0


def check_plan(problem: Problem, offsets: np.ndarray) -> int:
    """Raise PlanError unless `offsets` is a valid plan of `problem`; return its peak.

    A time sweep keeps the live buffers sorted by offset; each allocation is checked against its two neighbours
    only, which suffices because the live set is kept disjoint. O(n * live) memory moves at worst.
    """
    offsets = np.asarray(offsets)
    if offsets.shape != (len(problem),):
        raise PlanError(f"{offsets.shape} offsets for {len(problem)} buffers; expected one offset per buffer")
    if len(problem) and offsets.min() < 0:
        i = int(np.argmin(offsets))
        raise PlanError(f"buffer {problem.ids[i]!r} has negative offset {offsets[i]}")
    buffers, signs = events(problem.lower, problem.upper)
    a, b = _first_overlap(buffers, signs, offsets.astype(np.int64), problem.size)
    if a >= 0:
        raise PlanError(f"buffers {problem.ids[a]!r} and {problem.ids[b]!r} are alive at the same time "
                        f"(lifetimes [{problem.lower[a]}, {problem.upper[a]}) and [{problem.lower[b]}, "
                        f"{problem.upper[b]})) and overlap in memory ([{offsets[a]}, {offsets[a] + problem.size[a]})"
                        f" and [{offsets[b]}, {offsets[b] + problem.size[b]}))")
    return peak_of(problem, offsets)


@njit(cache=True)
def _first_overlap(buffers, signs, offsets, size):
    """(a, b) of the first allocation b that overlaps a live buffer a, or (-1, -1). Zero-size buffers take no
    memory and are skipped; the others' live offsets are distinct because the live set stays disjoint."""
    live = np.empty(len(offsets), np.int64)  # live buffers, sorted by offset
    live_offset = np.empty(len(offsets), np.int64)
    count = 0
    for e in range(len(buffers)):
        i = buffers[e]
        if size[i] == 0:
            continue
        pos = np.searchsorted(live_offset[:count], offsets[i])
        if signs[e] < 0:
            live[pos:count - 1] = live[pos + 1:count]
            live_offset[pos:count - 1] = live_offset[pos + 1:count]
            count -= 1
            continue
        if pos > 0 and live_offset[pos - 1] + size[live[pos - 1]] > offsets[i]:
            return live[pos - 1], i
        if pos < count and offsets[i] + size[i] > live_offset[pos]:
            return live[pos], i
        live[pos + 1:count + 1] = live[pos:count].copy()
        live_offset[pos + 1:count + 1] = live_offset[pos:count].copy()
        live[pos] = i
        live_offset[pos] = offsets[i]
        count += 1
    return -1, -1
