"""Exact search for low peaks: a capacity decision by canonical depth-first search, driven down from an upper bound.

    search = CanonicalSearch(problem)
    result = search.minimize(upper_offsets, lower_bound, time_limit_s=20.0)   # offsets, peak, proven bound

`search_kernels` decides "fits under C?" (FOUND, NOT_FOUND = proof, ABORTED = budget spent). Like MiniMalloc's
solver it restarts with three preorders in turn (WAT, TAW, TWA: width, area, section total), doubling a node
budget each round, because one preorder often finds in milliseconds what another misses for minutes. The
minimization first asks for the lower bound itself (the load is tight on most real instances), then bisects
between the best proven bound and the best peak found in rounds of growing time per probe (see `minimize`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from seraphim.scheduler.planner import search_kernels as kernels
from seraphim.scheduler.planner.problem import Problem, peak_of, sections_of

HEURISTICS = {"WAT": (kernels.WIDTH, kernels.AREA, kernels.TOTAL),
              "TAW": (kernels.TOTAL, kernels.AREA, kernels.WIDTH),
              "TWA": (kernels.TOTAL, kernels.WIDTH, kernels.AREA)}
_FIRST_NODE_LIMIT = 1 << 12
MAX_PAIRS = 5_000_000  #: conflicting pairs above which the search is not built (the graph takes 16 B a pair)
MAX_SPANS = 5_000_000  #: (buffer, section) memberships above which it is not built (32 B each with the trail)


@dataclass(frozen=True)
class SearchResult:
    offsets: np.ndarray
    peak: int
    proven_lower_bound: int  #: the largest capacity shown infeasible, plus one granule (or the bound given)


def conflict_graph(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr, neighbours) of the buffers whose half-open lifetimes meet, built from a sort: after sorting by
    lower, i meets exactly the later buffers j whose lower is below upper_i."""
    n = len(lower)
    order = np.argsort(lower, kind="stable")
    stop = np.searchsorted(lower[order], upper[order], side="left")
    counts = np.maximum(stop - np.arange(n) - 1, 0)
    src = np.repeat(np.arange(n), counts)
    dst = src + 1 + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    a, b = order[src], order[dst]
    heads, tails = np.concatenate([a, b]), np.concatenate([b, a])
    by_head = np.argsort(heads, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(heads, minlength=n))])
    return ptr.astype(np.int64), tails[by_head].astype(np.int64)


def conflicting_pairs(lower: np.ndarray, upper: np.ndarray) -> int:
    """How many pairs of buffers meet in time (without building them)."""
    sorted_lower, sorted_upper = np.sort(lower), np.sort(upper)
    degree = np.searchsorted(sorted_lower, upper, "left") - np.searchsorted(sorted_upper, lower, "right") - 1
    return int(degree.sum()) // 2


