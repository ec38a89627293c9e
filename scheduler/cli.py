"""The ``seraphim`` command.

``seraphim run JOB.yaml`` is the embedded default: a scheduler, the PS shards and the workers as local processes on
loopback, a progress bar, and everything under ``runs/<job>/``. The roles by hand for a cluster of hosts:
``seraphim scheduler start``, ``seraphim ps start``, ``seraphim worker start``; jobs: ``submit``, ``status``,
``jobs``, ``logs``, ``cancel``; ``plan-memory TRACE.csv`` plans a memory trace; ``lr-advise`` reads a finished
run; ``export`` writes an LM run for Hugging Face. Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import DeadlineExceeded, SeraphimError, Unavailable
from seraphim.proto.resources import apply_worker_openmp_env
from seraphim.proto.rpc import TlsFiles, resolve_token
from seraphim.scheduler.client import SchedulerClient, default_address
from seraphim.scheduler.embedded import SchedulerProcess
from seraphim.scheduler.job_spec import JobSpecError, load_job
from seraphim.scheduler.master import TERMINAL
from seraphim.scheduler.progress import ProgressBar

STATE = scheduler_pb2.JobState.Name
_NOTABLE = re.compile(r"missed heartbeats|exited|failed|lost|attempt ([2-9]|\d\d+)|restarted")


class CLIError(Exception):
    """A problem to report in one line, with a non-zero exit."""


def _client(args: argparse.Namespace) -> SchedulerClient:
    token = resolve_token(getattr(args, "token", None), getattr(args, "token_file", None))
    tls = TlsFiles(ca=args.tls_ca, server_name=args.tls_server_name) if getattr(args, "tls_ca", None) else None
    return SchedulerClient(args.scheduler or default_address(), token=token, tls=tls)


def _storage_root(path: str) -> Path:
    root = Path(path).resolve()
    if not root.parent.is_dir():
        raise CLIError(f"storage.dir {path!r}: its parent directory {str(root.parent)!r} does not exist")
    if root.exists() and not root.is_dir():
        raise CLIError(f"storage.dir {path!r} exists and is not a directory")
    root.mkdir(exist_ok=True)
    return root


def cmd_run(args: argparse.Namespace) -> int:
    """Run a job on local processes; Ctrl-C or SIGTERM cancels it, and nothing it started outlives it.

    The signals only set a flag that the progress loop acts on between RPCs: a KeyboardInterrupt raised inside a
    gRPC call could leave the call's lock held, and closing the channel then hung the exit."""
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: interrupted.set())
    spec, _ = load_job(args.job)
    root = _storage_root(args.runs_dir or spec.storage.dir)
    try:
        scheduler = SchedulerProcess(root / ".scheduler", heartbeat_timeout_s=args.heartbeat_timeout,
                                     http_port=args.http_port)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None
    print(f"dashboard: {scheduler.dashboard_url}", file=sys.stderr)
    client = SchedulerClient(scheduler.address, token=scheduler.token)
    job_id = ""
    try:
        status = client.submit(Path(args.job).read_text(), "local", str(root))
        job_id = status.job_id
        print(f"seraphim: {spec.name} ({spec.algorithm}) is job {job_id}: {spec.cluster.ps} PS, "
              f"{spec.cluster.workers} workers; run directory {status.run_dir}", file=sys.stderr)
        status = follow(client, job_id, interrupted)
    except BaseException:  # Ctrl-C, SIGTERM or a scheduler that stopped answering: the job's processes go too
        if job_id:
            _cancel_quietly(client, job_id)
        raise
    finally:
        client.close()
        scheduler.stop()
    return report_end(status)


def _cancel_quietly(client: SchedulerClient, job_id: str) -> None:
    """Cancel a job on the way out of `seraphim run`; a scheduler that cannot be reached is already stopping."""
    try:
        client.cancel(job_id)
    except SeraphimError as exc:
        print(f"seraphim: could not cancel job {job_id}: {exc}", file=sys.stderr)


def follow(client: SchedulerClient, job_id: str, interrupted: threading.Event,
           patience_s: float = 60.0) -> scheduler_pb2.JobStatus:
    """Redraw the progress bar until the job ends or `interrupted` is set (then KeyboardInterrupt); print the job's
    events as they happen. A scheduler busy past an RPC deadline or briefly unreachable is asked again for up to
    patience_s before the run gives up."""
    status = client.job(job_id)
    bar = ProgressBar(status.total_steps)
    events = 0
    failing_since: float | None = None
    while True:
        try:
            status = client.job(job_id)
            lines = [line for chunk in client.logs(job_id, source="job") for line in chunk.text.splitlines()]
            failing_since = None
        except (DeadlineExceeded, Unavailable):
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > patience_s:
                raise
            if interrupted.wait(1.0):
                raise KeyboardInterrupt("interrupted") from None
            continue
        for line in lines[events:]:
            if _NOTABLE.search(line):
                bar.note(line)
        events = len(lines)
        bar.draw(status, final=status.state in TERMINAL)
        if status.state in TERMINAL:
            return status
        if interrupted.wait(0.5):
            raise KeyboardInterrupt("interrupted")


