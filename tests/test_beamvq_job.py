"""BeamVQ as a job: two workers through the scheduler share one code bank on the PS and self-train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from seraphim.proto import scheduler_pb2
from seraphim.scheduler.progress import ProgressBar
from test_scheduler import done, wait_for


def beamvq_job(name: str) -> dict:
    return {
        "name": name, "algorithm": "beamvq",
        "cluster": {"ps": 1, "workers": 2},
        "storage": {"ram_mb": 8, "page_kb": 16, "snapshot_every": 0},
        "train": {
            "fields": {"generate": {"kind": "shallow_water", "trajectories": 6, "frames": 8,
                                    "options": {"resolution": 16, "out_resolution": 16}}},
            "split": {"train": 3, "pool": 1, "test": 2},
            "windows": {"t_in": 2, "t_out": 2, "eval_steps": 2},
            "backbone": {"name": "fno", "sizes": {"width": 8, "modes": 4, "layers": 2}},
            "codebank": {"codes": 16, "code_dim": 4},
            "beam": {"width": 2, "top_k": 2, "horizon": 2, "keep": 1},
            "training": {"steps": 12, "batch_size": 4, "rounds": 1, "beam_inputs": 3, "pool_inputs": 2},
        },
    }


def test_two_workers_train_beamvq_with_one_code_bank_on_the_ps(tmp_path, scheduler_factory):
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(beamvq_job("beamvq")), "local", str(tmp_path))
        status = wait_for(client, status.job_id, done, timeout=240)
    assert scheduler_pb2.JobState.Name(status.state) == "SUCCEEDED", status.reason
    run = Path(status.run_dir)
    results = [json.loads((run / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["skill"] == results[1]["skill"]  # one model and one code bank, in step on the PS
    assert np.isfinite(results[0]["skill"]) and results[0]["physics"] >= 0
    assert [r["round"] for r in results[0]["rounds"]] == [0] and results[0]["rounds"][0]["added"] > 0
    bank = run / "codebank"
    pushed = [np.load(bank / f"pushed-{r}.npy") for r in (0, 1)]
    assert all(np.abs(p).max() > 0 for p in pushed)
    # the rows on the PS are the initial codes plus every push of both workers, and of nothing else
    np.testing.assert_allclose(np.load(bank / "final.npy"), np.load(bank / "initial.npy") + pushed[0] + pushed[1],
                               rtol=1e-4, atol=1e-5)
    assert (run / "forecast.png").stat().st_size > 5000
    line = ProgressBar(13).line(status)
    assert "round 1/1" in line and "skill" in line and "physics" in line, line