class CanonicalSearch:
    """The search structures of one problem (its buffers of non-zero size, sizes divided by their gcd)."""

    @staticmethod
    def affordable(problem: Problem) -> bool:
        """Whether the conflict graph and the section lists fit the memory limits above."""
        if conflicting_pairs(problem.lower, problem.upper) > MAX_PAIRS:
            return False
        sections = sections_of(problem)
        return int((sections.end - sections.first).sum()) <= MAX_SPANS

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.sized = np.flatnonzero(problem.size > 0)
        sub = problem.subset(self.sized)
        self.granule = int(np.gcd.reduce(sub.size)) if len(sub) else 1
        sections = sections_of(sub)
        n, num_sections = len(sub), max(len(sections.times) - 1, 1)
        spans = sections.end - sections.first
        sec_buffer = np.repeat(np.arange(n), spans)  # (buffer, section) for every section a buffer lives in
        sec_index = np.repeat(sections.first, spans) + np.arange(len(sec_buffer)) - np.repeat(np.cumsum(spans) - spans,
                                                                                               spans)
        by_section = np.argsort(sec_index, kind="stable")
        adj_ptr, adj = conflict_graph(sub.lower, sub.upper)
        self.data = kernels.SearchData(
            size=sub.size // self.granule, width=sub.upper - sub.lower, first=sections.first.astype(np.int64), end=sections.end.astype(np.int64),
            adj_ptr=adj_ptr, adj=adj, sec_ptr=_ptr(sec_index, num_sections), sec_members=sec_buffer[by_section],
            first_ptr=_ptr(sections.first, num_sections), by_first=np.argsort(sections.first, kind="stable"))
        self._section_total = sections.load // self.granule if len(sections.load) else np.zeros(1, np.int64)
        cut = np.zeros(num_sections + 1, np.int64)
        np.add.at(cut, sections.first, 1)
        np.add.at(cut, np.maximum(sections.end - 1, sections.first), -1)
        self._cut = np.cumsum(cut)[:num_sections]  # buffers alive in both s and s + 1
        self.nodes = 0

    def decide(self, capacity: int, heuristic: str, node_limit: int) -> tuple[int, np.ndarray | None]:
        """(status, offsets in bytes for the whole problem when FOUND) for "peak <= capacity?"."""
        data = self.data
        n, num_sections = len(data.size), len(self._cut)
        state = kernels.SearchState(
            offset=np.full(n, -1, np.int64), min_offset=np.zeros(n, np.int64), floor=np.zeros(num_sections, np.int64),
            total=self._section_total.copy(), cut=self._cut.copy(), solution=np.zeros(n, np.int64),
            min_trail=np.empty((len(data.adj), 2), np.int64), floor_trail=np.empty((len(data.sec_members), 2), np.int64),
            affected=np.empty(num_sections, np.int64), affected_stamp=np.zeros(num_sections, np.int64),
            counters=np.array([node_limit, 0, 0, 0], np.int64))
        status = kernels.decide(data, state, capacity // self.granule, np.array(HEURISTICS[heuristic], np.int64))
        self.nodes += node_limit - int(state.counters[kernels.NODES])
        if status != kernels.FOUND:
            return status, None
        offsets = np.zeros(len(self.problem), np.int64)
        offsets[self.sized] = state.solution * self.granule
        return status, offsets

    def gravity(self, heuristic: str) -> np.ndarray:
        """One dive of the search with room for everything: each step places the buffer that rests lowest (ties
        by the preorder), never backtracking. A greedy plan of its own, often better than best fit."""
        room = int(self.data.size.sum()) * self.granule
        status, offsets = self.decide(room, heuristic, 2 * len(self.data.size) + 2)
        if status != kernels.FOUND:
            raise RuntimeError(f"the gravity dive ({heuristic}) ended {status} with room for every buffer")
        return offsets

    def probe(self, capacity: int, deadline: float) -> tuple[int, np.ndarray | None]:
        """Round-robin over the preorders with doubling node budgets until an answer or the deadline; the budget of
        each call is also capped by the node rate seen so far, so a call ends near the deadline."""
        limit, rate = _FIRST_NODE_LIMIT, None
        while True:
            for heuristic in HEURISTICS:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return kernels.ABORTED, None
                budget = limit if rate is None else max(1, min(limit, int(rate * left)))
                start, nodes_before = time.perf_counter(), self.nodes
                status, offsets = self.decide(capacity, heuristic, budget)
                elapsed = time.perf_counter() - start
                if elapsed > 1e-3:
                    rate = max(self.nodes - nodes_before, 1) / elapsed
                if status != kernels.ABORTED:
                    return status, offsets
            limit *= 2

    def minimize(self, offsets: np.ndarray, lower_bound: int, time_limit_s: float) -> SearchResult:
        """The lowest peak found within the time, starting from the valid plan `offsets`.

        First the lower bound itself, on a quarter of the time. Then rounds: the bound again, and a bisection
        between it and the best peak: a probe that finds a plan lowers the peak to that plan's, one that runs out
        of time moves the round's low end up (without proof). Each round doubles the time a probe gets, because how hard a
        capacity is does not fall smoothly as the capacity grows: a tight capacity often prunes its way to a plan
        at once where a looser one wanders.
        """
        start = time.perf_counter()
        deadline = start + time_limit_s
        g = self.granule
        best, peak = offsets, peak_of(self.problem, offsets)
        proven = math.ceil(lower_bound / g) * g  # every canonical peak is a multiple of the granule

        def ask(capacity: int, seconds: float) -> None:
            nonlocal best, peak, proven
            status, found = self.probe(capacity, min(deadline, time.perf_counter() + seconds))
            if status == kernels.FOUND:
                best, peak = found, peak_of(self.problem, found)
            elif status == kernels.NOT_FOUND:
                proven = max(proven, capacity + g)

        if proven < peak:
            ask(proven, time_limit_s / 4)
        probe_s = max(time_limit_s / 40, 0.05)
        while proven < peak and time.perf_counter() < deadline:
            ask(proven, probe_s)  # the bound again, with this round's time: it is so often the optimum
            low = proven + g
            while low < peak and time.perf_counter() < deadline:
                middle = (low + peak) // (2 * g) * g
                ask(middle, probe_s)
                low = max(low, middle + g) if peak > middle else low
            probe_s *= 2
        return SearchResult(best, peak, max(proven, lower_bound))


def _ptr(keys: np.ndarray, count: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=count)[:count])]).astype(np.int64)
