"""Follow the workers' metric files and draw one progress line: step, loss, AUC, throughput."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import TextIO


class MetricsFollower:
    """Reads what the workers appended to metrics/worker-*.csv since the last poll."""

    def __init__(self, metrics_dir: Path) -> None:
        self.metrics_dir = metrics_dir
        self._offsets: dict[Path, int] = {}
        self.latest: dict[int, dict[str, float]] = {}
        self.steps: dict[int, int] = {}

    def poll(self) -> None:
        for path in sorted(self.metrics_dir.glob("worker-*.csv")):
            rank = int(path.stem.split("-")[1])
            with open(path, newline="") as f:
                f.seek(self._offsets.get(path, 0))
                text = f.read()
            complete = text[: text.rfind("\n") + 1]
            self._offsets[path] = self._offsets.get(path, 0) + len(complete.encode())
            for row in csv.reader(io.StringIO(complete)):
                if not row or row[0] == "step":
                    continue
                step, _, name, value = int(row[0]), row[1], row[2], float(row[3])
                self.steps[rank] = max(self.steps.get(rank, -1), step)
                self.latest.setdefault(rank, {})[name] = value


class ProgressBar:
    """One line, redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = total_steps
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._last_print = 0.0

    def line(self, follower: MetricsFollower) -> str:
        done = min(follower.steps.values(), default=-1) + 1
        filled = int(self.width * done / max(1, self.total))
        bar = "#" * filled + "." * (self.width - filled)
        parts = [f"[{bar}] step {done}/{self.total}"]
        latest = follower.latest.values()
        for key, label, fmt in (("train_loss", "loss", "{:.4f}"), ("auc", "auc", "{:.4f}")):
            vals = [m[key] for m in latest if key in m]
            if vals:
                parts.append(f"{label} " + fmt.format(sum(vals) / len(vals)))
        rates = [m["examples_per_s"] for m in latest if "examples_per_s" in m]
        if rates:
            parts.append(f"{sum(rates):,.0f} ex/s")
        return "  ".join(parts)

    def draw(self, follower: MetricsFollower, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line(follower).ljust(100) + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last_print > 5:
            self.stream.write(self.line(follower) + "\n")
            self.stream.flush()
            self._last_print = now
