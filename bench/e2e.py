"""End-to-end steps/s of the CTR job through ``seraphim run`` with 1 and 2 workers, against the same model trained
in one process with plain torch (``train_reference``) measured in the same run.

Job specs come from examples/ctr.yaml with cluster.workers set to 1 and 2, train.steps set to --steps and
train.eval_every set to 0 (only the final evaluation); the real CLI runs each one in a temporary runs directory.
The peer is ``train_reference`` with the same CTRConfig (model, batch size, steps, data), once with one torch thread
and once with one per core; the faster of the two is the figure compared against, so the peer is never weakened.

Steps/s are global: batches of batch_size examples per second over all workers. Each worker's rate is taken from
its metrics CSV (``seconds``: the worker's clock when it reported the step) over the span from step --warmup to the
second-to-last step, so process start-up, table allocation, JIT warm-up and the final evaluation (written with the
last step) are excluded; the job's rate is the sum of its workers' rates (under BSP their spans coincide). The
reference is timed the same way from its per-step callback. ``*_wall_steps_per_s`` is a second figure: all steps
over the wall-clock time of the whole ``seraphim run`` (process start-up, scheduler and PS start, final evaluation
and run reports included), or of the whole ``train_reference`` call (table allocation and final evaluation included).

A fifth configuration runs 2 workers with ``consistency.deterministic`` (each clock's pushes held on the PS and
applied in worker order): ``ratio_deterministic_vs_bsp_2w`` is its cost, and ``deterministic_runs_equal`` counts
its runs (one per round) whose final model is bitwise the first's (``model_digest``).

The configurations run in --rounds interleaved rounds, the order rotating each round, and each figure is the
best of its rounds, so load from elsewhere on the host falls on all of them alike rather than on whichever ran last.

    python bench/e2e.py [--steps 300] [--warmup 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from common import print_figures
from seraphim.algorithms.ctr.reference import train_reference
from seraphim.algorithms.ctr.train import CTRConfig
from seraphim.scheduler.job_spec import parse_job
from seraphim.scheduler.launchers import process_alive

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JOB = REPO / "examples" / "ctr.yaml"
WORKER_COUNTS = (1, 2)
_CLI_STOP_GRACE_S = 30.0  #: the CLI's own stop waits up to 15 s for its scheduler before killing it
#: `seraphim run` returns while its PS processes still try for 30 s to tell the stopped scheduler they ended;
#: they have flushed their pages by then, so the bench stops them after this grace rather than wait
_LEFTOVER_GRACE_S = 3.0
_STARTED = re.compile(r"started (\S+) \(attempt (\d+), pid (\d+)\)")


@dataclass
class Throughput:
    """One measured run: steady-state global steps/s, steps/s over the whole run's wall clock, and (a platform run)
    the digest of the model worker 0 ended with."""

    steps_per_s: float
    wall_steps_per_s: float
    digest: str = ""


def span_rate(step_seconds: dict[int, float], first: int, last: int, source: str) -> float:
    """Steps per second between the times steps `first` and `last` were reported."""
    missing = [s for s in (first, last) if s not in step_seconds]
    if missing:
        raise RuntimeError(f"{source}: no metrics for step(s) {missing}; it reported steps "
                           f"{min(step_seconds, default=None)}..{max(step_seconds, default=None)}")
    return (last - first) / (step_seconds[last] - step_seconds[first])


def read_step_seconds(path: Path) -> dict[int, float]:
    """step -> seconds from a worker's long-format metrics CSV (step, seconds, name, value); a repeated step
    keeps its latest row, as the CSV's other readers do."""
    with open(path, newline="") as f:
        return {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(f)}


def seraphim_cli() -> list[str]:
    """The installed ``seraphim`` entry point next to this interpreter."""
    exe = Path(sys.executable).with_name("seraphim")
    if not exe.exists():
        raise RuntimeError(f"no `seraphim` command at {exe}; install the package with `pip install -e .` "
                           f"into the environment of {sys.executable}")
    return [str(exe)]


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc); empty where that is not available."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def job_pids(runs_dir: Path) -> list[int]:
    """Pids of the PS and worker processes the jobs under runs_dir started and that still run there: the job
    event logs name them, and a process counts only while its working directory is its job's run directory
    (the local launcher starts it there), so a reused pid is never touched."""
    pids = []
    for log in runs_dir.glob("*/logs/job.log"):
        run_dir = str(log.parent.parent.resolve())
        for pid in (int(m[2]) for m in _STARTED.findall(log.read_text(errors="replace"))):
            try:
                if os.readlink(f"/proc/{pid}/cwd") == run_dir:
                    pids.append(pid)
            except OSError:
                pass
    return pids


