"""Port files: a server started on port 0 writes the port it bound once it serves; its launcher waits for it.

Written to a temporary name and renamed, so a reader never sees half a number.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from seraphim.proto.atomic_file import atomic_write


def write_port_file(path: Path | None, port: int) -> None:
    if path:
        atomic_write(path, lambda f: f.write(str(port).encode()))


def wait_for_port_file(proc: subprocess.Popen, path: Path, timeout_s: float, what: str, log: Path) -> int:
    """The port `proc` wrote to `path`; RuntimeError with the end of its log if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = f"exited with code {proc.returncode}" if proc.poll() is not None else \
                f"did not serve within {timeout_s:.0f}s"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise RuntimeError(f"{what} {reason}: {tail[0] if tail else 'no output'} (log {log})")
        time.sleep(0.05)
    return int(path.read_text())
