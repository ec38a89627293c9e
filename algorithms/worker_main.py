"""The worker process of a job: ``python -m seraphim.algorithms.worker_main --job J --rank R --ps A,B``.

It validates the job spec, connects to the PS shards, runs its rank of the algorithm, and writes its metrics
(``metrics/worker-R.csv``, long format: step, seconds, name, value) and final result (``results/worker-R.json``)
under the run directory, which is how a launcher follows its progress without a socket of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import torch

from seraphim.algorithms.registry import JobContext, job_class
from seraphim.proto.errors import SeraphimError
from seraphim.proto.rpc import resolve_token
from seraphim.scheduler.job_spec import JobSpecError, load_job
from seraphim.worker.client import PSClient


class MetricsWriter:
    """Appends one row per metric per step, flushed every step so a follower sees it at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "seconds", "name", "value"])
        self._start = time.monotonic()

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        t = round(time.monotonic() - self._start, 4)
        self._csv.writerows([step, t, k, float(v)] for k, v in metrics.items())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seraphim worker", description="Run one worker rank of a job.")
    p.add_argument("--job", required=True, help="job spec YAML")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--ps", required=True, help="comma-separated PS addresses, shard order")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--token-file")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; 1 by default because workers and PS shards share the host's cores "
                        "(torch's one thread per core oversubscribes them: 4.8x slower measured on 2 cores)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{a.rank} %(levelname)s %(message)s")
    log = logging.getLogger(f"seraphim.worker.{a.rank}")
    try:
        spec, train = load_job(a.job)
    except JobSpecError as exc:
        log.error("%s", exc)
        return 2
    metrics = MetricsWriter(a.run_dir / "metrics" / f"worker-{a.rank}.csv")
    try:
        with PSClient(a.ps.split(","), worker_id=a.rank, num_workers=spec.cluster.workers,
                      token=resolve_token(None, a.token_file)) as ps:
            job = job_class(spec.algorithm)(train)
            ctx = JobContext(rank=a.rank, world_size=spec.cluster.workers, ps=ps, run_dir=a.run_dir,
                             report=metrics, log=log)
            log.info("starting %s rank %d of %d against %s", spec.name, a.rank, spec.cluster.workers, a.ps)
            result = job.run(ctx)
    except SeraphimError as exc:
        log.error("job failed: %s", exc)
        return 1
    finally:
        metrics.close()
    out = a.run_dir / "results" / f"worker-{a.rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    log.info("done: %s", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
