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
                 extra_args: Sequence[str] = (), start_timeout_s: float = 60.0, http_port: int | None = None) -> None:
        """``http_port``: serve the dashboard and /metrics there too (0: a free port); see ``dashboard_url``."""
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        port_file, http_port_file = data_dir / "scheduler.port", data_dir / "scheduler.http-port"
        port_file.unlink(missing_ok=True)
        http_port_file.unlink(missing_ok=True)
        http_args = [] if http_port is None else ["--http-port", str(http_port), "--http-port-file",
                                                  str(http_port_file)]
        self.log_path = data_dir / "scheduler.log"
        self.args = ["--data-dir", str(data_dir), "--port", str(port), "--port-file", str(port_file),
                     "--heartbeat-timeout", str(heartbeat_timeout_s), *http_args, *extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "seraphim.scheduler.cli", "scheduler", "start", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.port = wait_for_port_file(self.proc, port_file, start_timeout_s, "the scheduler", self.log_path)
        except BaseException:  # Ctrl-C while it starts too: never leave it running
            self.stop()
            raise
        self.address = f"127.0.0.1:{self.port}"
        self.token_file = data_dir / "token"
        self.token = self.token_file.read_text().strip()
        # the scheduler writes the HTTP port before the gRPC one: it is there once the scheduler serves
        self.http_port = int(http_port_file.read_text()) if http_port is not None else None

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard with the token in the URL's fragment (the browser keeps it; servers never see it)."""
        if self.http_port is None:
            return None
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}/#token={self.token}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """Signal the scheduler and wait; SIGKILL if it outlives timeout_s."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
