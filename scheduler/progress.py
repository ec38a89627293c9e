"""One progress line for a running job, drawn from the scheduler's JobStatus: step, loss, AUC, accuracy, a
self-training round with its skill and physics scores, throughput, restarts; notable events (a process lost or
restarted) are printed above it as they happen."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from seraphim.proto import scheduler_pb2


class ProgressBar:
    """Redrawn in place on a terminal; printed every few seconds otherwise (a log, CI)."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = total_steps
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._last_print = 0.0

    def line(self, status: scheduler_pb2.JobStatus) -> str:
        done = min(status.step, self.total)
        filled = int(self.width * done / max(1, self.total))
        parts = [f"[{'#' * filled}{'.' * (self.width - filled)}] step {done}/{self.total}"]
        m = status.metrics
        if "hop" in m and "hops_total" in m:
            parts.append(f"hop {m['hop']:.0f}/{m['hops_total']:.0f}")
        if "round" in m and "rounds_total" in m:
            parts.append(f"round {m['round']:.0f}/{m['rounds_total']:.0f}")
        if "train_loss" in m:
            parts.append(f"loss {m['train_loss']:.4f}")
        if "auc" in m:
            parts.append(f"auc {m['auc']:.4f}")
        for name in ("val_acc", "test_acc", "accuracy", "val_ppl", "skill", "physics"):
            if name in m:
                parts.append(f"{name.replace('_', ' ')} {m[name]:.4f}")
        if "examples_per_s" in m:
            parts.append(f"{m['examples_per_s'] * max(1, status.num_workers):,.0f} ex/s")
        if "tokens_per_s" in m:
            parts.append(f"{m['tokens_per_s'] * max(1, status.num_workers):,.0f} tok/s")
        if "pages_in_flight" in m:
            parts.append(f"pages in flight {m['pages_in_flight']:.1f}")
        if "alpha" in m:
            parts.append(f"alpha {m['alpha']:.2f}")
        if "planned_peak_mb" in m:
            parts.append(f"planned peak {m['planned_peak_mb']:.1f} MiB")
        if "bytes_moved_mb" in m:
            parts.append(f"moved {m['bytes_moved_mb'] * max(1, status.num_workers) / 1024:.2f} GiB")
        if status.restarts:
            parts.append(f"restarts {status.restarts}")
        return "  ".join(parts)

    def note(self, text: str) -> None:
        """An event line printed above the bar."""
        self.stream.write(("\r" if self.tty else "") + text.ljust(100 if self.tty else 0) + "\n")
        self.stream.flush()

    def draw(self, status: scheduler_pb2.JobStatus, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line(status).ljust(100) + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last_print > 5:
            self.stream.write(self.line(status) + "\n")
            self.stream.flush()
            self._last_print = now
