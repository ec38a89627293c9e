"""GAMLP as a Seraphim job: hops propagated on real PS processes, data-parallel training, RLU stages."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from seraphim.proto import scheduler_pb2
from test_scheduler import done, wait_for


def gamlp_job(name: str, **train) -> dict:
    return {
        "name": name, "algorithm": "gnn.gamlp",
        "cluster": {"ps": 2, "workers": 2},
        "storage": {"ram_mb": 1, "page_kb": 4, "snapshot_every": 0},
        "train": {
            "graph": {"generate": {"kind": "dcsbm", "nodes": 4000, "avg_degree": 12, "classes": 4, "feature_dim": 16,
                                   "snr": 0.5, "homophily": 0.9, "train_fraction": 0.3}},
            "propagation": {"hops": 3, "label_hops": 2, "chunk_rows": 700},
            "model": {"kind": "gamlp", "options": {"hidden": 32, "out_layers": 2, "hop_layers": 1, "dropout": 0.1}},
            "training": {"epochs": 12, "batch_size": 256, "lr": 0.01, "patience": 12},
            **train,
        },
    }


def test_gamlp_job_propagates_on_the_ps_and_trains_on_two_workers(tmp_path, scheduler_factory):
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(gamlp_job("gamlp", rlu={"stages": 2, "threshold": 0.7})), "local",
                               str(tmp_path))
        status = wait_for(client, status.job_id, done, timeout=240)
    run = Path(status.run_dir)
    results = [json.loads((run / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["test_acc"] == results[1]["test_acc"]  # one model, kept in step on the PS
    assert results[0]["test_acc"] > 0.6  # 4 classes: chance is 0.25
    assert len(results[0]["stages"]) == 2 and results[0]["stages"][1]["confident"] > 0
    # hop features and labels (4000 x 16 x 4 levels + two label rounds) are many times the 2 x 1 MiB RAM budget
    assert results[0]["hop_bytes"] > 0.5 * sum(results[0]["ps_ram_budget_bytes"])
    assert all(b > 0 for b in results[0]["ps_lmdb_bytes"]) and all(b > 0 for b in results[0]["ps_peak_rss_bytes"])
    metrics = (run / "metrics" / "worker-0.csv").read_text()
    assert "hop" in metrics and "val_acc" in metrics
    assert scheduler_pb2.JobState.Name(status.state) == "SUCCEEDED"
