"""Run reports: the wide CSV and summary, TensorBoard events read back, the plot, restarted and killed workers."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboardX.record_writer import masked_crc32c
from tensorboardX.proto.event_pb2 import Event

from seraphim.scheduler.metrics_file import MetricsWriter
from seraphim.scheduler.reports import run_title, trailing_mean, write_reports

REPO = Path(__file__).resolve().parents[1]
STEPS, EVAL_EVERY = 40, 20


def train_loss(rank: int, step: int) -> float:
    return 0.7 - 0.005 * step + 0.01 * rank + 0.02 * (step % 3)


def seconds(rank: int, step: int) -> float:
    return round(0.05 * step + 0.01 * rank, 4)


def held_out(rank: int, step: int) -> dict[str, float]:
    return {"auc": 0.6 + 0.002 * step + 0.001 * rank, "loss": 0.69 - 0.003 * step}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two workers' metric files written by the platform's writer, eval every 20 steps, the job's spec, and the
    reports written once for the tests that only read them."""
    run = tmp_path_factory.mktemp("runs") / "ctr"
    for rank in (0, 1):
        writer = MetricsWriter(run / "metrics" / f"worker-{rank}.csv")
        for step in range(STEPS):
            metrics = {"train_loss": train_loss(rank, step), "examples_per_s": 1000.0 + 10 * rank + step}
            if (step + 1) % EVAL_EVERY == 0:
                metrics.update(held_out(rank, step))
            writer.write_rows((step, seconds(rank, step), k, v) for k, v in metrics.items())
        writer.close()
    shutil.copyfile(REPO / "examples" / "ctr.yaml", run / "job.yaml")
    write_reports(run)
    return run


