"""The run reports of a finished job: the workers' long-format metric files turned into one wide CSV, a summary,
TensorBoard event files and a plot, so a run can be read without re-running anything.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tensorboardX import RecordWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

from seraphim.scheduler.job_spec import load_job

log = logging.getLogger(__name__)

_FLOAT = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
# Only whole, well-formed rows: a line glued to a killed worker's cut row has too many fields and is skipped.
_ROW = re.compile(rf"^(\d+),({_FLOAT}),([^,\"\r\n]+),({_FLOAT})\r?$", re.M)
_HEADER = re.compile(r"^step,seconds,name,value\r?$", re.M)
_NONBLANK = re.compile(r"^[^\r\n]+", re.M)
_WORKER_FILE = re.compile(r"worker-(\d+)\.csv")
# Per-step series (noisy) get a trailing mean over this fraction of their points, at least one.
_SMOOTH_FRACTION = 0.05
# Subplot families in display order: metric name -> y label. Any other metric gets a subplot of its own.
_FAMILIES = {
    "train_loss": "training log loss",
    "loss": "held-out log loss",
    "auc": "held-out AUC",
    "examples_per_s": "examples / s",
}
_PER_STEP = {"train_loss", "examples_per_s"}


@dataclass(frozen=True)
class MetricRows:
    """Long-format rows of one worker's metric file, in file order."""

    step: np.ndarray  # int64
    seconds: np.ndarray  # float64, since the worker (re)started
    name: np.ndarray  # str
    value: np.ndarray  # float64


@dataclass(frozen=True)
class MetricTable:
    """Wide metrics, one row per (worker, step) sorted by worker then step; the latest row wins a repeated step."""

    names: list[str]  # metric columns, in order of first appearance
    worker: np.ndarray  # int64 [rows]
    step: np.ndarray  # int64 [rows]
    seconds: np.ndarray  # float64 [rows]
    values: np.ndarray  # float64 [rows, metrics]
    present: np.ndarray  # bool [rows, metrics]: recorded at that step (a recorded value may itself be NaN)


def worker_files(metrics_dir: Path) -> dict[int, Path]:
    """``metrics_dir/worker-R.csv`` by rank, rank order; empty when the directory is missing."""
    found = {}
    for path in metrics_dir.glob("worker-*.csv"):
        m = _WORKER_FILE.fullmatch(path.name)
        if m:
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def complete_lines(data: bytes) -> bytes:
    """The bytes up to the last newline: a worker may be mid-write (or was killed there) on the rest."""
    return data[: data.rfind(b"\n") + 1]


def parse_metric_lines(text: str) -> tuple[MetricRows, int]:
    """The well-formed ``step,seconds,name,value`` rows of ``text``, and how many other non-header lines it had."""
    rows = np.array(_ROW.findall(text), dtype=str).reshape(-1, 4)
    skipped = len(_NONBLANK.findall(text)) - len(rows) - len(_HEADER.findall(text))
    parsed = MetricRows(step=rows[:, 0].astype(np.int64), seconds=rows[:, 1].astype(np.float64),
                        name=rows[:, 2], value=rows[:, 3].astype(np.float64))
    return parsed, skipped


def read_metrics(metrics_dir: Path) -> dict[int, MetricRows]:
    """Every worker's complete rows by rank; a cut last line is ignored and malformed lines are logged and skipped."""
    files = worker_files(metrics_dir)
    if not files:
        where = "does not exist" if not metrics_dir.is_dir() else "has no worker-<rank>.csv files"
        raise ValueError(f"no worker metrics to report: {metrics_dir} {where}")
    out = {}
    for rank, path in files.items():
        rows, skipped = parse_metric_lines(complete_lines(path.read_bytes()).decode("utf-8", errors="replace"))
        if skipped:
            log.warning("%s: skipped %d malformed line(s) (a worker killed mid-write, then restarted?)", path, skipped)
        out[rank] = rows
    if not any(len(r.step) for r in out.values()):
        raise ValueError(f"no worker metrics to report: the files in {metrics_dir} have no complete rows")
    return out


def metric_table(per_worker: dict[int, MetricRows]) -> MetricTable:
    """Pivot long rows to wide, keeping the latest value of each repeated (worker, step, name)."""
    worker = np.concatenate([np.full(len(r.step), rank, np.int64) for rank, r in per_worker.items()])
    step = np.concatenate([r.step for r in per_worker.values()])
    seconds = np.concatenate([r.seconds for r in per_worker.values()])
    name = np.concatenate([r.name for r in per_worker.values()])
    value = np.concatenate([r.value for r in per_worker.values()])
    uniq, first, inverse = np.unique(name, return_index=True, return_inverse=True)
    column_order = np.argsort(first)
    column_of = np.empty(len(uniq), np.int64)
    column_of[column_order] = np.arange(len(uniq))
    col = column_of[inverse.ravel()]
    pos = np.arange(len(step))
    order = np.lexsort((pos, col, step, worker))
    worker, step, col, pos = worker[order], step[order], col[order], pos[order]
    last = np.ones(len(order), bool)
    last[:-1] = (worker[1:] != worker[:-1]) | (step[1:] != step[:-1]) | (col[1:] != col[:-1])
    worker, step, col, pos = worker[last], step[last], col[last], pos[last]
    new_row = np.ones(len(pos), bool)
    new_row[1:] = (worker[1:] != worker[:-1]) | (step[1:] != step[:-1])
    starts = np.flatnonzero(new_row)
    row = np.cumsum(new_row) - 1
    values = np.full((len(starts), len(uniq)), np.nan)
    present = np.zeros(values.shape, bool)
    values[row, col] = value[pos]
    present[row, col] = True
    return MetricTable(names=uniq[column_order].tolist(), worker=worker[starts], step=step[starts],
                       seconds=seconds[np.maximum.reduceat(pos, starts)], values=values, present=present)


