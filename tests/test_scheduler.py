"""The scheduler and CLI with real processes: the embedded run, job specs, failures and restarts, persistence."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import InvalidArgument, Unauthenticated

STATE = scheduler_pb2.JobState.Name


def tiny_job(name: str = "tiny", steps: int = 60, workers: int = 2, ps: int = 2, **cluster) -> dict:
    return {
        "name": name, "algorithm": "ctr",
        "cluster": {"ps": ps, "workers": workers, **cluster},
        "storage": {"ram_mb": 16, "page_kb": 64, "snapshot_every": 5},
        "train": {"model": "lr", "batch_size": 256, "steps": steps, "eval_every": 0, "eval_rows": 2000,
                  "data": {"num_fields": 6, "vocab_sizes": [5, 10, 20, 50, 100, 200]}},
    }


def write_job(tmp_path: Path, job: dict) -> Path:
    path = tmp_path / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seraphim.scheduler.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def wait_for(client, job_id: str, predicate, timeout: float = 120.0) -> scheduler_pb2.JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = client.job(job_id)
        if predicate(status):
            return status
        assert status.state not in (scheduler_pb2.FAILED, scheduler_pb2.CANCELLED) or predicate(status), \
            f"{STATE(status.state)}: {status.reason}"
        assert time.monotonic() < deadline, f"timed out; last status {STATE(status.state)} step {status.step}"
        time.sleep(0.2)


def done(status) -> bool:
    return status.state == scheduler_pb2.SUCCEEDED


def failed_without_restart(client, job_id: str, timeout: float = 60.0) -> scheduler_pb2.JobStatus:
    """Wait until the job is FAILED and every one of its processes has exited; then nothing may have been started
    twice (the exit of the failed worker must not have been taken for a crash to restart)."""
    from seraphim.scheduler.launchers import process_alive

    status = wait_for(client, job_id, lambda s: s.state == scheduler_pb2.FAILED, timeout)
    deadline = time.monotonic() + 30
    while any(process_alive(n.pid) for n in client.job(job_id).nodes):
        assert time.monotonic() < deadline, "the failed job's processes did not exit"
        time.sleep(0.2)
    final = client.job(job_id)
    assert final.state == scheduler_pb2.FAILED and final.reason == status.reason
    assert final.restarts == 0 and all(n.attempt == 1 for n in final.nodes), [(n.role, n.rank, n.attempt)
                                                                              for n in final.nodes]
    return final


def node(status, role: str, rank: int):
    return next(n for n in status.nodes if n.role == role and n.rank == rank)


def steps_recorded(run_dir: Path, rank: int) -> set[int]:
    with open(run_dir / "metrics" / f"worker-{rank}.csv") as f:
        return {int(r["step"]) for r in csv.DictReader(f) if r["name"] == "train_loss"}


def test_run_leaves_metrics_plot_checkpoints_and_logs(tmp_path):
    job = write_job(tmp_path, tiny_job(steps=40))
    result = cli("run", str(job), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "tiny"
    for path in ("job.yaml", "metrics.csv", "plot.png", "results.json", "logs/job.log", "logs/ps-0.log",
                 "logs/worker-1.log", "checkpoints/ps-1", "tensorboard/worker-0"):
        assert (run_dir / path).exists(), path
    assert steps_recorded(run_dir, 1) == set(range(40))
    assert "succeeded" in result.stderr
    token = (tmp_path / "runs" / ".scheduler" / "token").read_text()
    assert re.search(rf"^dashboard: http://127\.0\.0\.1:\d+/#token={token}$", result.stderr, re.M), result.stderr
    import sqlite3

    from seraphim.scheduler.launchers import process_alive

    with sqlite3.connect(tmp_path / "runs" / ".scheduler" / "scheduler.db") as db:
        pids = [pid for (pid,) in db.execute("SELECT pid FROM nodes")]
    assert len(pids) == 4 and not any(process_alive(p) for p in pids)  # nothing outlives `seraphim run`
    again = cli("run", str(job), "--runs-dir", str(tmp_path / "runs"))
    assert again.returncode == 0 and (tmp_path / "runs" / "tiny-2" / "plot.png").exists()  # the first run untouched
    assert (run_dir / "plot.png").stat().st_mtime < (tmp_path / "runs" / "tiny-2" / "plot.png").stat().st_mtime


@pytest.mark.parametrize("text, message", [
    ("name: x\nalgorithm: ctr\ncluster: {ps: 0}\n", "cluster.ps: Input should be greater than or equal to 1 (got 0)"),
    ("name: x\nalgorithm: nope\n", "algorithm: unknown algorithm 'nope'; known: ['beamvq', 'ctr', 'dit', 'gnn.gamlp', "
                                   "'gnn.pasca', 'lm.moe', 'lm.transformer', 'lr_scaling.sweep', 'lr_scaling.trial', "
                                   "'vfl.blindfl']"),
    ("name: x\n", "algorithm: Field required"),
    ("name: Bad_Name\nalgorithm: ctr\n", "name: String should match pattern"),
    ("name: x\nalgorithm: ctr\ntrain: {model: svm}\n", "train.model: Input should be 'lr' or 'wide_deep' (got 'svm')"),
    ("name: x\nalgorithm: ctr\ntrain: {stepz: 3}\n", "train.stepz: Extra inputs are not permitted"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_job_specs_get_one_line_errors(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = cli("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_file_unknown_job_and_unreachable_scheduler(tmp_path, scheduler_factory):
    result = cli("run", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0 and "cannot read job spec" in result.stderr and "Traceback" not in result.stderr
    sched = scheduler_factory()
    result = cli("status", "no-such-job", "--scheduler", sched.address, "--token-file", str(sched.token_file))
    assert result.returncode != 0 and "no job 'no-such-job'" in result.stderr and "Traceback" not in result.stderr
    result = cli("jobs", "--scheduler", "127.0.0.1:1", "--token-file", str(sched.token_file))
    assert result.returncode != 0 and "cannot reach the scheduler at 127.0.0.1:1" in result.stderr
    result = cli("jobs", "--scheduler", sched.address)
    assert result.returncode != 0 and "missing or wrong cluster token" in result.stderr
    deep = tmp_path / "no" / "such" / "dir"
    result = cli("submit", str(write_job(tmp_path, tiny_job())), "--scheduler", sched.address, "--token-file",
                 str(sched.token_file), "--runs-dir", str(deep))
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path, scheduler_factory):
    sched = scheduler_factory()
    result = cli("scheduler", "start", "--data-dir", str(tmp_path / "other"), "--port", str(sched.port))
    assert result.returncode != 0 and f"cannot listen on 127.0.0.1:{sched.port}" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("scheduler", "start", "--data-dir", str(tmp_path / "other"), "--port", "0", "--http-port",
                 str(sched.port))  # the gRPC port of the first is in use for HTTP as well
    assert result.returncode != 0 and f"cannot serve HTTP on 127.0.0.1:{sched.port}: Address already in use" \
        in result.stderr and "Traceback" not in result.stderr


def test_calls_without_the_token_are_refused(scheduler_factory):
    sched = scheduler_factory()
    from seraphim.scheduler.client import SchedulerClient

    with SchedulerClient(sched.address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.jobs()
    with SchedulerClient(sched.address, token="wrong") as wrong, pytest.raises(Unauthenticated):
        wrong.jobs()
    with sched.client() as ok:
        assert ok.jobs() == []


def test_killed_ps_and_worker_are_restarted_and_the_job_completes(tmp_path, scheduler_factory):
    sched = scheduler_factory()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(tiny_job("heal", steps=400)), "local", str(tmp_path))
        job_id, run_dir = status.job_id, Path(status.run_dir)
        status = wait_for(client, job_id, lambda s: s.step >= 60)
        os.kill(node(status, "ps", 0).pid, signal.SIGKILL)
        status = wait_for(client, job_id, lambda s: node(s, "ps", 0).attempt == 2 and node(s, "ps", 0).state ==
                          "RUNNING")
        step = status.step
        status = wait_for(client, job_id, lambda s: s.step >= step + 40)
        os.kill(node(status, "worker", 1).pid, signal.SIGKILL)
        status = wait_for(client, job_id, done, timeout=180)
        assert status.restarts == 2
        assert node(status, "worker", 1).attempt == 2
        events = "".join(c.text for c in client.logs(job_id, source="job"))
        with pytest.raises(InvalidArgument, match="at most 64 letters"):  # not the OS's 'File name too long'
            list(client.logs(job_id, source="a" * 300))
    assert "ps-0 (pid" in events and "started ps-0 (attempt 2" in events
    assert "started worker-1 (attempt 2" in events and "job SUCCEEDED" in events
    resumed = int(re.search(r"resuming at step (\d+)", (run_dir / "logs" / "worker-1.log").read_text()).group(1))
    recorded = steps_recorded(run_dir, 1)
    assert set(range(resumed, 400)) <= recorded  # the curve continues from the clock the PS held
    lost = set(range(400)) - recorded  # metrics queued in the killed process (training itself was not lost):
    # one contiguous run just before the resume point, a flush interval's worth (48 seen on a loaded 2-core host)
    assert not lost or (max(lost) == resumed - 1 and len(lost) == resumed - min(lost) and len(lost) < 100)
    assert "restored clock" in (run_dir / "logs" / "ps-0.log").read_text()


def test_a_job_whose_restarts_run_out_fails_with_the_reason(tmp_path, scheduler_factory):
    sched = scheduler_factory()
    with sched.client() as client:
        job_id = client.submit(yaml.safe_dump(tiny_job("fragile", steps=2000, max_restarts=0)), "local",
                               str(tmp_path)).job_id
        status = wait_for(client, job_id, lambda s: s.step >= 10)
        os.kill(node(status, "worker", 0).pid, signal.SIGKILL)
        status = wait_for(client, job_id, lambda s: s.state == scheduler_pb2.FAILED)
    assert "worker-0 failed 1 times (max_restarts 0)" in status.reason
    shown = cli("status", job_id, "--scheduler", sched.address, "--token-file", str(sched.token_file))
    assert "FAILED" in shown.stdout and "max_restarts 0" in shown.stdout


def test_cancel_stops_every_process(tmp_path, scheduler_factory):
    sched = scheduler_factory()
    with sched.client() as client:
        job_id = client.submit(yaml.safe_dump(tiny_job("stopme", steps=5000)), "local", str(tmp_path)).job_id
        status = wait_for(client, job_id, lambda s: s.step >= 5)
        pids = [n.pid for n in status.nodes]
        result = cli("cancel", job_id, "--scheduler", sched.address, "--token-file", str(sched.token_file))
        assert result.returncode == 0 and "CANCELLED" in result.stdout
    deadline = time.monotonic() + 30
    from seraphim.scheduler.launchers import process_alive

    while any(process_alive(p) for p in pids):
        assert time.monotonic() < deadline, "processes outlived the cancelled job"
        time.sleep(0.2)


def test_a_restarted_scheduler_knows_its_jobs_and_running_jobs_carry_on(tmp_path, scheduler_factory):
    sched = scheduler_factory("sched")
    with sched.client() as client:
        first = client.submit(yaml.safe_dump(tiny_job("first", steps=30, workers=1, ps=1)), "local", str(tmp_path))
        wait_for(client, first.job_id, done)
        second = client.submit(yaml.safe_dump(tiny_job("second", steps=600, workers=1, ps=1)), "local",
                               str(tmp_path))
        wait_for(client, second.job_id, lambda s: s.step >= 20)
    sched.kill()  # SIGKILL mid-run: its job's processes keep going
    time.sleep(1.0)
    again = scheduler_factory("sched", port=sched.port)
    with again.client() as client:
        states = {s.job_id: STATE(s.state) for s in client.jobs()}
        assert states[first.job_id] == "SUCCEEDED"
        status = wait_for(client, second.job_id, done, timeout=180)
        assert status.restarts == 0
        third = client.submit(yaml.safe_dump(tiny_job("third", steps=20, workers=1, ps=1)), "local", str(tmp_path))
        wait_for(client, third.job_id, done)
        events = "".join(c.text for c in client.logs(second.job_id, source="job"))
    assert "scheduler restarted" in events
    listed = cli("jobs", "--scheduler", again.address, "--token-file", str(again.token_file)).stdout
    assert all(j in listed for j in (first.job_id, second.job_id, third.job_id))


def test_a_restarted_scheduler_fails_a_running_job_whose_run_directory_is_gone(tmp_path, scheduler_factory):
    sched = scheduler_factory("sched")
    with sched.client() as client:
        job = client.submit(yaml.safe_dump(tiny_job("orphan", steps=100_000, workers=1, ps=1)), "local",
                            str(tmp_path))
        wait_for(client, job.job_id, lambda s: s.step >= 5)
    pids = sched.job_pids()
    sched.kill()
    shutil.rmtree(job.run_dir)
    again = scheduler_factory("sched", port=sched.port)
    with again.client() as client:
        status = client.job(job.job_id)
    assert STATE(status.state) == "FAILED" and "run directory" in status.reason and "removed" in status.reason
    from seraphim.scheduler.launchers import process_alive

    deadline = time.monotonic() + 30
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pids) == 2 and not any(process_alive(pid) for pid in pids)


def test_ctrl_c_on_run_cancels_the_job_and_stops_every_process(tmp_path):
    job = write_job(tmp_path, tiny_job("interrupted", steps=100_000))
    proc = subprocess.Popen([sys.executable, "-m", "seraphim.scheduler.cli", "run", str(job), "--runs-dir",
                             str(tmp_path / "runs")], stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = tmp_path / "runs" / ".scheduler" / "scheduler.db"
    metrics = tmp_path / "runs" / "interrupted" / "metrics"
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and any(metrics.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        pids = _node_pids(db)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
        from seraphim.scheduler.launchers import process_alive

        assert len(pids) == 4 and not any(process_alive(p) for p in pids)
    finally:  # a failure above must not leave the run, its scheduler or the job's processes behind
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in (pids or _node_pids(db)) + _scheduler_pids(db.parent):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _scheduler_pids(data_dir: Path) -> list[int]:
    """Scheduler processes serving `data_dir` (started in a session of their own, so killing the run's process
    group leaves them)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or it ended meanwhile
            continue
        if b"scheduler" in argv and str(data_dir.resolve()).encode() in argv:
            found.append(int(entry.name))
    return found


