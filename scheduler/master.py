"""The scheduler's brain: accepts jobs, launches and watches their processes, restarts the ones that die, and
decides when a job has succeeded, failed or been cancelled.

A process is dead when its heartbeats stop for ``heartbeat_timeout_s`` (or, for local processes, when it exits),
or when it reports FAILED. A dead PS is started again on the same port and data directory (it recovers its last
snapshot); a dead worker is started again and resumes from its last clock. Each process gets ``max_restarts``
restarts; then the job fails with the reason. A worker that reports a *fatal* failure (a ``FatalJobError``: the
error depends only on the job's input or spec, such as a malformed file or ids that do not intersect) is not
restarted: a restart would repeat it, so the job fails at once with that error. Everything that happens is
written to the job's event log with its time.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from pathlib import Path

from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import FailedPrecondition, InvalidArgument, NotFound
from seraphim.proto.rpc import split_address
from seraphim.scheduler.job_spec import JobSpecError, JobSpec, parse_job_text
from seraphim.scheduler.launchers import LAUNCHERS, LocalLauncher
from seraphim.scheduler.cluster_metrics import ProcessMetrics
from seraphim.scheduler.memory_plans import MemoryPlans
from seraphim.scheduler.store import JobRow, JobStore, NodeRow
from seraphim.scheduler.metrics_file import MetricsWriter

log = logging.getLogger("seraphim.scheduler")

ACTIVE = (scheduler_pb2.PENDING, scheduler_pb2.RUNNING)
TERMINAL = (scheduler_pb2.SUCCEEDED, scheduler_pb2.FAILED, scheduler_pb2.CANCELLED)
STATE_NAME = scheduler_pb2.JobState.Name


#: Linux pids are below 2^22 (pid_max); anything from 2^31 on cannot reach os.kill, which takes a C int
MAX_PID = 2**31 - 1


def _check_pid(pid: int) -> None:
    if not 0 <= pid <= MAX_PID:
        raise InvalidArgument(f"pid {pid} is not a process id (0..{MAX_PID}; 0: not given)")


class Master:
    """Jobs and their processes, persisted in a JobStore, watched by a monitor thread."""

    def __init__(self, data_dir: Path, launcher: LocalLauncher, heartbeat_timeout_s: float = 10.0,
                 start_timeout_s: float = 120.0, stop_grace_s: float = 10.0) -> None:
        self.store = JobStore(data_dir)
        self.launcher = launcher
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._lock = threading.RLock()
        self._writers: dict[tuple[str, int], MetricsWriter] = {}
        self._job_logs: dict[str, Path] = {}
        self._report_threads: list[threading.Thread] = []
        self._stopping: dict[str, tuple[float, float]] = {}  # job -> (SIGTERM at, SIGKILL at), monotonic
        self._closed = threading.Event()
        self.memory_plans = MemoryPlans()
        self.process_metrics = ProcessMetrics()
        self._adopt_running_jobs()
        self._monitor = threading.Thread(target=self._watch, name="monitor", daemon=True)
        self._monitor.start()

    # -- jobs --------------------------------------------------------------------------------------------
    def _adopt_running_jobs(self) -> None:
        """After a restart: give every process of an active job a fresh heartbeat grace and say so in its log."""
        now = time.time()
        for job in self.store.jobs(ACTIVE):
            if not Path(job.run_dir).is_dir():
                self._abandon(job, f"its run directory {job.run_dir} was removed while the scheduler was down")
                continue
            for node in self.store.nodes(job.job_id):
                if node.state in ("STARTING", "RUNNING"):
                    self.store.update_node(job.job_id, node.role, node.rank, last_heartbeat=now)
            self._event(job.job_id, "scheduler restarted; following the job's processes again")

    def _abandon(self, job: JobRow, reason: str) -> None:
        """Fail a job that cannot be followed again: its local processes are killed, nothing is written to its run."""
        if job.launcher == "local":
            for node in self.store.nodes(job.job_id):
                if node.state in ("STARTING", "RUNNING"):
                    self.launcher.signal(node, signal.SIGKILL)
        self.store.update_job(job.job_id, state=scheduler_pb2.FAILED, reason=reason, finished=time.time())
        log.warning("%s: failed: %s", job.job_id, reason)

    def submit(self, spec_yaml: str, launcher: str, run_root: str) -> JobRow:
        try:
            spec, train = parse_job_text(spec_yaml, "submitted job spec")
        except JobSpecError as exc:
            raise InvalidArgument(str(exc)) from None
        launcher = launcher or spec.cluster.launcher
        if launcher not in LAUNCHERS:
            raise InvalidArgument(f"launcher {launcher!r} is not one of {list(LAUNCHERS)}")
        root = Path(run_root or spec.storage.dir)
        if not root.is_absolute():
            raise InvalidArgument(f"run root {str(root)!r} must be an absolute directory on the scheduler's host")
        if not root.is_dir():
            raise InvalidArgument(f"storage directory {str(root)!r} does not exist on the scheduler's host; "
                                  f"create it first")
        with self._lock:
            job_id = self._new_job_id(spec.name)
            run_dir = self._new_run_dir(root, spec.name)
            from seraphim.algorithms.registry import job_class

            total = job_class(spec.algorithm)(train).total_steps()
            job = JobRow(job_id=job_id, name=spec.name, algorithm=spec.algorithm, spec_yaml=spec_yaml,
                         state=scheduler_pb2.PENDING, reason="", created=time.time(), started=0.0, finished=0.0,
                         run_dir=str(run_dir), launcher=launcher, total_steps=total, restarts=0,
                         num_ps=spec.cluster.total_ps, num_workers=spec.cluster.workers,
                         max_restarts=spec.cluster.max_restarts)
            nodes = [NodeRow(job_id, "ps", r, "", 0, "WAITING", 0, "", 0.0, 0, 0)
                     for r in range(spec.cluster.total_ps)]
            nodes += [NodeRow(job_id, "worker", r, "", 0, "WAITING", 0, "", 0.0, 0, 0)
                      for r in range(spec.cluster.workers)]
            (run_dir / "job.yaml").write_text(spec_yaml)
            self.store.add_job(job, nodes)
            self._job_logs[job_id] = run_dir / "logs" / "job.log"
            per_worker = " each" if spec.cluster.ps_per_worker else ""
            self._event(job_id, f"submitted: {spec.algorithm} with {spec.cluster.workers} workers and "
                                f"{spec.cluster.ps} PS{per_worker}, launcher {launcher}, run directory {run_dir}")
            if launcher == "local":
                for node in nodes:
                    self._launch(job, node)
            elif launcher == "kubernetes":
                self._render_kubernetes(job, spec)
            return job

    def _render_kubernetes(self, job: JobRow, spec: JobSpec) -> None:
        from seraphim.scheduler.kubernetes import render_job, to_yaml

        path = Path(job.run_dir) / "kubernetes.yaml"
        path.write_text(to_yaml(render_job(spec, job.job_id, image=spec.cluster.image,
                                           scheduler_address=spec.cluster.scheduler_address)))
        self._event(job.job_id, f"rendered the job's Kubernetes objects to {path}; apply them with kubectl, the "
                                f"pods register themselves")

    def _new_job_id(self, name: str) -> str:
        existing = set(self.store.job_ids())
        while True:
            job_id = f"{name}-{secrets.token_hex(3)}"
            if job_id not in existing:
                return job_id

    @staticmethod
    def _new_run_dir(root: Path, name: str) -> Path:
        """root/<name>, or <name>-2, -3, ... when earlier runs exist: an earlier run is never touched."""
        candidate, n = root / name, 1
        while candidate.exists():
            n += 1
            candidate = root / f"{name}-{n}"
        (candidate / "logs").mkdir(parents=True)
        return candidate

    def job(self, job_id: str) -> JobRow:
        job = self.store.job(job_id)
        if job is None:
            known = self.store.job_ids()
            raise NotFound(f"no job {job_id!r}; known jobs: {known[-10:] if known else 'none'}")
        return job

    def cancel(self, job_id: str) -> JobRow:
        with self._lock:
            job = self.job(job_id)
            if job.state in TERMINAL:
                raise FailedPrecondition(f"job {job_id} already ended ({STATE_NAME(job.state)})")
            self._end(job, scheduler_pb2.CANCELLED, "cancelled by the user")
            return self.job(job_id)

    def _event(self, job_id: str, message: str) -> None:
        """Append to the job's log (logs/job.log in its run directory), with the time."""
        path = self._job_logs.get(job_id)
        if path is None:
            path = self._job_logs[job_id] = Path(self.job(job_id).run_dir) / "logs" / "job.log"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(path, "a") as f:
            f.write(f"{stamp} {message}\n")
        log.info("%s: %s", job_id, message)

    # -- processes ---------------------------------------------------------------------------------------
    def _launch(self, job: JobRow, node: NodeRow) -> None:
        attempt = node.attempt + 1
        node.attempt = attempt
        pid = self.launcher.start(job, node)
        self.store.update_node(job.job_id, node.role, node.rank, attempt=attempt, pid=pid, state="STARTING",
                               last_heartbeat=time.time())
        self._event(job.job_id, f"started {node.name} (attempt {attempt}, pid {pid})")

    def register(self, req: scheduler_pb2.RegisterRequest) -> scheduler_pb2.RegisterReply:
        with self._lock:
            job = self.job(req.job_id)
            if job.state in TERMINAL:
                raise FailedPrecondition(f"job {job.job_id} has ended ({STATE_NAME(job.state)}); nothing to join")
            node = self._node(job, req.role, req.rank)
            _check_pid(req.pid)
            port = split_address(req.address)[1] if req.address else 0
            if req.address and not port:
                raise InvalidArgument(f"{node.name} registered address {req.address!r} with port 0: register the "
                                      f"port it serves on")
            attempt = node.attempt if job.launcher == "local" else (
                node.attempt + (1 if node.state in ("WAITING", "LOST") else 0))
            fields = dict(pid=req.pid, host=req.host, last_heartbeat=time.time(), attempt=max(attempt, 1))
            if req.role == "worker" or req.address:
                fields["state"] = "RUNNING"
            elif node.state in ("WAITING", "LOST"):
                fields["state"] = "STARTING"  # a PS asking for its settings; it registers its address next
            if req.address:
                fields["address"] = req.address
                fields["port"] = port
            self.store.update_node(job.job_id, req.role, req.rank, **fields)
            if fields.get("state") == "RUNNING":
                where = f" at {req.address}" if req.address else ""
                self._event(job.job_id, f"{node.name} registered{where} (pid {req.pid} on {req.host}, attempt "
                                        f"{fields['attempt']})")
            if job.state == scheduler_pb2.PENDING and self._all_ps_up(job.job_id):
                self.store.update_job(job.job_id, state=scheduler_pb2.RUNNING, started=time.time())
                self._event(job.job_id, "every PS shard is serving; the job is running")
            spec, _ = parse_job_text(job.spec_yaml, job.job_id)
            settings = scheduler_pb2.PsSettings(
                num_shards=spec.cluster.ps, num_workers=1 if spec.cluster.ps_per_worker else spec.cluster.workers,
                shard=req.rank % spec.cluster.ps if req.role == "ps" else 0, staleness=spec.consistency.staleness,
                deterministic=spec.consistency.deterministic,
                data_subdir=f"worker-{req.rank // spec.cluster.ps}" if spec.cluster.ps_per_worker else "",
                ram_mb=spec.storage.ram_mb, page_kb=spec.storage.page_kb, durability=spec.storage.durability,
                snapshot_every=spec.storage.snapshot_every)
            return scheduler_pb2.RegisterReply(spec_yaml=job.spec_yaml, attempt=fields["attempt"],
                                               run_dir=job.run_dir, ps=settings)

    def _node(self, job: JobRow, role: str, rank: int) -> NodeRow:
        if role not in ("ps", "worker"):
            raise InvalidArgument(f"role {role!r} is not 'ps' or 'worker'")
        node = self.store.node(job.job_id, role, rank)
        if node is None:
            count = job.num_ps if role == "ps" else job.num_workers
            raise InvalidArgument(f"{role} rank {rank} is outside job {job.job_id}'s {count} {role} processes "
                                  f"(ranks 0..{count - 1})")
        return node

    def _all_ps_up(self, job_id: str) -> bool:
        return all(n.state == "RUNNING" and n.address for n in self.store.nodes(job_id) if n.role == "ps")

    def heartbeat(self, req: scheduler_pb2.HeartbeatRequest) -> bool:
        """Record a heartbeat; returns whether the process should stop (its job is over)."""
        with self._lock:
            job = self.job(req.job_id)
            node = self._node(job, req.role, req.rank)
            _check_pid(req.pid)
            replaced = bool(node.pid and req.pid and node.pid != req.pid and job.launcher == "local")
            if req.prometheus and not replaced:
                self.process_metrics.update(job.job_id, req.role, req.rank, req.prometheus)
            if job.state in TERMINAL:
                if req.state in ("DONE", "FAILED"):
                    self.store.update_node(job.job_id, req.role, req.rank, state=req.state,
                                           last_heartbeat=time.time())
                return True
            if replaced:
                return True  # a process the scheduler already replaced
            now = time.time()
            if req.state == "DONE":
                self.store.update_node(job.job_id, req.role, req.rank, state="DONE", last_heartbeat=now,
                                       step=req.step)
                self._event(job.job_id, f"{node.name} finished at step {req.step}")
                if all(n.state == "DONE" for n in self.store.nodes(job.job_id) if n.role == "worker"):
                    self._end(job, scheduler_pb2.SUCCEEDED, "")
                return True
            if req.state == "FAILED":
                # FAILED, not STARTING/RUNNING: the monitor's exit-code check skips this node from now on
                self.store.update_node(job.job_id, req.role, req.rank, state="FAILED", last_heartbeat=now)
                why = f"{node.name} reported failure: {req.message}"
                if req.fatal:
                    self._event(job.job_id, why)
                    self._end(job, scheduler_pb2.FAILED, f"{node.name} failed with an input error that a restart "
                                                         f"would repeat (not restarted): {req.message}")
                else:
                    self._failure(job, node, why)
                return True
            self.store.update_node(job.job_id, req.role, req.rank, last_heartbeat=now, step=req.step)
            return False

    def report_metrics(self, req: scheduler_pb2.MetricsReport) -> None:
        with self._lock:
            job = self.job(req.job_id)
            self._node(job, "worker", req.rank)
            key = (job.job_id, req.rank)
            if key not in self._writers:
                self._writers[key] = MetricsWriter(Path(job.run_dir) / "metrics" / f"worker-{req.rank}.csv")
            self._writers[key].write_rows((r.step, r.seconds, r.name, r.value) for r in req.rows)
            latest: dict[str, tuple[int, float]] = {}
            for r in req.rows:
                latest[r.name] = (r.step, r.value)
            self.store.put_metrics(job.job_id, req.rank, [(s, n, v) for n, (s, v) in latest.items()])

    def cluster_view(self, job_id: str, worker_rank: int | None = None) -> scheduler_pb2.ClusterView:
        """The job's PS shards; when each worker has its own, only those of ``worker_rank`` (required then)."""
        job = self.job(job_id)
        ps = [n for n in self.store.nodes(job_id) if n.role == "ps"]
        group = len(ps)
        if self._ps_per_worker(job):
            group = job.num_ps // job.num_workers
            if worker_rank is None:
                raise InvalidArgument(f"job {job_id} gives each worker its own PS shards; ask for a worker's view "
                                      f"(worker_rank 0..{job.num_workers - 1})")
            if not 0 <= worker_rank < job.num_workers:
                raise InvalidArgument(f"worker rank {worker_rank} is outside job {job_id}'s {job.num_workers} "
                                      f"workers (ranks 0..{job.num_workers - 1})")
            ps = ps[worker_rank * group:(worker_rank + 1) * group]
        return scheduler_pb2.ClusterView(
            job_id=job_id, state=job.state, complete=all(n.state == "RUNNING" and n.address for n in ps),
            ps=[scheduler_pb2.PsEndpoint(shard=n.rank % group, address=n.address, attempt=n.attempt, state=n.state)
                for n in ps])

    def plan_memory(self, trace: scheduler_pb2.MemoryTrace) -> scheduler_pb2.MemoryPlan:
        """The job's memory plan: planned from this trace if the job has none yet (see memory_plans.py)."""
        job = self.job(trace.job_id)
        plan = self.memory_plans.plan(trace, Path(job.run_dir))
        self._event(job.job_id, f"memory plan ({plan.method}) of {len(plan.offsets)} saved activations: peak "
                                f"{plan.peak} bytes, lower bound {plan.lower_bound}, {plan.solve_s:.1f}s")
        return plan

    def memory_plan(self, job_id: str) -> scheduler_pb2.MemoryPlan:
        return self.memory_plans.get(Path(self.job(job_id).run_dir))

    @staticmethod
    def _ps_per_worker(job: JobRow) -> bool:
        spec, _ = parse_job_text(job.spec_yaml, job.job_id)
        return spec.cluster.ps_per_worker

    # -- failures and endings ----------------------------------------------------------------------------
    def _failure(self, job: JobRow, node: NodeRow, why: str) -> None:
        """A process died: restart it while it has restarts left, else fail the job with the reason."""
        self._event(job.job_id, why)
        if job.launcher == "local":
            self.launcher.signal(node, signal.SIGKILL)
            if node.attempt <= job.max_restarts:
                self.store.update_job(job.job_id, restarts=job.restarts + 1)
                self._launch(job, node)
                return
            self._end(job, scheduler_pb2.FAILED,
                      f"{node.name} failed {node.attempt} times (max_restarts {job.max_restarts}); last: {why}")
            return
        if node.attempt <= job.max_restarts:
            self.store.update_node(job.job_id, node.role, node.rank, state="LOST", last_heartbeat=time.time())
            self._event(job.job_id, f"waiting for {node.name} to be started again and register")
            return
        self._end(job, scheduler_pb2.FAILED, f"{node.name} was lost {node.attempt} times; last: {why}")

    def _end(self, job: JobRow, state: int, reason: str) -> None:
        self.store.update_job(job.job_id, state=state, reason=reason, finished=time.time())
        self._event(job.job_id, f"job {STATE_NAME(state)}" + (f": {reason}" if reason else ""))
        for (job_id, rank), writer in list(self._writers.items()):
            if job_id == job.job_id:
                writer.close()
                del self._writers[(job_id, rank)]
        self._write_reports(job)
        if job.launcher == "local":  # heartbeats answer stop now; SIGTERM after a grace, SIGKILL after two
            now = time.monotonic()
            self._stopping[job.job_id] = (now + self.stop_grace_s / 2, now + self.stop_grace_s)

    def _write_reports(self, job: JobRow) -> None:
        """Metrics CSV, TensorBoard and plot, on a thread of their own: heartbeats must not wait for a plot."""

        def write() -> None:
            from seraphim.scheduler.reports import write_reports

            try:
                paths = write_reports(Path(job.run_dir))
                self._event(job.job_id, f"wrote {', '.join(str(p) for p in paths.values())}")
            except (ValueError, OSError) as exc:
                self._event(job.job_id, f"no reports written: {exc}")

        thread = threading.Thread(target=write, name=f"reports-{job.job_id}")
        self._report_threads.append(thread)
        thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(0.5):
            try:
                self.check()
            except Exception:  # the monitor must survive anything one job does
                log.exception("monitor pass failed")

    def check(self) -> None:
        """One monitor pass: find dead processes of active jobs; kill what outlived a job's end."""
        now = time.time()
        with self._lock:
            for job in self.store.jobs(ACTIVE):
                for node in self.store.nodes(job.job_id):
                    job = self.job(job.job_id)
                    if job.state in TERMINAL:
                        break
                    why = self._dead(job, node, now)
                    if why:
                        self._failure(job, node, why)
            for job_id in list(self._stopping):
                if self._stop_step(job_id):
                    del self._stopping[job_id]

    def _stop_step(self, job_id: str) -> bool:
        """Escalate the stop of an ended job's processes; True once none is left."""
        term_at, kill_at = self._stopping[job_id]
        alive = [n for n in self.store.nodes(job_id) if self.launcher.alive(n)]
        now = time.monotonic()
        for node in alive:
            if now > kill_at:
                self.launcher.signal(node, signal.SIGKILL)
            elif now > term_at:
                self.launcher.signal(node, signal.SIGTERM)
        return not alive or now > kill_at

    def _dead(self, job: JobRow, node: NodeRow, now: float) -> str:
        if node.state not in ("STARTING", "RUNNING"):
            return ""
        if job.launcher == "local" and not self.launcher.alive(node):
            code = self.launcher.exit_code(node)
            return f"{node.name} (pid {node.pid}) exited" + (f" with code {code}" if code is not None else "")
        silent = now - node.last_heartbeat
        limit = self.start_timeout_s if node.state == "STARTING" else self.heartbeat_timeout_s
        if silent > limit:
            return f"{node.name} (pid {node.pid}) missed heartbeats for {silent:.1f}s"
        return ""

    def status(self, job: JobRow) -> scheduler_pb2.JobStatus:
        nodes = self.store.nodes(job.job_id)
        workers = [n for n in nodes if n.role == "worker"]
        return scheduler_pb2.JobStatus(
            job_id=job.job_id, name=job.name, algorithm=job.algorithm, state=job.state, reason=job.reason,
            created=job.created, started=job.started, finished=job.finished, run_dir=job.run_dir,
            launcher=job.launcher, total_steps=job.total_steps, restarts=job.restarts,
            step=min((n.step for n in workers), default=0), num_ps=job.num_ps, num_workers=job.num_workers,
            metrics=self.store.latest_metrics(job.job_id),
            nodes=[scheduler_pb2.NodeStatus(role=n.role, rank=n.rank, address=n.address, attempt=n.attempt,
                                            state=n.state, pid=n.pid, host=n.host, last_heartbeat=n.last_heartbeat,
                                            step=n.step) for n in nodes])

    def close(self) -> None:
        """Stop watching; processes of jobs that just ended get their grace period (call before the server stops,
        so they can still report their end), then SIGKILL."""
        self._closed.set()
        self._monitor.join(timeout=5)
        for job_id in list(self._stopping):
            while not self._stop_step(job_id):
                time.sleep(0.1)
        for thread in self._report_threads:
            thread.join(timeout=60)
        for writer in self._writers.values():
            writer.close()
        self.store.close()
