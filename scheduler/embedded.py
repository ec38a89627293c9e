"""A scheduler as a child process on a free loopback port: what `seraphim run` starts for one job."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from seraphim.proto.port_file import wait_for_port_file


class SchedulerProcess:
    """`seraphim scheduler start` on data_dir; its address and token once it serves."""

    def __init__(self, data_dir: Path, port: int = 0, heartbeat_timeout_s: float = 10.0,
                 extra_args: Sequence[str] = (), start_timeout_s: float = 60.0) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        port_file = data_dir / "scheduler.port"
        port_file.unlink(missing_ok=True)
        self.log_path = data_dir / "scheduler.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "seraphim.scheduler.cli", "scheduler", "start", "--data-dir", str(data_dir),
                 "--port", str(port), "--port-file", str(port_file), "--heartbeat-timeout",
                 str(heartbeat_timeout_s), *extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.port = wait_for_port_file(self.proc, port_file, start_timeout_s, "the scheduler", self.log_path)
        except BaseException:  # Ctrl-C while it starts too: never leave it running
            self.stop()
            raise
        self.address = f"127.0.0.1:{self.port}"
        self.token_file = data_dir / "token"
        self.token = self.token_file.read_text().strip()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """Signal the scheduler and wait; SIGKILL if it outlives timeout_s."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
