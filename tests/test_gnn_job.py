"""GAMLP as a Seraphim job: hops propagated on real PS processes, data-parallel training, RLU stages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from seraphim.algorithms.gnn.graph_gen import DCSBMSpec, generate
from seraphim.algorithms.gnn.graph_source import GraphSourceSpec
from seraphim.algorithms.gnn.job import GNNSpec, build_model
from seraphim.algorithms.gnn.operators import LaplacianOp
from seraphim.algorithms.gnn.train import InMemoryHops, Split, TrainConfig, fit
from seraphim.proto import scheduler_pb2
from test_scheduler import done, failed_without_restart, wait_for

REPO = Path(__file__).resolve().parents[1]


def gamlp_job(name: str, **train) -> dict:
    return {
        "name": name, "algorithm": "gnn.gamlp",
        "cluster": {"ps": 2, "workers": 2},
        "storage": {"ram_mb": 1, "page_kb": 4, "snapshot_every": 0},
        "train": {
            "graph": {"generate": {"kind": "dcsbm", "nodes": 4000, "avg_degree": 12, "classes": 4, "feature_dim": 16,
                                   "snr": 0.5, "homophily": 0.9, "train_fraction": 0.3}},
            "propagation": {"hops": 3, "label_hops": 2, "label_folds": 2, "tile_rows": 700},
            "model": {"kind": "gamlp", "options": {"hidden": 32, "out_layers": 2, "hop_layers": 1, "dropout": 0.1}},
            "training": {"epochs": 12, "batch_size": 256, "lr": 0.01, "patience": 12},
            **train,
        },
    }


def test_gamlp_job_propagates_on_the_ps_and_trains_on_two_workers(tmp_path, scheduler_factory):
    sched = scheduler_factory("sched")
    with sched.client() as client:
        job = gamlp_job("gamlp", rlu={"stages": 2, "threshold": 0.7})
        job["train"]["graph"]["partition"] = "metis"
        job["consistency"] = {"deterministic": True}  # without it a fast worker's next push may precede a pull
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        status = wait_for(client, status.job_id, done, timeout=240)
    run = Path(status.run_dir)
    results = [json.loads((run / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["test_acc"] == results[1]["test_acc"]  # one model, kept in step on the PS
    assert results[0]["model_digest"] == results[1]["model_digest"]
    assert results[0]["test_acc"] > 0.6  # 4 classes: chance is 0.25
    assert len(results[0]["stages"]) == 2 and results[0]["stages"][1]["confident"] > 0
    # hop features and labels (4000 x 16 x 4 levels + two label rounds) are many times the 2 x 1 MiB RAM budget
    assert results[0]["hop_bytes"] > 0.5 * sum(results[0]["ps_ram_budget_bytes"])
    assert all(b > 0 for b in results[0]["ps_lmdb_bytes"]) and all(b > 0 for b in results[0]["ps_peak_rss_bytes"])
    assert results[0]["hop_cache_bytes"] == 4000 * 4 * 16 * 4     # every node is in the split: all rows held
    metrics = (run / "metrics" / "worker-0.csv").read_text()
    assert "hop" in metrics and "val_acc" in metrics
    assert scheduler_pb2.JobState.Name(status.state) == "SUCCEEDED"


def test_a_worker_holding_its_split_rows_trains_exactly_as_one_process(tmp_path, scheduler_factory):
    graph_dir = tmp_path / "graph"
    data = generate(DCSBMSpec(nodes=1500, avg_degree=8, classes=3, feature_dim=8, snr=0.6, train_fraction=0.2,
                              valid_fraction=0.2, test_fraction=0.3), graph_dir)
    job = gamlp_job("cached", graph={"path": str(graph_dir)}, propagation={"hops": 2},
                    training={"epochs": 6, "batch_size": 128, "lr": 0.01, "patience": 6})
    job["cluster"] = {"ps": 1, "workers": 1}
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = wait_for(client, client.submit(yaml.safe_dump(job), "local", str(tmp_path)).job_id, done,
                          timeout=120)
    run = Path(status.run_dir)
    result = json.loads((run / "results" / "worker-0.json").read_text())
    split_nodes = len(data.train_idx) + len(data.valid_idx) + len(data.test_idx)
    assert split_nodes == 1050 and result["hop_cache_bytes"] == split_nodes * 3 * 8 * 4
    assert "holds gnn_x (1050 split nodes" in (run / "logs" / "worker-0.log").read_text()
    spec = GNNSpec.model_validate(job["train"])      # the same model, seed and batches in this process
    graph = data.graph
    hops = InMemoryHops(LaplacianOp(2)(graph, np.asarray(data.features)))
    split = Split(np.asarray(data.train_idx), np.asarray(data.valid_idx), np.asarray(data.test_idx))
    config = TrainConfig(**spec.training.model_dump(exclude={"hop_cache_mb"}))
    alone = fit(lambda _: build_model(spec, 8, 3), hops, np.asarray(data.labels), split, 3, config)[0]
    assert abs(result["test_acc"] - alone.test_acc) <= 2.5 / len(split.test)  # PS Adam = torch Adam to 1e-6


def test_the_example_specs_are_valid_gnn_jobs():
    for name in ("gamlp", "gamlp_cora", "gamlp_citeseer", "gamlp_large"):
        spec = GNNSpec.model_validate(yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())["train"])
        assert spec.propagation.hops >= 1


def test_pasca_search_runs_each_trial_as_a_job_and_reports_the_pareto_front(tmp_path, scheduler_factory):
    search = {
        "name": "search", "algorithm": "gnn.pasca", "cluster": {"ps": 1, "workers": 1},
        "train": {
            "graph": {"generate": {"kind": "dcsbm", "nodes": 1500, "avg_degree": 8, "classes": 3, "feature_dim": 8}},
            "trials": 3, "sampler": "random", "seed": 1,
            "space": {"hops": [1, 3], "messages": ["last", "concat", "recursive_attention"], "hidden": [16]},
            "training": {"epochs": 4, "batch_size": 256, "lr": 0.01},
            "trial_cluster": {"ps": 1, "workers": 1, "ram_mb": 8},
        },
    }
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(search), "local", str(tmp_path))
        status = wait_for(client, status.job_id, done, timeout=240)
        trial_jobs = [j for j in client.jobs() if j.name.startswith("search-t")]
    assert len(trial_jobs) == 3 and all(scheduler_pb2.JobState.Name(j.state) == "SUCCEEDED" for j in trial_jobs)
    run = Path(status.run_dir)
    report = json.loads((run / "pareto.json").read_text())
    front = report["front"]
    assert len(report["trials"]) == 3 and 1 <= len(front) <= 3
    for p in report["trials"]:  # nothing outside the front beats a front member on both objectives
        assert not any(p["valid_acc"] > f["valid_acc"] and p["seconds"] < f["seconds"] for f in front)
    assert (run / "pareto.png").stat().st_size > 1000


def test_a_gamlp_job_on_a_malformed_graph_fails_at_once_without_restarts(tmp_path, scheduler_factory):
    graph_dir = tmp_path / "graph"
    generate(DCSBMSpec(nodes=300, avg_degree=4, classes=3, feature_dim=4), graph_dir)
    np.save(graph_dir / "split" / "test.npy", np.array([5, 300], dtype=np.int64))  # the graph has nodes 0..299
    job = gamlp_job("broken", graph={"path": str(graph_dir)})
    job["cluster"] = {"ps": 1, "workers": 2, "max_restarts": 3}
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        status = failed_without_restart(client, status.job_id)
    assert re.search(r"worker-[01] failed with an input error that a restart would repeat \(not restarted\): "
                     r"GraphError: split test holds node id 300, outside \[0, 299\]", status.reason), status.reason


def test_a_job_spec_with_zero_hops_two_sources_or_rlu_without_label_hops_is_refused():
    graph = {"generate": {"kind": "dcsbm", "nodes": 100}}
    with pytest.raises(ValueError, match="hops must be >= 1"):
        GNNSpec.model_validate({"graph": graph, "propagation": {"hops": 0}})
    with pytest.raises(ValueError, match="exactly one of graph.path, graph.ogb, graph.generate"):
        GraphSourceSpec.model_validate({"path": "/x", **graph})
    with pytest.raises(ValueError, match="set propagation.label_hops"):
        GNNSpec.model_validate({"graph": graph, "rlu": {"stages": 2}})