def report_end(status: scheduler_pb2.JobStatus) -> int:
    run_dir = Path(status.run_dir)
    results = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "results").glob("worker-*.json"))}
    if results:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    for name, res in results.items():
        texts = {k: v for k, v in res.items() if isinstance(v, list) and v and all(isinstance(t, str) for t in v)}
        print(f"{name}: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in res.items() if k not in texts), file=sys.stderr)
        for key, items in texts.items():  # generated text: one block per item, indented under the worker
            for item in items:
                print(f"  {key}: " + item.replace("\n", "\n    "), file=sys.stderr)
    if status.state != scheduler_pb2.SUCCEEDED:
        raise CLIError(f"job {status.job_id} {STATE(status.state)}: {status.reason or 'no reason given'} "
                       f"(logs in {run_dir / 'logs'})")
    restarts = f" after {status.restarts} restarts" if status.restarts else ""
    print(f"seraphim: {status.name} succeeded{restarts}; metrics, plot, checkpoints and logs in {run_dir}",
          file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    spec, _ = load_job(args.job)
    root = Path(args.runs_dir or spec.storage.dir).resolve()
    with _client(args) as client:
        status = client.submit(Path(args.job).read_text(), args.launcher or "", str(root))
    print(status.job_id)
    print(f"seraphim: submitted {status.job_id} ({status.launcher}); run directory {status.run_dir}",
          file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a finished LM run's model as a Hugging Face Llama directory."""
    from seraphim.algorithms.transformer.export import ExportError, export_run

    try:
        out = export_run(Path(args.run_dir), Path(args.out))
    except ExportError as exc:
        raise CLIError(str(exc)) from None
    print(f"seraphim: exported {args.run_dir} to {out} (transformers: LlamaForCausalLM.from_pretrained)",
          file=sys.stderr)
    return 0


def _line(s: scheduler_pb2.JobStatus) -> str:
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(s.metrics.items()) if k in ("train_loss", "auc", "loss"))
    return f"{s.job_id:<28} {STATE(s.state):<10} step {s.step}/{s.total_steps}  {metrics}".rstrip()


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if not args.job_id:
            for s in client.jobs():
                print(_line(s))
            return 0
        s = client.job(args.job_id)
    print(_line(s))
    if s.reason:
        print(f"  reason: {s.reason}")
    print(f"  run directory: {s.run_dir}  launcher: {s.launcher}  restarts: {s.restarts}")
    for n in s.nodes:
        where = f" at {n.address}" if n.address else ""
        print(f"  {n.role}-{n.rank}: {n.state} attempt {n.attempt} pid {n.pid}{where} step {n.step}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for chunk in client.logs(args.job_id, source=args.source or "", follow=args.follow):
            prefix = "" if args.source else f"[{chunk.source}] "
            for line in chunk.text.splitlines():
                print(prefix + line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        s = client.cancel(args.job_id)
    print(f"seraphim: {s.job_id} {STATE(s.state)}")
    return 0


def cmd_plan_memory(args: argparse.Namespace) -> int:
    """Plan a DSA trace (best fit, exact search, MIP within the time limit); print peak, lower bound, time."""
    from seraphim.scheduler.planner import ProblemError, TraceFormatError, plan_memory, read_problem, write_plan
    if args.time_limit <= 0:
        raise CLIError(f"--time-limit {args.time_limit}: must be positive (seconds)")
    try:
        plan = plan_memory(read_problem(args.trace), time_limit_s=args.time_limit)
    except (TraceFormatError, ProblemError) as exc:
        raise CLIError(str(exc)) from None
    if args.out:
        write_plan(args.out, plan)
    print(f"peak: {plan.peak}\nlower_bound: {plan.lower_bound}\nsolve_s: {plan.solve_s:.3f}")
    return 0


def cmd_lr_advise(args: argparse.Namespace) -> int:
    """Surge's learning rate at ``--batch`` from a run: B_noise from its sweep (``surge.json``) or its last logged
    ``b_noise`` metric; the reference point from the flags, the run's ``train.batch_size``/``train.lr``, or the
    sweep's fitted eps_max."""
    from seraphim.algorithms.lr_scaling import lr_curve, lr_for_batch

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CLIError(f"run directory {args.run_dir!r} does not exist")
    if (args.ref_batch is None) != (args.ref_lr is None):
        raise CLIError("give both --ref-batch and --ref-lr (a tuned batch size and its learning rate), or neither")
    sweep = _sweep_entry(run_dir / "surge.json", args.optimizer, args.target_loss)
    b_noise, source = (sweep["b_noise"], sweep["source"]) if sweep else _logged_b_noise(run_dir)
    ref = (args.ref_batch, args.ref_lr) if args.ref_batch is not None else _job_reference(run_dir)
    law = "eq. 2 (Surge, Adam)" if args.optimizer == "adam" else "eq. 1 (McCandlish, SGD)"
    if args.batch <= 0:
        raise CLIError(f"--batch must be a positive batch size, got {args.batch:g}")
    if ref is not None:
        try:
            lr = lr_for_batch(args.batch, ref, b_noise, args.optimizer)
        except ValueError as exc:
            raise CLIError(f"reference point {ref}: {exc}") from None
        formula = f"{law} through B0={ref[0]:g}, lr0={ref[1]:g}"
    elif sweep and sweep.get("eps_max") is not None:
        lr = float(lr_curve(args.optimizer, args.batch, b_noise, sweep["eps_max"]))
        formula = f"{law} with the sweep's eps_max={sweep['eps_max']:.4g} (eq. 23)"
    else:
        raise CLIError(f"no reference point: {run_dir / 'job.yaml'} has no train.batch_size and train.lr (language "
                       "models: train.batch_size, train.seq_len and train.optimizer.lr); pass --ref-batch B0 "
                       "--ref-lr LR0 (a batch size and its tuned learning rate)")
    print(f"b_noise: {b_noise:.6g}  ({source})")
    print(f"lr: {lr:.6g}  ({formula} at B={args.batch:g})")
    return 0


def _sweep_entry(path: Path, optimizer: str, target: float | None) -> dict | None:
    """The sweep's fit for ``optimizer`` at ``target`` (default: the lowest target loss that has a fit)."""
    if not path.exists():
        return None
    try:
        surge = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not valid JSON ({exc}); re-run the sweep") from None
    if optimizer not in surge:
        raise CLIError(f"{path} has no {optimizer!r} arm (it has {sorted(surge)}); pass --optimizer one of those")
    fitted = {float(t): e for t, e in surge[optimizer].items() if e.get("b_noise") is not None}
    if not fitted:
        raise CLIError(f"{path}: no target of the {optimizer!r} arm has a B_noise fit")
    if target is None:
        target = min(fitted)
    if target not in fitted:
        raise CLIError(f"{path}: no {optimizer!r} fit at target loss {target:g}; fitted targets: {sorted(fitted)}")
    entry = fitted[target]
    return {**entry, "source": f"eq. 22 fit of the sweep at target loss {target:g}, R^2 {entry['r2']:.3f}"}


def _logged_b_noise(run_dir: Path) -> tuple[float, str]:
    from seraphim.scheduler.reports import metric_table, read_metrics, summarize

    try:
        summary = summarize(metric_table(read_metrics(run_dir / "metrics")))
    except ValueError as exc:
        raise CLIError(f"{run_dir} has no surge.json (not a sweep) and {exc}") from None
    if summary.get("b_noise", {}).get("mean") is None:
        raise CLIError(f"{run_dir} has no surge.json and no b_noise metric: log GradientNoiseScale.metrics() in the "
                       "job (seraphim.algorithms.lr_scaling), or run an lr_scaling.sweep")
    last = summary["b_noise"]
    step = max(last["last_step"].values())
    trace, grad_sq = summary.get("trace_sigma", {}).get("mean"), summary.get("grad_sq", {}).get("mean")
    if trace is not None and grad_sq is not None and grad_sq > 0:  # a ratio of averages, never an average of ratios
        return trace / grad_sq, f"last logged trace_sigma / grad_sq, step {step}, each averaged over workers"
    return last["mean"], f"last logged b_noise metric, step {step}, mean over workers"


def _job_reference(run_dir: Path) -> tuple[float, float] | None:
    """The run's batch and learning rate from its job.yaml: ``train.batch_size`` and ``train.lr``; for language
    models (``train.seq_len`` and ``train.optimizer.lr``) the global batch in tokens, the unit of the b_noise they
    log: batch_size x seq_len x cluster.workers."""
    job = run_dir / "job.yaml"
    spec = (yaml.safe_load(job.read_text()) or {}) if job.exists() else {}
    train = spec.get("train", {})
    if not isinstance(train, dict) or "batch_size" not in train:
        return None
    if "lr" in train:
        return float(train["batch_size"]), float(train["lr"])
    lr = (train.get("optimizer") or {}).get("lr")
    if "seq_len" in train and lr is not None:
        workers = (spec.get("cluster") or {}).get("workers", 1)
        return float(train["batch_size"] * train["seq_len"] * workers), float(lr)
    return None


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", help="scheduler address (default SERAPHIM_SCHEDULER or 127.0.0.1:7070)")
    p.add_argument("--token", help="cluster token (or --token-file, SERAPHIM_TOKEN, SERAPHIM_TOKEN_FILE)")
    p.add_argument("--token-file")
    p.add_argument("--tls-ca", help="CA of the scheduler's TLS certificate")
    p.add_argument("--tls-server-name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seraphim", description="Seraphim parameter-server platform")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job on local processes (the embedded default)")
    run.add_argument("job", help="job spec YAML, e.g. examples/ctr.yaml")
    run.add_argument("--runs-dir", help="where runs/<job> goes (default: the spec's storage.dir)")
    run.add_argument("--heartbeat-timeout", type=float, default=10.0)
    run.add_argument("--http-port", type=int, default=0, help="port of the dashboard and /metrics (default: a free "
                                                               "one)")
    for role in ("scheduler", "ps", "worker"):
        role_parser = sub.add_parser(role, help=f"the {role} role by hand")
        role_parser.add_subparsers(dest="action", required=True).add_parser(
            "start", help=f"start a {role} (see `seraphim {role} start --help`)", add_help=False)
    submit = sub.add_parser("submit", help="submit a job to a running scheduler")
    submit.add_argument("job")
    submit.add_argument("--launcher", choices=("local", "manual", "kubernetes"),
                        help="default: the spec's cluster.launcher")
    submit.add_argument("--runs-dir", help="run root on the scheduler's host (default: the spec's storage.dir)")
    _connection_flags(submit)
    status = sub.add_parser("status", help="one job in detail, or every job")
    status.add_argument("job_id", nargs="?")
    _connection_flags(status)
    jobs = sub.add_parser("jobs", help="every job the scheduler knows")
    _connection_flags(jobs)
    logs = sub.add_parser("logs", help="a job's event log and its processes' logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--source", help="job, ps-0, worker-1, ... (default: all)")
    _connection_flags(logs)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    _connection_flags(cancel)
    export = sub.add_parser("export", help="write a finished LM run's model for Hugging Face transformers")
    export.add_argument("run_dir", help="the run directory, e.g. runs/lm")
    export.add_argument("--out", required=True, help="directory to write (config, safetensors, tokenizer)")
    plan = sub.add_parser("plan-memory", help="plan a memory trace (DSA CSV: id,lower,upper,size)")
    plan.add_argument("trace", help="CSV with id,lower,upper,size rows, lifetimes [lower, upper)")
    plan.add_argument("--out", help="write the rows with an offset column here")
    plan.add_argument("--time-limit", type=float, default=10.0, help="seconds for the search and the MIP")
    advise = sub.add_parser("lr-advise", help="Surge's learning rate at a batch size, from a finished run")
    advise.add_argument("run_dir", help="a run directory: an lr_scaling.sweep's, or a job's that logged b_noise")
    advise.add_argument("--batch", type=float, required=True, help="the batch size to advise for")
    advise.add_argument("--ref-batch", type=float, help="a batch size whose learning rate is tuned (with --ref-lr)")
    advise.add_argument("--ref-lr", type=float, help="the tuned learning rate at --ref-batch")
    advise.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    advise.add_argument("--target-loss", type=float, help="a sweep's target loss (default: its lowest fitted one)")
    return parser


def _role_main(role: str, rest: list[str]) -> int:
    if role == "scheduler":
        from seraphim.scheduler.main import main as role_main
    elif role == "ps":
        from seraphim.ps.main import main as role_main
    else:
        apply_worker_openmp_env()  # before the worker's imports load torch (and OpenMP with it)
        from seraphim.algorithms.worker_main import main as role_main
    return role_main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] in ("scheduler", "ps", "worker") and argv[1] == "start":
        return _role_main(argv[0], argv[2:])
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "submit": cmd_submit, "status": cmd_status, "jobs": cmd_status,
                "logs": cmd_logs, "cancel": cmd_cancel, "export": cmd_export, "plan-memory": cmd_plan_memory,
                "lr-advise": cmd_lr_advise}
    if args.command == "jobs":
        args.job_id = None
    try:
        return commands[args.command](args)
    except (CLIError, JobSpecError, SeraphimError, OSError) as exc:
        print(f"seraphim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nseraphim: interrupted; the job was cancelled and every process it started was stopped",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
