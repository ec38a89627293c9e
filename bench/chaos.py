"""Chaos: a CTR job and a GAMLP job at BSP, deterministic and strict durability, while processes are SIGKILLed.

Each job runs once without faults, then ``--runs`` times while a bounded number of faults (``--faults`` per run,
drawn with ``--seed``) kill a random PS, worker or the scheduler with SIGKILL at a random moment of the run. The
scheduler restarts a killed PS (it recovers its last snapshot and the pushes it had acknowledged) or worker (it
resumes from the clock the shards hold for it); a killed scheduler is restarted by this bench on its port and data
directory, and the job's processes carry on meanwhile. Every run's final model, the ``model_digest`` of the tables
each worker trained (SHA-256 over every shard), is compared with the fault-free run's: bitwise equal, or the run is
counted unequal with what differs.

Printed: per job and in total ``faults_injected``, ``runs_equal`` (runs whose model is bitwise the fault-free one's)
and ``runs_total``, then each run's faults and outcome as comment lines.

    python bench/chaos.py [--jobs ctr,gamlp] [--runs 3] [--faults 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import print_figures
from e2e import stop_pids
from seraphim.proto import scheduler_pb2
from seraphim.scheduler.client import SchedulerClient
from seraphim.scheduler.embedded import SchedulerProcess

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {scheduler_pb2.SUCCEEDED, scheduler_pb2.FAILED, scheduler_pb2.CANCELLED}
_SCHEDULER_DOWN_S = 1.0  #: how long a killed scheduler stays down before the bench restarts it


def ctr_job(steps: int) -> dict[str, Any]:
    """examples/ctr.yaml, `steps` long, evaluated once at the end."""
    job = yaml.safe_load((REPO / "examples" / "ctr.yaml").read_text())
    job["train"].update(steps=steps, eval_every=0)
    return job


def gamlp_job(nodes: int) -> dict[str, Any]:
    """examples/gamlp.yaml on a graph of `nodes` nodes."""
    job = yaml.safe_load((REPO / "examples" / "gamlp.yaml").read_text())
    job["train"]["graph"]["generate"]["nodes"] = nodes
    return job


def chaos_spec(job: dict[str, Any], name: str) -> dict[str, Any]:
    """The job at BSP, deterministic, strict durability, with restarts to spare for the faults."""
    return {**job, "name": name, "consistency": {"staleness": 0, "deterministic": True},
            "storage": {**job.get("storage", {}), "durability": "strict"},
            "cluster": {**job["cluster"], "max_restarts": 10}}


@dataclass
class Outcome:
    """One run: its state, the model digest of each worker, its wall time, and the faults it got."""

    state: str
    digests: list[str]
    wall_s: float
    faults: list[str] = field(default_factory=list)
    reason: str = ""


class ChaosCluster:
    """A scheduler process this bench can SIGKILL and start again on the same port and data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scheduler = SchedulerProcess(root / "scheduler")
        self.runs = root / "runs"
        self.runs.mkdir(parents=True)
        self.pids: set[int] = set()

    def client(self) -> SchedulerClient:
        return SchedulerClient(self.scheduler.address, token=self.scheduler.token)

    def restart_scheduler(self) -> None:
        self.scheduler.stop(signal.SIGKILL)
        time.sleep(_SCHEDULER_DOWN_S)
        self.scheduler = SchedulerProcess(self.root / "scheduler", port=self.scheduler.port)

    def status(self, job_id: str) -> scheduler_pb2.JobStatus:
        with self.client() as client:
            status = client.job(job_id)
        self.pids.update(n.pid for n in status.nodes if n.pid > 0)
        return status

    def close(self) -> None:
        self.scheduler.stop()
        stop_pids(sorted(self.pids), grace_s=5.0)


def run(cluster: ChaosCluster, spec: dict[str, Any], fault_times: list[float], rng: random.Random,
        timeout_s: float) -> Outcome:
    """Run `spec` to its end, injecting a fault at each of fault_times (seconds after submission)."""
    with cluster.client() as client:
        job_id = client.submit(yaml.safe_dump(spec), "local", str(cluster.runs)).job_id
    start = time.monotonic()
    pending, faults = sorted(fault_times), []
    while True:
        status = cluster.status(job_id)
        if status.state in TERMINAL:
            break
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            with cluster.client() as client:
                client.cancel(job_id)
            return Outcome("HUNG", [], elapsed, faults, f"did not end within {timeout_s:.0f}s; cancelled; see "
                                                         f"{status.run_dir}/logs")
        if pending and elapsed >= pending[0]:
            pending.pop(0)
            faults.append(inject(cluster, status, rng, elapsed))
        time.sleep(0.2)
    wall = time.monotonic() - start
    state = scheduler_pb2.JobState.Name(status.state)
    results = sorted((Path(status.run_dir) / "results").glob("worker-*.json"))
    digests = [json.loads(p.read_text()).get("model_digest", "") for p in results]
    return Outcome(state, digests, wall, faults, status.reason)