def read_events(logdir: Path) -> list[Event]:
    """The events of the one event file in ``logdir``, every record's length and data CRC checked."""
    paths = list(logdir.glob("events.out.tfevents.*"))
    assert len(paths) == 1, paths
    data, i, events = paths[0].read_bytes(), 0, []
    while i < len(data):
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
        record = data[i + 12 : i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == masked_crc32c(record)
        events.append(Event.FromString(record))
        i += 16 + length
    return events


def test_wide_csv_and_summary(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["worker", "step", "seconds", "train_loss", "examples_per_s", "auc", "loss"]
    assert [(int(r["worker"]), int(r["step"])) for r in rows] == [(w, s) for w in (0, 1) for s in range(STEPS)]
    for r in rows:
        rank, step = int(r["worker"]), int(r["step"])
        assert float(r["train_loss"]) == train_loss(rank, step)
        assert float(r["examples_per_s"]) == 1000.0 + 10 * rank + step
        if (step + 1) % EVAL_EVERY == 0:
            assert {k: float(r[k]) for k in ("auc", "loss")} == held_out(rank, step)
        else:
            assert r["auc"] == r["loss"] == ""
        assert float(r["seconds"]) == seconds(rank, step)
    summary = json.loads((run_dir / "metrics_summary.json").read_text())
    last = STEPS - 1
    assert summary["train_loss"]["last"] == {"0": train_loss(0, last), "1": train_loss(1, last)}
    assert summary["train_loss"]["mean"] == pytest.approx((train_loss(0, last) + train_loss(1, last)) / 2)
    assert summary["auc"]["last_step"] == {"0": last, "1": last}
    assert summary["auc"]["mean"] == pytest.approx((held_out(0, last)["auc"] + held_out(1, last)["auc"]) / 2)


def test_tensorboard_events_read_back(run_dir):
    paths = write_reports(run_dir)  # a second report replaces the event files rather than adding duplicates
    assert paths == {"metrics_csv": run_dir / "metrics.csv", "summary": run_dir / "metrics_summary.json",
                     "tensorboard": run_dir / "tensorboard", "plot": run_dir / "plot.png"}
    for rank in (0, 1):
        events = read_events(run_dir / "tensorboard" / f"worker-{rank}")
        assert events[0].file_version == "brain.Event:2"
        series: dict[str, list[tuple[int, float]]] = {}
        walltime = {}
        for e in events[1:]:
            walltime[e.step] = e.wall_time
            for v in e.summary.value:
                series.setdefault(v.tag, []).append((e.step, v.simple_value))
        assert set(series) == {"train_loss", "examples_per_s", "auc", "loss"}
        assert [s for s, _ in series["train_loss"]] == list(range(STEPS))
        np.testing.assert_allclose([v for _, v in series["train_loss"]],
                                   [train_loss(rank, s) for s in range(STEPS)], rtol=1e-6)
        assert series["auc"] == [(s, pytest.approx(held_out(rank, s)["auc"], rel=1e-6))
                                 for s in range(EVAL_EVERY - 1, STEPS, EVAL_EVERY)]
        np.testing.assert_allclose(np.diff([walltime[s] for s in range(STEPS)]),
                                   np.diff([seconds(rank, s) for s in range(STEPS)]), atol=1e-6)


def test_plot_is_a_readable_png(run_dir):
    path = run_dir / "plot.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < path.stat().st_size < 1_000_000
    with Image.open(path) as img:
        assert img.size == (1200, 720)  # 2 x 2 subplots of 6 x 3.6 inches at 100 dpi
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # curves, text and antialiasing, not a blank canvas


def test_title_names_the_job(run_dir, tmp_path):
    assert run_title(run_dir).startswith("ctr (ctr, 2 workers, 2 PS")
    assert run_title(tmp_path / "ctr-2") == "run ctr-2"


def test_restarted_and_killed_workers(tmp_path, caplog):
    """Worker 0 is killed mid-line after step 9 and resumes from step 8 (its last clock): the glued first line of
    the restart is skipped with a warning, the re-run steps keep their latest values. Worker 1 is killed mid-line."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    first = [f"{s},{s * 0.5},train_loss,{1.0 + s}\n{s},{s * 0.5},examples_per_s,{100.0 + s}\n" for s in range(10)]
    restart = [f"{s},{(s - 8) * 0.25},train_loss,{2.0 + s}\n{s},{(s - 8) * 0.25},examples_per_s,{200.0 + s}\n"
               for s in range(8, 15)]
    (metrics / "worker-0.csv").write_text("step,seconds,name,value\n" + "".join(first) + "10,5.0,train_l"
                                          + "".join(restart))
    (metrics / "worker-1.csv").write_text("step,seconds,name,value\n" + "".join(first[:3]) + "3,1.5,train_loss,0.")
    with caplog.at_level(logging.WARNING, logger="seraphim.scheduler.reports"):
        paths = write_reports(tmp_path)
    assert "worker-0.csv: skipped 1 malformed line" in caplog.text
    with open(paths["metrics_csv"], newline="") as f:
        rows = {(int(r["worker"]), int(r["step"])): r for r in csv.DictReader(f)}
    assert sorted(rows) == [(0, s) for s in range(15)] + [(1, s) for s in range(3)]
    for s in range(8):
        assert float(rows[0, s]["train_loss"]) == 1.0 + s and float(rows[0, s]["seconds"]) == s * 0.5
    # step 8's train_loss from the restart was glued to the cut line, so the first run's value is the latest whole one
    assert float(rows[0, 8]["train_loss"]) == 9.0 and float(rows[0, 8]["examples_per_s"]) == 208.0
    assert float(rows[0, 8]["seconds"]) == 0.0  # a step's seconds are its latest row's
    for s in range(9, 15):
        assert float(rows[0, s]["train_loss"]) == 2.0 + s and float(rows[0, s]["examples_per_s"]) == 200.0 + s
        assert float(rows[0, s]["seconds"]) == (s - 8) * 0.25
    summary = json.loads(paths["summary"].read_text())
    assert summary["train_loss"]["last"] == {"0": 16.0, "1": 3.0}
    assert summary["train_loss"]["last_step"] == {"0": 14, "1": 2}
    assert paths["plot"].stat().st_size > 10_000


def test_missing_or_empty_metrics_dir(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'metrics'} does not exist"):
        write_reports(tmp_path)
    (tmp_path / "metrics").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'metrics'} has no worker-<rank>.csv files"):
        write_reports(tmp_path)
    (tmp_path / "metrics" / "worker-0.csv").write_text("step,seconds,name,value\n0,0.1,train_lo")
    with pytest.raises(ValueError, match="have no complete rows"):
        write_reports(tmp_path)


def test_nan_values_and_trailing_mean(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "worker-0.csv").write_text("step,seconds,name,value\n0,0.1,train_loss,0.5\n1,0.2,train_loss,nan\n")
    (metrics / "worker-1.csv").write_text("step,seconds,name,value\n0,0.1,train_loss,0.25\n")
    summary = json.loads(write_reports(tmp_path)["summary"].read_text())
    assert summary["train_loss"] == {"last": {"0": None, "1": 0.25}, "last_step": {"0": 1, "1": 0}, "mean": None}
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r["train_loss"] for r in csv.DictReader(f)] == ["0.5", "nan", "0.25"]
    y = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    np.testing.assert_allclose(trailing_mean(y, 2), [1.0, 2.0, 3.0, 5.0, 6.0])
    assert np.isnan(trailing_mean(np.array([np.nan]), 3)[0])

