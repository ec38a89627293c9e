"""How the scheduler starts a job's processes.

``local`` starts each PS shard and worker as a process on the scheduler's host (its own session, so it outlives a
scheduler restart), logging to ``<run_dir>/logs/<role>-<rank>.log``. ``manual`` and ``kubernetes`` start nothing:
processes started by hand or by Kubernetes register themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from seraphim.proto.rpc import TlsFiles
from seraphim.scheduler.store import JobRow, NodeRow

LAUNCHERS = ("local", "manual", "kubernetes")


def process_alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


class LocalLauncher:
    """Processes on this host, started with the same Python that runs the scheduler."""

    def __init__(self, scheduler_address: str, token_file: Path | None, tls: TlsFiles | None) -> None:
        self.scheduler_address = scheduler_address
        self.token_file = token_file
        self.tls = tls
        self._procs: dict[tuple[str, str, int], subprocess.Popen] = {}

    def _common(self, job: JobRow) -> list[str]:
        args = ["--scheduler", self.scheduler_address, "--job", job.job_id]
        if self.token_file:
            args += ["--token-file", str(self.token_file)]
        if self.tls is not None and self.tls.ca:
            args += ["--tls-ca", self.tls.ca]
            if self.tls.server_name:
                args += ["--tls-server-name", self.tls.server_name]
        return args

    def start(self, job: JobRow, node: NodeRow) -> int:
        """Start one process of the job; returns its pid."""
        base = [sys.executable, "-m", "seraphim.scheduler.cli"]
        if node.role == "ps":
            argv = [*base, "ps", "start", *self._common(job), "--shard", str(node.rank), "--data-dir",
                    str(Path(job.run_dir) / "checkpoints"), "--port", str(node.port), "--host", "127.0.0.1"]
            if self.tls is not None and self.tls.cert:
                argv += ["--tls-cert", self.tls.cert, "--tls-key", str(self.tls.key)]
        else:
            argv = [*base, "worker", "start", *self._common(job), "--rank", str(node.rank)]
        log_dir = Path(job.run_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{node.name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=job.run_dir)
        self._procs[(job.job_id, node.role, node.rank)] = proc
        return proc.pid

    def alive(self, node: NodeRow) -> bool:
        proc = self._procs.get((node.job_id, node.role, node.rank))
        if proc is not None and proc.pid == node.pid:
            return proc.poll() is None
        return process_alive(node.pid)

    def exit_code(self, node: NodeRow) -> int | None:
        proc = self._procs.get((node.job_id, node.role, node.rank))
        return proc.returncode if proc is not None and proc.pid == node.pid else None

    def signal(self, node: NodeRow, sig: int = signal.SIGTERM) -> None:
        if self.alive(node):
            try:
                os.kill(node.pid, sig)
            except ProcessLookupError:
                pass
