"""The memory planner: offline dynamic storage allocation (DSA) of a step's tensors, MEMO-style. Trace in, plan out.

    from seraphim.scheduler.planner import Problem, plan_memory, read_problem, write_plan, check_plan

    problem = read_problem("trace.csv")                  # id,lower,upper,size rows; lifetimes [lower, upper)
    plan = plan_memory(problem, time_limit_s=10.0)       # best fit -> canonical search -> MIP (pyomo + HiGHS)
    check_plan(problem, plan.offsets)                    # raises PlanError on any overlap
    print(plan.peak, plan.lower_bound, plan.gap, plan.method)
    write_plan("plan.csv", plan)                         # the same rows plus offset

    plan = plan_bilevel(tagged_buffers, windows)         # MEMO's two levels: one layer, then the step (bilevel)
    stats = replay_caching_allocator(problem)            # what PyTorch's CUDA caching allocator would reserve

A pure module: no gRPC, no torch. The scheduler plans once per job from the trace a worker reports; the worker
records traces (worker/memory_trace.py) but never imports this package.
"""

from seraphim.scheduler.planner.csv_io import TraceFormatError, read_problem, write_plan
from seraphim.scheduler.planner.plan import plan_memory
from seraphim.scheduler.planner.problem import Buffer, Plan, PlanError, Problem, ProblemError, check_plan, load

__all__ = ["Buffer", "Problem", "Plan", "ProblemError", "PlanError", "TraceFormatError", "load", "check_plan",
           "plan_memory", "read_problem", "write_plan"]
