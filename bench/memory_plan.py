"""Memory planner quality: public DSA instances against their best-known peaks, and recorded Transformer traces
against PyTorch's CUDA caching allocator (emulated), all measured in one run.

DSA instances (../shared/dsa, or --dsa-dir): per instance the buffers, the load (lower bound), the best-known peak,
the best-fit peak, the planner's peak (best fit -> canonical search -> MIP within --time-limit), the emulated
caching allocator's reserved bytes (frees in lifetime order) and the solve time. Instances above --max-search
buffers get best fit and the lower bound only. IREE's files have inclusive lifetimes and are converted.

Traces: forward + backward of the LM (lm.transformer's model) recorded on CPU by worker/memory_trace.py at three
sequence lengths. Sizes are rounded up to the allocator's 512-byte
granule for every contender. Each trace is planned flat (plan_memory) and bi-level (MEMO, layers as windows), and
replayed through the caching-allocator emulation. To add traces, add a function to TRACE_SOURCES.

    python bench/memory_plan.py [--time-limit 30] [--dsa-dir ../shared/dsa] [--max-search 5000] [--skip-dsa]

Summary lines: challenging_within_1pct (of the 11 MiniMalloc challenging instances, planner peak <= 1.01 x
best-known), max_solve_s (over the instances the planner searched), ratio_vs_caching_allocator (flat planned peak
/ emulated reserved bytes, worst trace; below 1 means the plan needs less memory), and the bi-level ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from common import print_figures

HERE = Path(__file__).resolve().parent
# Best-known peaks from ../shared/dsa/README.md §3 (sources there: MiniMalloc's capacity 2^20 for A..K, placements
# verified from kwon-young/array for C, D, J; IREE's own placement for the iree files). None: none published.
BEST_KNOWN = {
    "minimalloc/challenging/A.1048576": 1_048_576, "minimalloc/challenging/B.1048576": 1_048_576,
    "minimalloc/challenging/C.1048576": 1_047_552, "minimalloc/challenging/D.1048576": 1_048_576,
    "minimalloc/challenging/E.1048576": 1_048_576, "minimalloc/challenging/F.1048576": 1_048_576,
    "minimalloc/challenging/G.1048576": 1_048_576, "minimalloc/challenging/H.1048576": 1_048_576,
    "minimalloc/challenging/I.1048576": 1_048_576, "minimalloc/challenging/J.1048576": 1_048_576,
    "minimalloc/challenging/K.1048576": 1_048_576, "minimalloc/examples/input.12": 12,
    "idealloc/iree/iree_mobilenet": 7_311_744, "idealloc/iree/iree_mobilebert": 2_408_448,
}
INCLUSIVE = ("idealloc/iree/",)  # lifetimes [lower, upper] in these files


def dsa_instances(root: Path) -> Iterator[tuple[str, "Problem"]]:
    from seraphim.scheduler.planner import Problem, read_problem
    for path in sorted(root.glob("*/*/*.csv")):
        name = str(path.relative_to(root).with_suffix(""))
        problem = read_problem(path)
        if name.startswith(INCLUSIVE):
            problem = Problem(problem.ids, problem.lower, problem.upper + 1, problem.size)
        yield name, problem


def bench_dsa(root: Path, time_limit: float, max_search: int) -> dict[str, float]:
    from seraphim.scheduler.planner import load, plan_memory
    from seraphim.scheduler.planner.best_fit import best_fit
    from seraphim.scheduler.planner.caching_allocator import replay_caching_allocator
    from seraphim.scheduler.planner.problem import check_plan
    print(f"{'instance':40s} {'buffers':>7s} {'lower_bound':>15s} {'best_known':>15s} {'best_fit':>15s} "
          f"{'planner':>15s} {'vs_known':>8s} {'caching_alloc':>15s} {'method':>8s} {'solve_s':>8s}")
    within, challenging, max_solve = 0, 0, 0.0
    for name, problem in dsa_instances(root):
        start = time.perf_counter()
        greedy = check_plan(problem, best_fit(problem)[0])
        greedy_s = time.perf_counter() - start
        if len(problem) <= max_search:
            plan = plan_memory(problem, time_limit_s=time_limit)
            peak, method, solve_s = check_plan(problem, plan.offsets), plan.method, plan.solve_s
            lower = plan.lower_bound
            max_solve = max(max_solve, solve_s)
        else:
            peak, method, solve_s, lower = greedy, "bf only", greedy_s, load(problem)
        known = BEST_KNOWN.get(name)
        reserved = replay_caching_allocator(problem).reserved_peak
        versus = f"{peak / known - 1:+.2%}" if known else "-"
        print(f"{name:40s} {len(problem):7d} {lower:15d} {known or '-':>15} {greedy:15d} {peak:15d} {versus:>8s} "
              f"{reserved:15d} {method:>8s} {solve_s:8.2f}", flush=True)
        if name.startswith("minimalloc/challenging/"):
            challenging += 1
            within += peak <= 1.01 * known
    return {"challenging_instances": challenging, "challenging_within_1pct": within, "max_solve_s": max_solve}


def lm_traces() -> Iterator[tuple[str, "MemoryTrace", list[str]]]:
    """Forward + backward of the lm.transformer model (Llama architecture, 4 layers of width 256, GQA, SwiGLU,
    vocabulary 4096) at three sequence lengths, batch 4; yields (name, trace, layer names)."""
    import torch
    from seraphim.algorithms.transformer.model import PRESETS, TransformerConfig, build_model
    from seraphim.worker.memory_trace import record_memory
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(TransformerConfig(**PRESETS["lm-small"]))
    names = {f"layer{k}": layer for k, layer in enumerate(model.model.layers)}
    for seq in (128, 256, 512):
        tokens = torch.randint(0, model.config.vocab_size, (4, seq + 1))
        yield (f"lm_s{seq}", record_memory(lambda: model(tokens[:, :-1], tokens[:, 1:]).backward(), layers=names),
               list(names))


TRACE_SOURCES: list[Callable[[], Iterator[tuple[str, "MemoryTrace", list[str]]]]] = [lm_traces]


def bench_traces(time_limit: float) -> dict[str, float]:
    from seraphim.scheduler.planner import Problem, plan_memory
    from seraphim.scheduler.planner.bilevel import Window, plan_bilevel
    from seraphim.scheduler.planner.caching_allocator import MIN_BLOCK, replay_caching_allocator
    from seraphim.scheduler.planner.problem import check_plan
    print(f"{'trace':22s} {'buffers':>7s} {'windows':>7s} {'lower_bound':>12s} {'flat_peak':>12s} {'bilevel':>12s} "
          f"{'reserved':>12s} {'allocated':>12s} {'flat/res':>8s} {'bilevel/res':>11s} {'flat_s':>7s} {'bilevel_s':>9s}")
    worst_flat = worst_bilevel = 0.0
    for source in TRACE_SOURCES:
        for name, trace, _ in source():
            problem = Problem.from_buffers((b.id, b.lower, b.upper, -(-b.size // MIN_BLOCK) * MIN_BLOCK)
                                           for b in trace.buffers)
            windows = [Window(w.layer, w.phase, w.lower, w.upper) for w in trace.windows]
            flat = plan_memory(problem, time_limit_s=time_limit)
            bilevel = plan_bilevel(problem, windows, time_limit_s=time_limit).plan
            check_plan(problem, flat.offsets)
            check_plan(problem, bilevel.offsets)
            emulated = replay_caching_allocator(problem)
            flat_ratio, bilevel_ratio = flat.peak / emulated.reserved_peak, bilevel.peak / emulated.reserved_peak
            worst_flat, worst_bilevel = max(worst_flat, flat_ratio), max(worst_bilevel, bilevel_ratio)
            print(f"{name:22s} {len(problem):7d} {len(windows):7d} {flat.lower_bound:12d} {flat.peak:12d} "
                  f"{bilevel.peak:12d} {emulated.reserved_peak:12d} {emulated.allocated_peak:12d} {flat_ratio:8.3f} "
                  f"{bilevel_ratio:11.3f} {flat.solve_s:7.2f} {bilevel.solve_s:9.2f}", flush=True)
    return {"ratio_vs_caching_allocator": worst_flat, "ratio_bilevel_vs_caching_allocator": worst_bilevel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30.0, help="planner seconds per instance or trace")
    parser.add_argument("--dsa-dir", type=Path, default=HERE.parent.parent / "shared" / "dsa")
    parser.add_argument("--max-search", type=int, default=5000, help="buffers above which only best fit runs")
    parser.add_argument("--skip-dsa", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    figures: dict[str, float] = {}
    if not args.skip_dsa:
        if not args.dsa_dir.is_dir():
            sys.exit(f"--dsa-dir {args.dsa_dir}: not a directory (the public DSA instances, ../shared/dsa)")
        figures |= bench_dsa(args.dsa_dir, args.time_limit, args.max_search)
    figures |= bench_traces(args.time_limit)
    print_figures(figures)


if __name__ == "__main__":
    main()
