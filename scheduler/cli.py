"""The ``seraphim`` command.

``seraphim run JOB.yaml`` is the embedded default: it starts the PS shards and the workers of a job as local
processes on loopback, shows its progress, and leaves everything under ``runs/<job>/``. ``seraphim ps start``
runs one PS shard by hand.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from pathlib import Path

from seraphim.proto.errors import SeraphimError
from seraphim.scheduler.job_spec import JobSpecError, load_job
from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec
from seraphim.scheduler.progress import MetricsFollower, ProgressBar


class CLIError(Exception):
    """A problem to report in one line, with a non-zero exit."""


def new_run_dir(root: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when earlier runs exist: an earlier run is never touched."""
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = root / name, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{name}-{n}"
    candidate.mkdir()
    return candidate


def cmd_run(args: argparse.Namespace) -> int:
    spec, train = load_job(args.job)
    job_cls_steps = _total_steps(spec.algorithm, train)
    run_dir = new_run_dir(Path(args.runs_dir or spec.storage.dir), spec.name)
    shutil.copyfile(args.job, run_dir / "job.yaml")
    token = secrets.token_hex(16)
    (run_dir / "token").write_text(token)
    (run_dir / "token").chmod(0o600)
    ps_spec = PSProcessSpec(num_ps=spec.cluster.ps, num_workers=spec.cluster.workers,
                            staleness=spec.consistency.staleness, ram_mb=spec.storage.ram_mb,
                            page_kb=spec.storage.page_kb, durability=spec.storage.durability,
                            snapshot_every=spec.storage.snapshot_every, token=token)
    print(f"seraphim: running {spec.name} ({spec.algorithm}) with {spec.cluster.ps} PS and "
          f"{spec.cluster.workers} workers in {run_dir}", file=sys.stderr)
    follower = MetricsFollower(run_dir / "metrics")
    bar = ProgressBar(job_cls_steps)
    with LocalCluster(run_dir / "ps", ps_spec, log_dir=run_dir / "logs") as cluster:
        workers = [cluster.start_worker(["-m", "seraphim.algorithms.worker_main", "--job", str(run_dir / "job.yaml"),
                                         "--rank", str(r), "--ps", ",".join(cluster.addresses),
                                         "--run-dir", str(run_dir)], f"worker-{r}")
                   for r in range(spec.cluster.workers)]
        while any(w.poll() is None for w in workers):
            failed = [r for r, w in enumerate(workers) if w.poll() not in (None, 0)]
            if failed:
                break
            follower.poll()
            bar.draw(follower)
            time.sleep(0.5)
        follower.poll()
        bar.draw(follower, final=True)
        failed = [r for r, w in enumerate(workers) if w.poll() not in (None, 0)]
        if failed:
            tail = cluster.tail(f"worker-{failed[0]}", 5)
            raise CLIError(f"worker {failed[0]} failed (exit {workers[failed[0]].returncode}); "
                           f"log {run_dir / 'logs' / f'worker-{failed[0]}.log'}:\n{tail}")
    results = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "results").glob("worker-*.json"))}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    for name, res in results.items():
        print(f"{name}: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in res.items()), file=sys.stderr)
    print(f"seraphim: {spec.name} finished; results in {run_dir}", file=sys.stderr)
    return 0


def _total_steps(algorithm: str, train) -> int:
    from seraphim.algorithms.registry import job_class

    return job_class(algorithm)(train).total_steps()


def cmd_ps_start(args: argparse.Namespace, rest: list[str]) -> int:
    from seraphim.ps.main import main as ps_main

    return ps_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seraphim", description="Seraphim parameter-server platform")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job on local processes (the embedded default)")
    run.add_argument("job", help="job spec YAML, e.g. examples/ctr.yaml")
    run.add_argument("--runs-dir", help="where runs/<job> goes (default: the spec's storage.dir)")
    ps = sub.add_parser("ps", help="parameter-server roles")
    ps_sub = ps.add_subparsers(dest="ps_command", required=True)
    ps_sub.add_parser("start", help="run one PS shard (see `seraphim ps start --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["ps", "start"]:
        return cmd_ps_start(argparse.Namespace(), argv[2:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
    except (CLIError, JobSpecError, SeraphimError, OSError) as exc:
        print(f"seraphim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seraphim: interrupted; every process started was stopped", file=sys.stderr)
        return 130
    return 2
