"""MEMO's DSA MIP (§4.2) in pyomo, solved by HiGHS through highspy, warm-started from a known plan.

    result = solve_mip(problem, offsets, lower_bound, time_limit_s=5.0)   # MipResult: offsets, peak, bound

    min M  s.t.  A_i + S_i <= M                                   for every buffer i
                 A_i + S_i <= A_j + z_ij * Mcap                   for every pair (i, j) alive at the same time
                 A_j + S_j <= A_i + (1 - z_ij) * Mcap             (z_ij = 0: i below j)
                 lower_bound <= M <= Mcap,  0 <= A_i <= Mcap - S_i,  z_ij binary

Mcap is the warm start's peak, so every big-M is as small as the known plan allows and the start is feasible.
Reductions: zero-size buffers and buffers that meet no other one are left out (offset 0); sizes are divided by
their gcd; mirroring a plan upside down gives another plan of the same peak, so one pair's z is fixed to the warm
start's value. HiGHS' continuous offsets are turned back into an exact plan by stacking the buffers in the order of
their solved offsets (each on top of the earlier ones it meets): never higher than the MIP's peak, always valid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from seraphim.scheduler.planner.best_fit_kernels import ON_TOP, place_in_order
from seraphim.scheduler.planner.canonical_search import conflict_graph
from seraphim.scheduler.planner.problem import Problem, peak_of

if TYPE_CHECKING:
    import pyomo.environ as pyo


@dataclass(frozen=True)
class MipResult:
    offsets: np.ndarray
    peak: int
    bound: int  #: HiGHS' proven lower bound on the peak (at least the one given)
    optimal: bool


def pairs_of(problem: Problem) -> np.ndarray:
    """(k, 2) index pairs i < j of buffers with non-zero sizes alive at the same time."""
    ptr, adj = conflict_graph(problem.lower, problem.upper)
    heads = np.repeat(np.arange(len(problem)), np.diff(ptr))
    keep = (heads < adj) & (problem.size[heads] > 0) & (problem.size[adj] > 0)
    return np.stack([heads[keep], adj[keep]], axis=1)


def solve_mip(problem: Problem, offsets: np.ndarray, lower_bound: int, time_limit_s: float) -> MipResult:
    """Improve the valid plan `offsets` within the time; returns it unchanged (with HiGHS' bound) if HiGHS finds
    nothing better."""
    start_peak = peak_of(problem, offsets)
    pairs = pairs_of(problem)
    if start_peak <= lower_bound or not len(pairs):
        return MipResult(offsets, start_peak, max(lower_bound, start_peak if not len(pairs) else lower_bound),
                         start_peak <= lower_bound or not len(pairs))
    used = np.unique(pairs)
    g = int(np.gcd.reduce(problem.size[used]))
    size = problem.size // g
    cap = start_peak // g  # the warm start's peak
    warm = offsets // g
    from pyomo.contrib.appsi.solvers import Highs  # pyomo takes seconds to import: only when a MIP runs

    model = _model(size, pairs, used, cap, math.ceil(lower_bound / g), warm)
    solver = Highs()  # pyomo's APPSI interface to highspy (SolverFactory("appsi_highs") wraps it in legacy results)
    solver.config.time_limit = max(time_limit_s, 0.1)
    solver.config.mip_gap = 0.0
    solver.config.warmstart = True
    solver.config.load_solution = False
    solver.config.stream_solver = False
    logging.getLogger("pyomo.contrib.appsi.solvers.highs").setLevel(logging.ERROR)
    results = solver.solve(model)
    bound = results.best_objective_bound
    bound = lower_bound if bound is None or not math.isfinite(bound) else max(lower_bound, math.ceil(bound - 1e-6) * g)
    best, best_peak = offsets, start_peak
    if results.best_feasible_objective is not None and results.best_feasible_objective < cap - 0.5:
        results.solution_loader.load_vars()
        solved = np.zeros(len(problem))
        solved[used] = [model.offset[i].value for i in range(len(used))]
        order = np.lexsort((np.arange(len(problem)), solved))
        stacked = place_in_order(problem.lower, problem.upper, problem.size, order, ON_TOP)
        if peak_of(problem, stacked) < best_peak:
            best, best_peak = stacked, peak_of(problem, stacked)
    return MipResult(best, best_peak, min(bound, best_peak), bound >= best_peak)


def _model(size: np.ndarray, pairs: np.ndarray, used: np.ndarray, cap: int, low: int,
           warm: np.ndarray) -> pyo.ConcreteModel:
    """The pyomo model over the buffers `used` (indices into size), warm values set from `warm`."""
    import pyomo.environ as pyo

    local = np.full(len(size), -1, np.int64)
    local[used] = np.arange(len(used))
    lp = local[pairs]
    s = size[used].tolist()
    m = pyo.ConcreteModel()
    m.B = pyo.RangeSet(0, len(used) - 1)
    m.P = pyo.RangeSet(0, len(lp) - 1)
    m.peak = pyo.Var(bounds=(low, cap), initialize=cap)
    m.offset = pyo.Var(m.B, bounds=lambda _, i: (0, cap - s[i]), initialize=lambda _, i: int(warm[used[i]]))
    above = (warm[pairs[:, 0]] + size[pairs[:, 0]] > warm[pairs[:, 1]]).astype(int).tolist()  # z of the warm start
    m.z = pyo.Var(m.P, domain=pyo.Binary, initialize=lambda _, k: above[k])
    a, b = lp[:, 0].tolist(), lp[:, 1].tolist()
    m.under_peak = pyo.Constraint(m.B, rule=lambda m, i: m.offset[i] + s[i] <= m.peak)
    m.i_below_j = pyo.Constraint(m.P, rule=lambda m, k: m.offset[a[k]] + s[a[k]] <= m.offset[b[k]] + m.z[k] * cap)
    m.j_below_i = pyo.Constraint(
        m.P, rule=lambda m, k: m.offset[b[k]] + s[b[k]] <= m.offset[a[k]] + (1 - m.z[k]) * cap)
    mirror = int(np.argmax(np.minimum(size[pairs[:, 0]], size[pairs[:, 1]])))  # mirror symmetry: fix one pair
    m.z[mirror].fix(above[mirror])
    m.objective = pyo.Objective(expr=m.peak, sense=pyo.minimize)
    return m