def inject(cluster: ChaosCluster, status: scheduler_pb2.JobStatus, rng: random.Random, elapsed: float) -> str:
    """SIGKILL a random running PS, worker or the scheduler; returns what was killed and when."""
    running = [n for n in status.nodes if n.state == "RUNNING" and n.pid > 0]
    target = rng.choice(["scheduler"] + [f"{n.role}-{n.rank}" for n in running])
    if target == "scheduler":
        cluster.restart_scheduler()
    else:
        node = next(n for n in running if f"{n.role}-{n.rank}" == target)
        try:
            os.kill(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            return f"{target} at {elapsed:.1f}s (already gone)"
    return f"{target} at {elapsed:.1f}s (step {status.step})"


def compare(outcome: Outcome, reference: Outcome) -> str:
    """'' when the run's model is bitwise the reference's, else what differs."""
    if outcome.state != "SUCCEEDED":
        return f"the run ended {outcome.state}: {outcome.reason}"
    if len(set(outcome.digests)) != 1:
        return f"its workers ended with different models {[d[:12] for d in outcome.digests]}"
    if outcome.digests != reference.digests:
        return f"model {outcome.digests[0][:12]} differs from the fault-free {reference.digests[0][:12]}"
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", default="ctr,gamlp", help="comma-separated: ctr, gamlp")
    p.add_argument("--runs", type=int, default=3, help="faulted runs per job")
    p.add_argument("--faults", type=int, default=2, help="faults per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", type=Path, help="a new directory to keep the runs in (default: a temporary one)")
    p.add_argument("--ctr-steps", type=int, default=300)
    p.add_argument("--gamlp-nodes", type=int, default=30000)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take before it counts as hung")
    a = p.parse_args(argv)
    jobs = {"ctr": lambda: ctr_job(a.ctr_steps), "gamlp": lambda: gamlp_job(a.gamlp_nodes)}
    chosen = [j.strip() for j in a.jobs.split(",") if j.strip()]
    unknown = sorted(set(chosen) - set(jobs))
    if unknown or not chosen:
        p.error(f"--jobs: unknown {unknown or 'none given'}; choose from {sorted(jobs)}")
    if a.runs < 1 or a.faults < 0:
        p.error(f"need --runs >= 1 and --faults >= 0 (got {a.runs}, {a.faults})")
    rng = random.Random(a.seed)
    figures: dict[str, float] = {}
    notes: list[str] = []
    if a.runs_dir is not None and a.runs_dir.exists():
        p.error(f"--runs-dir {a.runs_dir} exists; give a new directory")
    keep = contextlib.nullcontext(str(a.runs_dir)) if a.runs_dir else None
    with keep or tempfile.TemporaryDirectory(prefix="seraphim-chaos-") as tmp:
        cluster = ChaosCluster(Path(tmp))
        try:
            for name in chosen:
                reference = run(cluster, chaos_spec(jobs[name](), f"{name}-quiet"), [], rng, a.timeout)
                if compare(reference, reference):
                    raise RuntimeError(f"the fault-free {name} run is not usable: {compare(reference, reference)}")
                notes.append(f"# {name}: fault-free run {reference.wall_s:.0f}s, model {reference.digests[0][:12]}")
                equal = injected = 0
                for r in range(a.runs):
                    # faults fall in the run's middle 80%, so each hits a running process rather than start-up
                    times = [rng.uniform(0.1, 0.9) * reference.wall_s for _ in range(a.faults)]
                    outcome = run(cluster, chaos_spec(jobs[name](), f"{name}-chaos-{r}"), times, rng, a.timeout)
                    why = compare(outcome, reference)
                    equal += not why
                    injected += len(outcome.faults)
                    notes.append(f"# {name} run {r}: {'; '.join(outcome.faults) or 'no fault landed'} -> "
                                 f"{'equal' if not why else 'UNEQUAL: ' + why} ({outcome.wall_s:.0f}s)")
                figures |= {f"{name}_faults_injected": injected, f"{name}_runs_equal": equal,
                            f"{name}_runs_total": a.runs}
        finally:
            cluster.close()
    figures |= {key: sum(v for k, v in figures.items() if k.endswith(key))
                for key in ("faults_injected", "runs_equal", "runs_total")}
    print_figures(figures)
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