def write_wide_csv(table: MetricTable, path: Path) -> None:
    """``worker, step, seconds, <metric...>``; a metric not recorded at a step is an empty cell."""
    cells = table.values.astype(object)
    cells[~table.present] = ""
    rows = np.column_stack([table.worker.astype(object), table.step.astype(object),
                            table.seconds.astype(object), cells])
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["worker", "step", "seconds", *table.names])
        out.writerows(rows.tolist())


def summarize(table: MetricTable) -> dict[str, dict]:
    """Per metric: each worker's last recorded value and its step, and the mean of those over workers.

    Non-finite values are written as null, since JSON has no NaN.
    """
    summary = {}
    for j, name in enumerate(table.names):
        idx = np.flatnonzero(table.present[:, j])
        ends = idx[np.append(table.worker[idx][1:] != table.worker[idx][:-1], True)]
        last = table.values[ends, j]
        summary[name] = {
            "last": {str(w): _finite_or_none(v) for w, v in zip(table.worker[ends].tolist(), last.tolist())},
            "last_step": {str(w): s for w, s in zip(table.worker[ends].tolist(), table.step[ends].tolist())},
            "mean": _finite_or_none(float(last.mean())),
        }
    return summary


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def write_tensorboard(table: MetricTable, metrics_dir: Path, out_dir: Path) -> None:
    """One event file per worker in ``out_dir/worker-R/``, one event per step holding that step's metrics.

    Replaces earlier event files there (TensorBoard would show both). Records go straight to tensorboardX's
    RecordWriter: its queued FileWriter costs 3-4x more per event. A row's ``seconds`` count from the worker's
    (re)start, so wall times are anchored at the metric file's last write minus its last row's seconds.
    """
    files = worker_files(metrics_dir)
    for rank in np.unique(table.worker).tolist():
        rows = np.flatnonzero(table.worker == rank)
        logdir = out_dir / f"worker-{rank}"
        logdir.mkdir(parents=True, exist_ok=True)
        for old in logdir.glob("events.out.tfevents.*"):
            old.unlink()
        start = files[rank].stat().st_mtime - table.seconds[rows[np.argmax(table.step[rows])]]
        writer = RecordWriter(str(logdir.absolute() / f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}"))
        try:
            writer.write(Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
            for r in rows.tolist():
                summary = Summary(value=[Summary.Value(tag=table.names[j], simple_value=table.values[r, j])
                                         for j in np.flatnonzero(table.present[r]).tolist()])
                event = Event(step=int(table.step[r]), wall_time=start + float(table.seconds[r]), summary=summary)
                writer.write(event.SerializeToString())
        finally:
            writer.close()


def trailing_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` finite points at each index (fewer at the start): a readable curve of noisy steps."""
    finite = np.isfinite(y)
    total = np.concatenate([[0.0], np.cumsum(np.where(finite, y, 0.0))])
    count = np.concatenate([[0], np.cumsum(finite)])
    lo = np.maximum(np.arange(1, len(y) + 1) - window, 0)
    hi = np.arange(1, len(y) + 1)
    n = count[hi] - count[lo]
    return np.divide(total[hi] - total[lo], n, out=np.full(len(y), np.nan), where=n > 0)


def plot_metrics(table: MetricTable, path: Path, title: str) -> None:
    """One subplot per metric family, one colour per worker; per-step series drawn faint with a trailing mean.

    A bare Figure renders with Agg and, unlike pyplot, keeps no global state: safe off the main thread, no display.
    """
    names = [n for n in _FAMILIES if n in table.names] + [n for n in table.names if n not in _FAMILIES]
    ncols = min(2, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(6 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        j = table.names.index(name)
        for rank in np.unique(table.worker).tolist():
            rows = np.flatnonzero((table.worker == rank) & table.present[:, j])
            x, y = table.step[rows], table.values[rows, j]
            colour = f"C{rank % 10}"
            if name in _PER_STEP:
                ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
                window = max(1, int(len(y) * _SMOOTH_FRACTION))
                ax.plot(x, trailing_mean(y, window), color=colour, linewidth=1.6,
                        label=f"worker {rank} (mean of last {window})")
            else:
                ax.plot(x, y, color=colour, marker="o", markersize=4, linewidth=1.4, label=f"worker {rank}")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(_FAMILIES.get(name, name))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_title(run_dir: Path) -> str:
    """The job's name, algorithm and cluster from the run's copy of its spec; the directory name without one."""
    job = run_dir / "job.yaml"
    if not job.exists():
        return f"run {run_dir.name}"
    spec, _ = load_job(job)
    return (f"{spec.name} ({spec.algorithm}, {spec.cluster.workers} workers, {spec.cluster.ps} PS, "
            f"staleness {spec.consistency.staleness})")


def write_reports(run_dir: Path) -> dict[str, Path]:
    """Write metrics.csv, metrics_summary.json, tensorboard/ and plot.png from ``run_dir/metrics/worker-*.csv``.

    Raises ValueError when there is no metric row to report.
    """
    metrics_dir = run_dir / "metrics"
    table = metric_table(read_metrics(metrics_dir))
    paths = {
        "metrics_csv": run_dir / "metrics.csv",
        "summary": run_dir / "metrics_summary.json",
        "tensorboard": run_dir / "tensorboard",
        "plot": run_dir / "plot.png",
    }
    write_wide_csv(table, paths["metrics_csv"])
    paths["summary"].write_text(json.dumps(summarize(table), indent=2, allow_nan=False))
    write_tensorboard(table, metrics_dir, paths["tensorboard"])
    plot_metrics(table, paths["plot"], run_title(run_dir))
    return paths