def stop_pids(pids: list[int], grace_s: float) -> None:
    """SIGTERM the processes still alive, SIGKILL those that have not exited after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [p for p in pids if process_alive(p)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while any(process_alive(p) for p in alive) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_cli(proc: subprocess.Popen) -> None:
    """SIGINT the CLI's process group (it cancels the job and stops its scheduler on KeyboardInterrupt); SIGKILL
    the group if it has not exited within the grace period, then stop the children it left (its scheduler runs
    in a session of its own)."""
    if proc.poll() is not None:
        return
    children = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=_CLI_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stop_pids(children, _LEFTOVER_GRACE_S)


def run_job(job: dict[str, Any], runs_dir: Path) -> tuple[Path, float]:
    """Run a job spec through ``seraphim run`` into runs_dir; returns its run directory and the wall-clock seconds.
    Every process of the job is gone when this returns (see _LEFTOVER_GRACE_S); a failed run, one without
    results.json, or one whose processes were restarted raises."""
    job_path = runs_dir / f"{job['name']}.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    argv = [*seraphim_cli(), "run", str(job_path), "--runs-dir", str(runs_dir)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=sys.stderr, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        code = proc.wait()
        wall = time.perf_counter() - start
    finally:
        stop_cli(proc)
        stop_pids(job_pids(runs_dir), _LEFTOVER_GRACE_S)
    run_dir = runs_dir / job["name"]
    restarted = [f"{name} attempt {attempt}" for name, attempt, _ in
                 _STARTED.findall((run_dir / "logs" / "job.log").read_text(errors="replace")) if attempt != "1"]
    if code != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited with code {code}; see its messages above and {run_dir}")
    if not (run_dir / "results.json").exists():
        raise RuntimeError(f"`{' '.join(argv)}` exited 0 but wrote no {run_dir / 'results.json'}")
    if restarted:
        raise RuntimeError(f"{run_dir}: processes were restarted during the run ({', '.join(restarted)}); its "
                           f"figures would not be steady-state; see {run_dir / 'logs'}")
    return run_dir, wall


def run_platform(job: dict[str, Any], workers: int, runs_dir: Path, warmup: int, tag: str,
                 steps: int | None = None, deterministic: bool = False) -> Throughput:
    """Run the job with `workers` workers through ``seraphim run`` and measure it from the workers' metrics;
    tag makes the run's name (and so its directory under runs_dir) unique. `steps` is each worker's step count
    (default: the CTR spec's ``train.steps``); `deterministic` sets ``consistency.deterministic``."""
    kind = "det" if deterministic else "e2e"
    job = {**job, "name": f"{job['name']}-{kind}-{workers}w-{tag}", "cluster": {**job["cluster"], "workers": workers},
           "consistency": {**job.get("consistency", {}), "deterministic": deterministic}}
    steps = job["train"]["steps"] if steps is None else steps
    run_dir, wall = run_job(job, runs_dir)
    rates = [span_rate(read_step_seconds(run_dir / "metrics" / f"worker-{r}.csv"), warmup, steps - 2,
                       f"{run_dir}/metrics/worker-{r}.csv") for r in range(workers)]
    digest = json.loads((run_dir / "results" / "worker-0.json").read_text()).get("model_digest", "")
    return Throughput(sum(rates), workers * steps / wall, digest)


def run_reference(config: CTRConfig, threads: int, warmup: int) -> Throughput:
    """Train the same model in this process with `threads` torch threads, timed from a per-step callback."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    step_seconds: dict[int, float] = {}
    try:
        start = time.perf_counter()
        train_reference(config, lambda step, _metrics: step_seconds.__setitem__(step, time.perf_counter()))
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return Throughput(span_rate(step_seconds, warmup, config.steps - 2, f"train_reference ({threads} threads)"),
                      config.steps / wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path, default=DEFAULT_JOB, help="CTR job spec to start from")
    p.add_argument("--steps", type=int, default=300, help="steps per worker (and of the single process)")
    p.add_argument("--warmup", type=int, default=20, help="first step of the measured span")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each figure is the best of them")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be at least 1, got {a.rounds}")
    if a.warmup < 0 or a.steps < a.warmup + 3:
        p.error(f"need 0 <= --warmup and --steps >= --warmup + 3 (got --steps {a.steps}, --warmup {a.warmup})")
    job = yaml.safe_load(a.job.read_text())
    job["train"] = {**job.get("train", {}), "steps": a.steps, "eval_every": 0}
    _, config = parse_job(job, str(a.job))
    if not isinstance(config, CTRConfig):
        p.error(f"--job {a.job}: algorithm {job.get('algorithm')!r} is not ctr")
    cores = os.cpu_count() or 1
    ps = job.get("cluster", {}).get("ps", 2)
    print(f"# host: {cores} cores, shared by the platform's scheduler, {ps} PS and 1 or 2 worker processes; the single "
          f"process uses 1 or {cores} torch threads", flush=True)
    print(f"# {a.steps} steps of {config.batch_size} examples per worker, {config.model}, staleness "
          f"{job.get('consistency', {}).get('staleness', 0)}; steady-state span from step {a.warmup} to step "
          f"{a.steps - 2}; best of {a.rounds} interleaved rounds", flush=True)

    started = time.perf_counter()
    threads = sorted({1, cores})
    configs = [("platform", w) for w in WORKER_COUNTS] + [("deterministic", 2)] + [("single", t) for t in threads]
    measured: dict[tuple[str, int], list[Throughput]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="seraphim-e2e-") as tmp:
        for r in range(a.rounds):
            for kind, n in configs[r % len(configs):] + configs[: r % len(configs)]:
                measured[kind, n].append(
                    run_reference(config, n, a.warmup) if kind == "single"
                    else run_platform(job, n, Path(tmp), a.warmup, f"r{r}", deterministic=kind == "deterministic"))
    best_of = {c: Throughput(max(t.steps_per_s for t in runs), max(t.wall_steps_per_s for t in runs))
               for c, runs in measured.items()}
    platform = {w: best_of["platform", w] for w in WORKER_COUNTS}
    single = {t: best_of["single", t] for t in threads}
    best_threads = max(single, key=lambda t: single[t].steps_per_s)
    best = single[best_threads]

    figures: dict[str, float] = {}
    for w, tp in platform.items():
        figures[f"platform_{w}w_steps_per_s"] = tp.steps_per_s
        figures[f"platform_{w}w_examples_per_s"] = tp.steps_per_s * config.batch_size
        figures[f"platform_{w}w_wall_steps_per_s"] = tp.wall_steps_per_s
    for t, tp in single.items():
        figures[f"single_process_{t}thread_steps_per_s"] = tp.steps_per_s
        figures[f"single_process_{t}thread_wall_steps_per_s"] = tp.wall_steps_per_s
    figures["single_process_steps_per_s"] = best.steps_per_s
    figures["single_process_examples_per_s"] = best.steps_per_s * config.batch_size
    figures["ratio_platform_vs_single_process"] = platform[1].steps_per_s / best.steps_per_s
    figures["ratio_platform_2w_vs_single_process"] = platform[2].steps_per_s / best.steps_per_s
    figures["ratio_platform_vs_single_process_wall"] = (platform[1].wall_steps_per_s
                                                        / max(tp.wall_steps_per_s for tp in single.values()))
    figures["scaling_1_to_2_workers"] = platform[2].steps_per_s / platform[1].steps_per_s
    figures["scaling_1_to_2_workers_wall"] = platform[2].wall_steps_per_s / platform[1].wall_steps_per_s
    deterministic = best_of["deterministic", 2]
    figures["platform_2w_deterministic_steps_per_s"] = deterministic.steps_per_s
    figures["ratio_deterministic_vs_bsp_2w"] = deterministic.steps_per_s / platform[2].steps_per_s
    digests = [t.digest for t in measured["deterministic", 2]]
    figures["deterministic_runs"] = len(digests)
    figures["deterministic_runs_equal"] = digests.count(digests[0])  # runs whose model equals the first's, bitwise
    print(f"# single-process peer: the faster is {best_threads} thread(s); ratios compare against it", flush=True)
    print_figures(figures)
    print(f"# measured in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
