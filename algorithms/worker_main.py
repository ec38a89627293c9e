"""The worker process of a job: one rank of the job's algorithm against the job's PS shards.

Managed (``seraphim worker start --scheduler S --job J --rank R``): it registers with the scheduler, learns the
job spec and the PS addresses from it, heartbeats, sends its metrics there, and resumes from the clock the PS
shards hold for its rank when it is a restart. Direct (``--job FILE --ps A,B --run-dir D``): no scheduler; the
metrics go to ``D/metrics/worker-R.csv`` and the result to ``D/results/worker-R.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from seraphim.algorithms.registry import JobContext, SchedulerAccess, job_class
from seraphim.proto.agent import SchedulerAgent
from seraphim.proto.errors import FatalJobError, SeraphimError
from seraphim.proto.resources import apply_worker_heap_policy
from seraphim.proto.rpc import TlsFiles, resolve_token
from seraphim.proto.telemetry import RpcMetrics, process_registry
from seraphim.scheduler.job_spec import JobSpecError, load_job, parse_job_text
from seraphim.scheduler.metrics_file import MetricsWriter
from seraphim.worker.client import PSClient


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seraphim worker start", description="Run one worker rank of a job.")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--scheduler", help="scheduler address (managed mode)")
    p.add_argument("--job", required=True, help="job id (managed) or job spec YAML file (direct)")
    p.add_argument("--ps", help="comma-separated PS addresses in shard order (direct mode)")
    p.add_argument("--run-dir", type=Path, help="where metrics and results go (direct mode)")
    p.add_argument("--token", help="cluster token (or --token-file, SERAPHIM_TOKEN, SERAPHIM_TOKEN_FILE)")
    p.add_argument("--token-file")
    p.add_argument("--tls-ca", help="CA certificate of the cluster's TLS servers")
    p.add_argument("--tls-server-name", help="name in the servers' certificates, when not their host")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; 1 by default because workers and PS shards share the host's cores "
                        "(torch's one thread per core oversubscribes them: 4.8x slower measured on 2 cores)")
    return p


def run_rank(spec_yaml: str, source: str, rank: int, addresses: list[str], token: str | None,
             tls: TlsFiles | None, run_dir: Path, report: Callable[[int, dict[str, float]], None],
             log: logging.Logger, scheduler: SchedulerAccess | None = None,
             rpc: RpcMetrics | None = None) -> dict[str, Any]:
    """Connect to the PS shards and run this rank of the job from the clock the shards hold for it; the PS calls'
    metrics go to ``rpc``."""
    spec, train = parse_job_text(spec_yaml, source)
    own_ps = spec.cluster.ps_per_worker  # this worker is the only client of its own shards
    with PSClient(addresses, worker_id=0 if own_ps else rank, num_workers=1 if own_ps else spec.cluster.workers,
                  token=token, tls=tls, rpc=rpc) as ps:
        start_step = ps.resume()
        if start_step:
            log.info("resuming at step %d (the clock the PS shards hold for rank %d)", start_step, rank)
        job = job_class(spec.algorithm)(train)
        ctx = JobContext(rank=rank, world_size=spec.cluster.workers, ps=ps, run_dir=run_dir, report=report,
                         log=log, start_step=start_step, scheduler=scheduler)
        log.info("running %s rank %d of %d against %s", spec.name, rank, spec.cluster.workers, addresses)
        return job.run(ctx)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{a.rank} %(levelname)s %(message)s")
    log = logging.getLogger(f"seraphim.worker.{a.rank}")
    tls = TlsFiles(ca=a.tls_ca, server_name=a.tls_server_name) if a.tls_ca else None
    try:
        heap = apply_worker_heap_policy()  # before the job allocates
        if heap:
            log.info("%s", heap)
        token = resolve_token(a.token, a.token_file)
        if a.scheduler:
            return _managed(a, token, tls, log)
        return _direct(a, token, tls, log)
    except (SeraphimError, JobSpecError) as exc:
        log.error("%s", exc)
        return 1


def _direct(a: argparse.Namespace, token: str | None, tls: TlsFiles | None, log: logging.Logger) -> int:
    if not a.ps or not a.run_dir:
        log.error("direct mode needs --ps and --run-dir (or give --scheduler for a managed worker)")
        return 2
    spec_yaml = Path(a.job).read_text() if Path(a.job).is_file() else ""
    load_job(a.job)
    metrics = MetricsWriter(a.run_dir / "metrics" / f"worker-{a.rank}.csv")
    start = time.monotonic()
    try:
        result = run_rank(spec_yaml, a.job, a.rank, a.ps.split(","), token, tls, a.run_dir,
                          lambda step, m: metrics.write_rows((step, time.monotonic() - start, k, v)
                                                             for k, v in m.items()), log)
    finally:
        metrics.close()
    out = a.run_dir / "results" / f"worker-{a.rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    log.info("done: %s", json.dumps(result))
    return 0


def _managed(a: argparse.Namespace, token: str | None, tls: TlsFiles | None, log: logging.Logger) -> int:
    registry = process_registry()
    agent = SchedulerAgent(a.scheduler, a.job, "worker", a.rank, token=token, tls=tls, registry=registry)
    reply = agent.register()
    view = agent.cluster_view()
    agent.start()
    run_dir = Path(reply.run_dir)
    try:
        result = run_rank(reply.spec_yaml, a.job, a.rank, [p.address for p in sorted(view.ps, key=lambda p: p.shard)],
                          token, tls, run_dir, agent.report, log, SchedulerAccess(a.scheduler, token, tls, a.job),
                          RpcMetrics(registry, "seraphim_worker"))
    except Exception as exc:
        agent.finish("FAILED", f"{type(exc).__name__}: {exc}", fatal=isinstance(exc, FatalJobError))
        raise
    if run_dir.is_dir():
        out = run_dir / "results" / f"worker-{a.rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    log.info("done: %s", json.dumps(result))
    agent.finish("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
