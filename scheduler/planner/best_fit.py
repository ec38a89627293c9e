"""Greedy plans in a fraction of a second: several buffer orders times two gap rules, the lowest peak kept.

    offsets, name = best_fit(problem)        # name says which order and rule won, e.g. "size/best"

No single order wins everywhere (TFLite's planner sorts by size; lifetime order is what an online allocator
sees; long or crowded buffers first leaves the short ones to fill holes), so each is tried and the best kept.
A placement takes the smallest gap among the placed buffers that meet it in time (best fit) or the lowest one
(first fit). For instances whose conflict graph is small enough, `canonical_search` adds its gravity placement
(one dive of the canonical search: always the lowest resting buffer next); see `planner.plan`.
"""

from __future__ import annotations

import numpy as np

from seraphim.scheduler.planner.best_fit_kernels import BEST_FIT, FIRST_FIT, place_in_order
from seraphim.scheduler.planner.problem import Problem, load, peak_of, range_max, sections_of

RULES = {"best": BEST_FIT, "first": FIRST_FIT}
FEW_ORDERS_ABOVE = 20_000  #: buffers above which only the two strongest orders run (each is O(n^2))


def orders(problem: Problem) -> dict[str, np.ndarray]:
    """Named buffer orders; ties broken by the next key, then by index."""
    length = problem.upper - problem.lower
    sections = sections_of(problem)
    crowd = range_max(sections.load, sections.first, sections.end) if len(problem) else length
    index = np.arange(len(problem))
    return {
        "contention": np.lexsort((index, -problem.size, -crowd)),
        "size": np.lexsort((index, -length, -problem.size)),
        "area": np.lexsort((index, -problem.size, -problem.size * length)),
        "length": np.lexsort((index, -problem.size, -length)),
        "start": np.lexsort((index, -problem.size, problem.lower)),
    }


def best_fit(problem: Problem) -> tuple[np.ndarray, str]:
    """The lowest-peak greedy plan and the name of the order/rule that made it; stops early at the load."""
    floor = load(problem)
    candidates = orders(problem)
    if len(problem) > FEW_ORDERS_ABOVE:
        candidates = {name: candidates[name] for name in ("size", "contention")}
    best, best_name, best_peak = np.zeros(len(problem), np.int64), "", None
    for name, order in candidates.items():
        for rule_name, rule in RULES.items():
            if len(problem) > FEW_ORDERS_ABOVE and rule == FIRST_FIT:
                continue
            offsets = place_in_order(problem.lower, problem.upper, problem.size, order, rule)
            peak = peak_of(problem, offsets)
            if best_peak is None or peak < best_peak:
                best, best_name, best_peak = offsets, f"{name}/{rule_name}", peak
            if best_peak == floor:
                return best, best_name
    return best, best_name
