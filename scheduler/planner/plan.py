"""The planner pipeline: greedy plans, then the exact search, then the MIP, within one time limit.

    plan = plan_memory(problem, time_limit_s=10.0)      # Plan: offsets, peak, lower_bound, gap, solve_s, method

1. best fit (several orders and rules) and, where the search's structures fit in memory
   (`CanonicalSearch.affordable`), the gravity dives of the canonical search: a valid plan in well under a second, the upper bound of what follows;
2. the canonical search (`canonical_search`), which decides capacities between the load and that bound;
3. MEMO's MIP (`mip`) over HiGHS, warm-started from the best plan so far, on instances small enough for big-M
   pairs to be worth it; it may also prove a lower bound above the load.

A stage is skipped once the plan meets its lower bound. `method` names the stage that produced the offsets.
"""

from __future__ import annotations

import time

import numpy as np

from seraphim.scheduler.planner.best_fit import best_fit
from seraphim.scheduler.planner.canonical_search import HEURISTICS, CanonicalSearch, conflicting_pairs
from seraphim.scheduler.planner.mip import solve_mip
from seraphim.scheduler.planner.problem import Plan, Problem, load, peak_of

MIP_MAX_PAIRS = 2_000  #: above this many pairs HiGHS rarely improves on the search within seconds
SEARCH_SHARE_BEFORE_MIP = 0.6  #: of the time left, when the MIP runs after the search


def plan_memory(problem: Problem, time_limit_s: float = 10.0, use_mip: bool = True) -> Plan:
    """The lowest-peak plan found within `time_limit_s` (the greedy stage always runs to the end)."""
    start = time.perf_counter()
    lower_bound = load(problem)
    offsets, _ = best_fit(problem)
    peak, method = peak_of(problem, offsets), "best_fit"
    pairs = conflicting_pairs(problem.lower, problem.upper)
    search = CanonicalSearch(problem) if peak > lower_bound and CanonicalSearch.affordable(problem) else None
    if search is not None:
        for heuristic in HEURISTICS:
            dive = search.gravity(heuristic)
            if (dive_peak := peak_of(problem, dive)) < peak:
                offsets, peak, method = dive, dive_peak, "gravity"
    mip_fits = use_mip and 0 < pairs <= MIP_MAX_PAIRS

    def left() -> float:
        return time_limit_s - (time.perf_counter() - start)

    if search is not None and peak > lower_bound and left() > 0:
        found = search.minimize(offsets, lower_bound, left() * (SEARCH_SHARE_BEFORE_MIP if mip_fits else 1.0))
        lower_bound = found.proven_lower_bound
        if found.peak < peak:
            offsets, peak, method = found.offsets, found.peak, "search"
    if mip_fits and peak > lower_bound and left() > 0:
        solved = solve_mip(problem, offsets, lower_bound, left())
        lower_bound = max(lower_bound, solved.bound)
        if solved.peak < peak:
            offsets, peak, method = solved.offsets, solved.peak, "mip"
    return Plan(problem, np.asarray(offsets, np.int64), peak, min(lower_bound, peak), time.perf_counter() - start,
                method)