def _node_pids(db: Path) -> list[int]:
    """The pids of a job's processes, from the scheduler's store (none when it was never written)."""
    import sqlite3

    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [pid for (pid,) in conn.execute("SELECT pid FROM nodes")]


def test_logs_follow_streams_until_the_job_ends(tmp_path, scheduler_factory):
    sched = scheduler_factory()
    with sched.client() as client:
        job_id = client.submit(yaml.safe_dump(tiny_job("chatty", steps=30, workers=1, ps=1)), "local",
                               str(tmp_path)).job_id
    result = cli("logs", job_id, "--follow", "--scheduler", sched.address, "--token-file", str(sched.token_file))
    assert result.returncode == 0
    assert "[job]" in result.stdout and "job SUCCEEDED" in result.stdout and "[worker-0]" in result.stdout
    only = cli("logs", job_id, "--source", "nope", "--scheduler", sched.address, "--token-file",
               str(sched.token_file))
    assert only.returncode != 0 and "has no log 'nope'" in only.stderr


def test_kubernetes_launcher_renders_the_job_and_waits_for_its_pods(tmp_path, scheduler_factory):
    sched = scheduler_factory()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(tiny_job("on-k8s", image="registry.example/seraphim:1")),
                               "kubernetes", str(tmp_path))
        assert STATE(client.job(status.job_id).state) == "PENDING"
    objects = list(yaml.safe_load_all((Path(status.run_dir) / "kubernetes.yaml").read_text()))
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["Job", "Service", "StatefulSet"]
    stateful = next(o for o in objects if o["kind"] == "StatefulSet")
    assert stateful["spec"]["replicas"] == 2
    assert stateful["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/seraphim:1"


def test_each_worker_can_have_its_own_ps_shards(tmp_path, scheduler_factory):
    sched = scheduler_factory("sched")
    with sched.client() as client:
        job = tiny_job("own-ps", steps=20, workers=2, ps=1, ps_per_worker=True)
        status = wait_for(client, client.submit(yaml.safe_dump(job), "local", str(tmp_path)).job_id, done)
        assert sorted(n.rank for n in status.nodes if n.role == "ps") == [0, 1]
        views = [client.cluster_view(status.job_id, worker_rank=r) for r in (0, 1)]
        with pytest.raises(InvalidArgument, match="its own PS shards"):
            client.cluster_view(status.job_id)
    assert [[(p.shard, p.address) for p in v.ps] for v in views] == [
        [(0, node(status, "ps", 0).address)], [(0, node(status, "ps", 1).address)]]
    run_dir = Path(status.run_dir)
    assert (run_dir / "checkpoints" / "worker-0" / "ps-0").is_dir()
    assert (run_dir / "checkpoints" / "worker-1" / "ps-0").is_dir()
