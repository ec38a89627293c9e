"""The metrics file of one worker: ``metrics/worker-<rank>.csv`` in long format (step, seconds, name, value).

Long format lets each step carry whichever metrics it has (evaluation steps add loss and auc) and lets a
restarted worker simply append; readers keep the latest row of a repeated (step, name).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

HEADER = ("step", "seconds", "name", "value")


class MetricsWriter:
    """Appends rows and flushes after each batch, so a follower sees them at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _cut_partial_line(path)
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(HEADER)
            self._file.flush()

    def write_rows(self, rows: Iterable[tuple[int, float, str, float]]) -> None:
        self._csv.writerows((step, round(seconds, 4), name, float(value)) for step, seconds, name, value in rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _cut_partial_line(path: Path) -> None:
    """Drop a last line that a killed writer left without its newline, so appended rows start on a line of their own."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
