"""Reproducible runs: with ``consistency.deterministic`` two runs of one job and seed end with bitwise the same model,
also when a worker is killed in one of them.

Each job runs twice through a real scheduler, 2 PS shards and 2 data-parallel workers; every worker reports the
digest of the model tables it trained (the PSF ``digest`` over every shard) after its last step.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
import yaml

from seraphim.proto import scheduler_pb2
from test_gnn_job import gamlp_job
from test_lm_job import _user_text, lm_job
from test_scheduler import done, node, tiny_job, wait_for


def _run_twice(client, job: dict, tmp_path: Path, timeout: float) -> list[list[dict]]:
    """Both runs' per-worker results (the two runs under distinct names, started one after the other)."""
    runs = []
    for attempt in ("a", "b"):
        spec = dict(job, name=f"{job['name']}-{attempt}", consistency={"deterministic": True})
        status = wait_for(client, client.submit(yaml.safe_dump(spec), "local", str(tmp_path)).job_id, done,
                          timeout=timeout)
        assert scheduler_pb2.JobState.Name(status.state) == "SUCCEEDED", status.message
        runs.append([json.loads(p.read_text()) for p in sorted((Path(status.run_dir) / "results").glob("*.json"))])
    return runs


def test_two_deterministic_ctr_runs_end_with_the_same_model(tmp_path, scheduler_factory):
    job = tiny_job("repro-ctr", steps=40)
    job["train"].update(model="wide_deep", eval_rows=1000)
    with scheduler_factory().client() as client:
        first, second = _run_twice(client, job, tmp_path, timeout=180)
    digests = {r["model_digest"] for r in first + second}
    assert len(first) == 2 and len(digests) == 1
    assert [r["loss"] for r in first] == [r["loss"] for r in second]


def test_two_deterministic_lm_runs_end_with_the_same_model(tmp_path, scheduler_factory):
    job = lm_job("repro-lm", _user_text(tmp_path / "text"), steps=6, eval_every=6, memory={"swap": "off"})
    with scheduler_factory().client() as client:
        first, second = _run_twice(client, job, tmp_path, timeout=240)
    assert len({r["model_digest"] for r in first + second}) == 1
    assert first[0]["val_loss"] == second[0]["val_loss"]


def test_a_gamlp_worker_killed_mid_training_resumes_to_the_same_model(tmp_path, scheduler_factory):
    """The restarted worker reads its saved training progress back, recomputes the complete propagation levels
    without ticking, and replays the steps since its last save for their random draws only."""
    job = gamlp_job("repro-gnn", rlu={"stages": 2, "threshold": 0.7})
    job["train"]["training"].update(epochs=8, patience=8)
    job["consistency"] = {"deterministic": True}
    job["storage"]["durability"] = "strict"
    with scheduler_factory().client() as client:
        quiet = wait_for(client, client.submit(yaml.safe_dump(dict(job, name="quiet")), "local",
                                               str(tmp_path)).job_id, done, timeout=240)
        status = client.submit(yaml.safe_dump(dict(job, name="killed")), "local", str(tmp_path))
        status = wait_for(client, status.job_id, lambda s: node(s, "worker", 1).pid > 0, timeout=120)
        _kill_in_stage_1(Path(status.run_dir) / "progress" / "worker-1.pt", node(status, "worker", 1).pid)
        killed = wait_for(client, status.job_id, done, timeout=240)
    assert scheduler_pb2.JobState.Name(killed.state) == "SUCCEEDED", killed.reason
    assert node(killed, "worker", 1).attempt == 2
    results = [json.loads(p.read_text()) for status in (quiet, killed)
               for p in sorted((Path(status.run_dir) / "results").glob("worker-*.json"))]
    assert len(results) == 4 and len({r["model_digest"] for r in results}) == 1
    assert len({json.dumps(r["stages"]) for r in results}) == 1  # evaluation too: batch-norm statistics came back


def _kill_in_stage_1(progress: Path, pid: int, timeout_s: float = 240.0) -> None:
    """SIGKILL `pid` once its saved progress shows an evaluation of RLU stage 1 (the stage's training goes on):
    stopped first, so it cannot finish the stage between the check and the kill."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        saved = torch.load(progress, weights_only=False) if progress.exists() else None
        if saved is not None and saved["state"] is not None and saved["state"][1].stage == 1:
            os.kill(pid, signal.SIGSTOP)
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.01)
    raise AssertionError(f"{progress} showed no evaluation of stage 1 within {timeout_s:.0f}s")
