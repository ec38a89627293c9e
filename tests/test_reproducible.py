"""Reproducible runs: with ``consistency.deterministic`` two runs of one job and seed end with bitwise the same model.

Each job runs twice through a real scheduler, 2 PS shards and 2 data-parallel workers; every worker reports the
digest of the model tables it trained (the PSF ``digest`` over every shard) after its last step.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from seraphim.proto import scheduler_pb2
from test_lm_job import _user_text, lm_job
from test_scheduler import done, tiny_job, wait_for


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
