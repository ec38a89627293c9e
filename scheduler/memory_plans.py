"""Memory plans of jobs: the scheduler plans a job's saved activations once, from the first trace a worker reports,
and hands the same plan to every worker (DESIGN §5). A plan is kept as ``memory_plan.csv`` in the job's run
directory (the DSA rows with an ``offset`` column, what ``seraphim plan-memory`` writes), so a restarted scheduler
or a restarted worker finds it again.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import InvalidArgument
from seraphim.scheduler.planner import Problem, ProblemError, plan_memory, read_problem, write_plan
from seraphim.scheduler.planner.best_fit import best_fit
from seraphim.scheduler.planner.problem import Plan, load, peak_of

PLAN_FILE = "memory_plan.csv"
METHODS = ("mip", "best_fit")


class MemoryPlans:
    """Plans by job; planning runs once per job under a per-job lock (a second trace waits, then gets the plan)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}

    def plan(self, trace: scheduler_pb2.MemoryTrace, run_dir: Path) -> scheduler_pb2.MemoryPlan:
        if trace.method not in METHODS:
            raise InvalidArgument(f"memory plan method {trace.method!r} is not one of {list(METHODS)}")
        if not (len(trace.lower) == len(trace.upper) == len(trace.size)):
            raise InvalidArgument(f"memory trace of job {trace.job_id}: {len(trace.lower)} lower, {len(trace.upper)} "
                                  f"upper and {len(trace.size)} size values; give one of each per buffer")
        with self._lock:
            job_lock = self._job_locks.setdefault(trace.job_id, threading.Lock())
        with job_lock:
            known = self.get(run_dir)
            if known.ready:
                return known
            try:
                problem = Problem(tuple(str(i) for i in range(len(trace.size))), np.array(trace.lower),
                                  np.array(trace.upper), np.array(trace.size))
            except ProblemError as exc:
                raise InvalidArgument(f"memory trace of job {trace.job_id}: {exc}") from None
            plan = (plan_memory(problem, time_limit_s=trace.time_limit_s or 10.0) if trace.method == "mip"
                    else _best_fit_plan(problem))
            write_plan(run_dir / PLAN_FILE, plan)
            return _message(plan)

    def get(self, run_dir: Path) -> scheduler_pb2.MemoryPlan:
        path = run_dir / PLAN_FILE
        if not path.exists():
            return scheduler_pb2.MemoryPlan(ready=False)
        problem = read_problem(path)
        offsets = np.loadtxt(path, delimiter=",", skiprows=1, usecols=4, dtype=np.int64, ndmin=1)
        return _message(Plan(problem, offsets, peak_of(problem, offsets), load(problem), 0.0, "stored"))


def _best_fit_plan(problem: Problem) -> Plan:
    import time

    started = time.perf_counter()
    offsets, _ = best_fit(problem)
    return Plan(problem, offsets, peak_of(problem, offsets), load(problem), time.perf_counter() - started,
                "best_fit")


def _message(plan: Plan) -> scheduler_pb2.MemoryPlan:
    return scheduler_pb2.MemoryPlan(ready=True, offsets=plan.offsets.tolist(), size=plan.problem.size.tolist(),
                                    peak=plan.peak, lower_bound=plan.lower_bound, solve_s=plan.solve_s,
                                    method=plan.method)
