"""The memory planner: valid plans, optimal on tiny instances (brute force), the MIP beating best fit, the load bound,
CSV errors by line, the plan-memory command as a process, the trace recorder on a small model, the bi-level plan,
and the caching-allocator emulation on hand-made sequences."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seraphim.scheduler.planner import (PlanError, Problem, ProblemError, TraceFormatError, check_plan, load,
                                        plan_memory, read_problem, write_plan)
from seraphim.scheduler.planner.best_fit import best_fit
from seraphim.scheduler.planner.best_fit_kernels import ON_TOP, place_in_order
from seraphim.scheduler.planner.bilevel import Window, plan_bilevel
from seraphim.scheduler.planner.caching_allocator import CachingAllocator, replay_caching_allocator
from seraphim.scheduler.planner.canonical_search import CanonicalSearch
from seraphim.scheduler.planner.mip import solve_mip
from seraphim.scheduler.planner.problem import peak_of
from seraphim.worker.memory_trace import record_memory

DSA = Path(__file__).parent / "data" / "dsa"
KIB, MIB = 1 << 10, 1 << 20


def random_problem(rng: np.random.Generator, n: int, horizon: int = 6, longest: int = 5,
                   largest: int = 30) -> Problem:
    lower = rng.integers(0, horizon, n)
    return Problem(tuple(f"b{i}" for i in range(n)), lower, lower + rng.integers(1, longest, n),
                   rng.integers(1, largest, n))


def brute_force_peak(problem: Problem) -> int:
    """The optimum: some order stacks every buffer on the earlier ones it meets (the order of an optimal plan's
    offsets does), so the best stacking over all orders is optimal."""
    return min(peak_of(problem, place_in_order(problem.lower, problem.upper, problem.size, np.array(order), ON_TOP))
               for order in itertools.permutations(range(len(problem))))


def test_plans_are_valid_on_random_instances():
    rng = np.random.default_rng(0)
    for n in (1, 2, 10, 40, 80):
        problem = random_problem(rng, n, horizon=3 * n + 1, longest=n // 2 + 2, largest=1000)
        greedy, _ = best_fit(problem)
        plan = plan_memory(problem, time_limit_s=0.5)
        assert check_plan(problem, greedy) >= plan.peak == check_plan(problem, plan.offsets) >= load(problem)
        assert plan.lower_bound >= load(problem) and 0 <= plan.gap < 1


def test_plans_match_brute_force_on_tiny_instances():
    rng = np.random.default_rng(1)
    for _ in range(12):
        problem = random_problem(rng, 6)
        optimum = brute_force_peak(problem)
        assert plan_memory(problem, time_limit_s=2.0).peak == optimum
        searched = CanonicalSearch(problem).minimize(best_fit(problem)[0], load(problem), time_limit_s=2.0)
        assert searched.peak == optimum and searched.proven_lower_bound <= optimum


def test_mip_reaches_the_optimum_where_best_fit_does_not():
    problem = Problem(tuple("abcdef"), np.array([3, 4, 1, 1, 3, 4]), np.array([6, 5, 5, 4, 4, 5]),
                      np.array([3, 5, 3, 6, 1, 3]))  # found by drawing random instances until best fit missed
    optimum = brute_force_peak(problem)
    greedy = best_fit(problem)[0]
    solved = solve_mip(problem, greedy, load(problem), time_limit_s=10.0)
    assert peak_of(problem, greedy) > solved.peak == optimum == check_plan(problem, solved.offsets)
    assert solved.optimal and solved.bound == optimum
    plan = plan_memory(problem, time_limit_s=5.0)
    assert plan.peak == plan.lower_bound == optimum and plan.gap == 0


def test_load_is_the_most_bytes_alive_at_one_time():
    rng = np.random.default_rng(4)
    for _ in range(20):
        problem = random_problem(rng, 15, horizon=10)
        alive = [problem.size[(problem.lower <= t) & (t < problem.upper)].sum() for t in range(20)]
        assert load(problem) == max(alive)
    back_to_back = Problem(("a", "b"), np.array([0, 3]), np.array([3, 6]), np.array([5, 7]))
    assert load(back_to_back) == 7
    assert check_plan(back_to_back, np.array([0, 0])) == 7  # half-open: b may reuse a's bytes


def test_check_plan_names_the_overlapping_buffers():
    problem = Problem(("a", "b", "c"), np.array([0, 1, 5]), np.array([4, 3, 9]), np.array([4, 4, 4]))
    assert check_plan(problem, np.array([0, 4, 0])) == 8
    with pytest.raises(PlanError, match=r"buffers 'a' and 'b' .*memory \(\[0, 4\) and \[2, 6\)\)"):
        check_plan(problem, np.array([0, 2, 0]))
    with pytest.raises(PlanError, match="offsets for 3 buffers"):
        check_plan(problem, np.array([0, 4]))
    with pytest.raises(PlanError, match="negative offset"):
        check_plan(problem, np.array([0, -4, 0]))


def test_a_challenging_instance_reaches_its_best_known_peak():
    for name in ("K", "I"):
        problem = read_problem(DSA / f"{name}.1048576.csv")
        plan = plan_memory(problem, time_limit_s=5.0)
        assert check_plan(problem, plan.offsets) == plan.peak == plan.lower_bound == 1_048_576
        assert peak_of(problem, best_fit(problem)[0]) > 1.1 * plan.peak


BAD_CSVS = [
    ("", "line 1: empty"),
    ("id,lower,size\na,0,4\n", "line 1: .* lacks column\\(s\\) upper"),
    ("buffer,start,end,size\na,0,3,4\n", "line 1: the old MiniMalloc header"),
    ("id,lower,upper,size,alignment\na,0,3,4,8\n", "line 1: unsupported column\\(s\\) alignment"),
    ("id,lower,upper,size\na,0,3,4\nb,1,5\n", "line 3: 3 fields, the header has 4"),
    ("id,lower,upper,size\na,0,3,4\n\nb,1,x,4\n", "line 4: upper 'x' is not an integer"),
    ("id,lower,upper,size\na,0,3,4\nb,5,5,4\n", "line 3: lower 5 >= upper 5"),
    ("id,lower,upper,size\na,0,3,-4\n", "line 2: size -4 is negative"),
    ("id,lower,upper,size\na,0,3,4\nb,1,2,4\na,2,6,1\n", "line 4: id 'a' repeats line 2"),
]


@pytest.mark.parametrize("text,message", BAD_CSVS)
def test_csv_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError, match=f"{re.escape(str(path))}: {message}"):
        read_problem(path)


def test_csv_round_trip_keeps_rows_and_adds_offsets(tmp_path):
    source = tmp_path / "trace.csv"
    source.write_text("size,id,upper,lower\n4,b1,3,0\n4,b2,9,3\n4,b3,9,0\n4,b4,21,9\n4,b5,21,0\n")
    problem = read_problem(source)
    assert problem.ids == ("b1", "b2", "b3", "b4", "b5") and problem.upper.tolist() == [3, 9, 9, 21, 21]
    plan = plan_memory(problem, time_limit_s=1.0)
    assert plan.peak == 12 == load(problem)  # MiniMalloc's examples/input.12, columns shuffled
    write_plan(tmp_path / "plan.csv", plan)
    lines = (tmp_path / "plan.csv").read_text().splitlines()
    assert lines[0] == "id,lower,upper,size,offset" and lines[1].startswith("b1,0,3,4,")
    again = read_problem(tmp_path / "plan.csv")  # the offset column is read past
    offsets = np.array([int(line.rsplit(",", 1)[1]) for line in lines[1:]])
    assert again.ids == problem.ids and check_plan(again, offsets) == 12


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seraphim.scheduler.cli", "plan-memory", *args],
                          capture_output=True, text=True, timeout=120)


def test_plan_memory_command_prints_three_lines_and_writes_the_plan(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text((DSA / "H.1048576.csv").read_text())
    done = run_cli(str(trace), "--out", str(tmp_path / "plan.csv"), "--time-limit", "5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["peak", "lower_bound", "solve_s"]
    assert lines[0] == "peak: 1048576" and lines[1] == "lower_bound: 1048576"
    assert re.fullmatch(r"solve_s: \d+\.\d{3}", lines[2]) and float(lines[2].split()[1]) < 5
    rows = (tmp_path / "plan.csv").read_text().splitlines()
    offsets = np.array([int(row.rsplit(",", 1)[1]) for row in rows[1:]])
    assert check_plan(read_problem(trace), offsets) == 1048576
    trace.write_text("id,lower,upper,size\na,0,3,4\na,1,2,4\n")
    done = run_cli(str(trace))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"seraphim: error: {trace}: line 3: id 'a' repeats line 2; ids must be unique"


def test_recorder_sees_the_tensors_of_a_small_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    trace = record_memory(lambda: net(x).sum().backward(), layers=dict(net.named_children()))
    seen = [(b.op, b.size, b.scope) for b in trace.buffers]
    assert seen == [("addmm", 5 * 16 * 4, "0/forward"), ("relu", 5 * 16 * 4, "1/forward"),
                    ("addmm", 5 * 4 * 4, "2/forward"), ("sum", 4, ""), ("ones_like", 4, ""),
                    ("mm", 5 * 16 * 4, "2/backward"), ("mm", 16 * 4 * 4, "2/backward"), ("sum", 4 * 4, "2/backward"),
                    ("threshold_backward", 5 * 16 * 4, "1/backward"), ("mm", 16 * 8 * 4, ""), ("sum", 16 * 4, "")]
    assert all(b.lower < b.upper for b in trace.buffers)
    assert trace.buffers[9].upper == max(b.upper for b in trace.buffers)  # the first weight's gradient outlives the step
    relu = trace.buffers[1]
    assert relu.upper > trace.buffers[8].lower  # ReLU's output is kept for backward
    assert [(w.layer, w.phase) for w in trace.windows] == [("0", "forward"), ("1", "forward"), ("2", "forward"),
                                                            ("2", "backward"), ("1", "backward"), ("0", "backward")]


def test_bilevel_plans_identical_layers_once_and_stays_valid():
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
                                 for _ in range(3))
    x = torch.randn(6, 32, requires_grad=True)

    def step() -> None:
        h = x
        for layer in layers:
            h = torch.tanh(layer(h)) + h
        h.square().sum().backward()

    trace = record_memory(step, layers={f"l{k}": layer for k, layer in enumerate(layers)})
    problem = Problem.from_buffers(b[:4] for b in trace.buffers)  # id, lower, upper, size
    windows = [Window(w.layer, w.phase, w.lower, w.upper) for w in trace.windows]
    result = plan_bilevel(problem, windows, time_limit_s=2.0)
    assert check_plan(problem, result.plan.offsets) == result.plan.peak >= load(problem)
    assert len(windows) == 6 and result.distinct_layer_problems == 2  # one forward, one backward problem
    assert 0 < result.outer_buffers < len(problem)
    with pytest.raises(ProblemError, match="overlap in time"):
        plan_bilevel(problem, windows + [Window("x", "forward", windows[0].lower, windows[0].upper)])


def test_caching_allocator_fragments_the_small_pool_as_specified():
    allocator = CachingAllocator()
    a, b, c = (allocator.malloc(600 * KIB) for _ in range(3))  # one 2 MiB segment, split three times
    assert (a, b, c, allocator.reserved) == (0, 600 * KIB, 1200 * KIB, 2 * MIB)
    allocator.free(b)  # 600 KiB and 248 KiB free, neither fits 700 KiB: a new segment
    assert allocator.malloc(700 * KIB) == 2 * MIB and allocator.reserved == 4 * MIB
    allocator.free(a)  # merges with b: 1200 KiB free at 0
    assert allocator.malloc(1000 * KIB + 1) == 0 and allocator.reserved == 4 * MIB  # rounded to 512: 1000.5 KiB
    assert allocator.allocated == (1000 * KIB + 512) + 600 * KIB + 700 * KIB


def test_caching_allocator_large_pool_segments_and_split_rule():
    allocator = CachingAllocator()
    assert allocator.malloc(5 * MIB) == 0 and allocator.reserved == 20 * MIB  # 1-10 MiB: a 20 MiB segment
    assert allocator.malloc(12 * MIB) == 5 * MIB  # best fit in the 15 MiB remainder, 3 MiB left (> 1 MiB: split)
    assert allocator.malloc(2 * MIB + 512 * KIB) == 17 * MIB  # 3 MiB block, 512 KiB left (<= 1 MiB): not split
    assert allocator.allocated == 20 * MIB
    assert allocator.malloc(11 * MIB + 1) == 20 * MIB and allocator.reserved == 32 * MIB  # >= 10 MiB: 2 MiB rounding
    problem = Problem(("x", "y", "z"), np.array([0, 1, 2]), np.array([2, 3, 4]), np.array([3 * MIB, 3 * MIB, 3 * MIB]))
    stats = replay_caching_allocator(problem)  # x is freed at 2, before z arrives: z takes x's block
    assert stats.reserved_peak == 20 * MIB and stats.requested_peak == 6 * MIB and stats.addresses[2] == 0
    assert check_plan(problem, stats.addresses) <= stats.reserved_peak
