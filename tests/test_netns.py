"""A job across hosts: the scheduler, a PS and a worker each in their own network namespace with their own address,
joined by veth pairs on a bridge, so managed mode is shown to work over real addresses and not only over loopback.

Needs root (CAP_NET_ADMIN) and iproute2's `ip`. Nothing here touches the host's own network namespace: the bridge
lives in a fourth namespace and every address is in a private /24 that exists only inside these namespaces.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROLES = ("sched", "ps", "wk")
HOST_NUMBER = {"sched": 1, "ps": 2, "wk": 3}
SCHED_PORT, PS_PORT = 7070, 7071
JOB_TIMEOUT_S = 120.0
JOB_YAML = """\
name: netns
algorithm: ctr
cluster: {ps: 1, workers: 1, launcher: manual, max_restarts: 0}
storage: {ram_mb: 8, page_kb: 64, snapshot_every: 10}
train:
  model: wide_deep
  batch_size: 256
  steps: 30
  lr: 0.1
  embedding_dim: 4
  hidden: [16]
  eval_rows: 2000
  data: {num_fields: 6, vocab_sizes: [5, 10, 20, 50, 100, 200], key_space: 65536}
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def _our_namespaces(prefix: str) -> list[str]:
    """Our namespaces still listed by `ip netns list` (each line is 'NAME' or 'NAME (id: N)')."""
    names = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def _require_netns() -> None:
    """Skip, saying exactly why, where network namespaces cannot be made."""
    if not sys.platform.startswith("linux"):
        pytest.skip(f"network namespaces need Linux, this is {sys.platform}")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip(f"`ip netns add` needs root (CAP_NET_ADMIN); running as uid {os.geteuid()}")
    probe = f"sr-{os.getpid()}-probe-{secrets.token_hex(2)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` failed here (exit {made.returncode}): {made.stderr.strip()}")
    _ip("netns", "delete", probe)


class Namespaces:
    """Three host namespaces and a bridge namespace joining them, torn down with every process run in them."""

    def __init__(self, log_dir: Path) -> None:
        self.prefix = f"sr-{os.getpid()}-{secrets.token_hex(2)}-"
        self.subnet = f"10.213.{secrets.randbelow(256)}"
        self.ns = {role: self.prefix + role for role in ROLES}
        self.bridge_ns = self.prefix + "br"
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items()
                    if not k.lower().endswith("_proxy") and not k.startswith("SERAPHIM_")}

    def address(self, role: str) -> str:
        return f"{self.subnet}.{HOST_NUMBER[role]}"

    def __enter__(self) -> "Namespaces":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        br = self.bridge_ns
        _ip("netns", "add", br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        _ip("-n", br, "link", "set", "br0", "up")
        for role in ROLES:
            ns = self.ns[role]
            _ip("netns", "add", ns)
            _ip("-n", br, "link", "add", f"v-{role}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", br, "link", "set", f"v-{role}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(role)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _argv(self, role: str, cli_args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], sys.executable, "-m", "seraphim.scheduler.cli", *cli_args]

    def start(self, role: str, name: str, cli_args: list[str]) -> subprocess.Popen:
        """A long-running `seraphim` command in role's namespace, in its own process group, logging to name.log."""
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(self._argv(role, cli_args), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=self.env,
                                    cwd=self.log_dir)
        self.procs.append(proc)
        return proc

    def run(self, role: str, cli_args: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """A short `seraphim` command in role's namespace; its output is returned."""
        return subprocess.run(self._argv(role, cli_args), capture_output=True, text=True, timeout=timeout_s,
                              env=self.env, cwd=self.log_dir, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        """Stop every process we started, then anything else left in our namespaces, then delete them."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for ns in _our_namespaces(self.prefix):
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "delete", ns)


def _tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:])


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"{what} exited with {proc.returncode} before writing {path}\n{_tail(log)}"
        assert time.monotonic() < deadline, f"{what} did not write {path} within {timeout_s:.0f}s\n{_tail(log)}"
        time.sleep(0.1)


def test_job_runs_across_network_namespaces(tmp_path):
    _require_netns()
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "runs").mkdir()
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB_YAML)
    sched_dir, token = tmp_path / "sched", str(tmp_path / "sched" / "token")
    started = time.monotonic()
    with Namespaces(logs) as net:
        sched = f"{net.address('sched')}:{SCHED_PORT}"
        conn = ["--scheduler", sched, "--token-file", token]
        log_paths = [logs / f"{n}.log" for n in ("scheduler", "ps", "worker")]

        scheduler = net.start("sched", "scheduler", [
            "scheduler", "start", "--host", net.address("sched"), "--port", str(SCHED_PORT), "--data-dir",
            str(sched_dir), "--port-file", str(sched_dir / "port"), "--heartbeat-timeout", "10"])
        _wait_for(sched_dir / "port", scheduler, 60, "the scheduler", log_paths[0])

        submitted = net.run("wk", ["submit", str(job_file), "--launcher", "manual", "--runs-dir",
                                   str(tmp_path / "runs"), *conn])
        assert submitted.returncode == 0, f"submit failed: {submitted.stderr}\n{_tail(log_paths[0])}"
        job_id = submitted.stdout.split()[0]

        ps = net.start("ps", "ps", ["ps", "start", "--job", job_id, "--shard", "0", "--host", net.address("ps"),
                                    "--port", str(PS_PORT), "--data-dir", str(tmp_path / "ps"), *conn])
        worker = net.start("wk", "worker", ["worker", "start", "--job", job_id, "--rank", "0", *conn])

        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            status = net.run("wk", ["status", job_id, *conn])
            assert status.returncode == 0, f"status failed: {status.stderr}"
            state = status.stdout.split()[1]
            if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, (f"job still {state} after {JOB_TIMEOUT_S:.0f}s\n{status.stdout}"
                                                 + "".join("\n" + _tail(p) for p in log_paths))
            time.sleep(0.5)
        job_seconds = time.monotonic() - started
        everything = status.stdout + "".join("\n" + _tail(p) for p in log_paths)
        assert state == "SUCCEEDED", everything
        assert worker.wait(timeout=30) == 0, everything
        assert ps.wait(timeout=30) == 0, f"the PS did not exit by itself when the job ended\n{everything}"
        assert "worker-0: DONE attempt 1" in status.stdout, everything
        final = net.run("wk", ["status", job_id, *conn]).stdout  # after the PS reported its end
        assert re.search(rf"ps-0: DONE attempt 1 pid {ps.pid} at {re.escape(net.address('ps'))}:{PS_PORT} ",
                         final), f"the PS did not register at its own address or end cleanly\n{final}"

        run_dir = Path(status.stdout.split("run directory: ")[1].split()[0])
        result = json.loads((run_dir / "results" / "worker-0.json").read_text())
        assert 0.5 < result["auc"] <= 1.0, result
        assert (run_dir / "metrics" / "worker-0.csv").stat().st_size > 0

        isolated = net.run("wk", ["status", job_id, "--scheduler", f"127.0.0.1:{SCHED_PORT}", "--token-file", token])
        assert isolated.returncode != 0 and "cannot reach the scheduler" in isolated.stderr, \
            f"the worker's namespace reaches the scheduler over loopback: it is not isolated\n{isolated}"
        prefix = net.prefix
    assert _our_namespaces(prefix) == [], f"namespaces left behind: {_our_namespaces(prefix)}"
    print(f"job across namespaces finished in {job_seconds:.1f}s")
