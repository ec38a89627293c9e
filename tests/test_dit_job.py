"""The dit job through a real scheduler, PS shards and two workers: one model on the PS, a sample grid written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from seraphim.algorithms.dit.spec import DiTSpec
from seraphim.algorithms.dit.train import TrainingRun
from seraphim.proto import scheduler_pb2
from test_scheduler import done, wait_for

TINY_MODEL = {"dim": 32, "heads": 2, "depth": 2, "text_dim": 16, "text_heads": 2, "text_depth": 1}


def test_dit_job_trains_on_two_workers_and_writes_a_sample_grid(tmp_path, scheduler_factory):
    """With a frozen caption encoder: its pages get no updates, the rest of the model (its projection too) trains."""
    job = {
        "name": "dit", "algorithm": "dit",
        "cluster": {"ps": 2, "workers": 2},
        "storage": {"ram_mb": 4, "page_kb": 4, "snapshot_every": 0},
        "train": {"data": {"kind": "digits"}, "model": {"preset": "hydit-t/4", "overrides": TINY_MODEL,
                                                     "text_encoder": "frozen"},
                  "training": {"steps": 3, "batch_size": 4, "log_every": 1},
                  "sampling": {"steps": 2, "grid": 4}},
    }
    sched = scheduler_factory("sched")
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        status = wait_for(client, status.job_id, done, timeout=120)
    assert scheduler_pb2.JobState.Name(status.state) == "SUCCEEDED"
    run = Path(status.run_dir)
    results = [json.loads((run / "results" / f"worker-{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["parameters"] == results[1]["parameters"] and results[0]["steps"] == 3
    grid = Path(results[0]["samples"][0])
    assert grid == run / "samples" / "step-000003.png"
    with Image.open(grid) as image:
        assert image.size == (2 * 33 * 4, 2 * 33 * 4)  # 2 x 2 samples of 32 px plus a 1 px border, enlarged 4x
    assert len((run / "samples" / "step-000003.txt").read_text().splitlines()) == 4
    assert list((run / "tensorboard" / "samples").glob("events.out.tfevents.*"))
    initial = TrainingRun.build(DiTSpec.model_validate(job["train"])).model.state_dict()
    trained = load_file(run / "model" / "ema.safetensors")
    encoder = [name for name in initial if name.startswith("cond.text.")]
    assert encoder and all(torch.equal(trained[name], initial[name]) for name in encoder)
    assert not torch.equal(trained["cond.text_proj.weight"], initial["cond.text_proj.weight"])
    metrics = (run / "metrics" / "worker-1.csv").read_text()
    assert "train_loss" in metrics and "tokens_per_s" in metrics


@pytest.mark.parametrize("train, message", [
    ({"sampling": {"sampler": "ddim"}}, r"sampler 'ddim' integrates v_prediction, not flow_matching; use one of "
                                        r"\['euler'\]"),
    ({"data": {"kind": "digit_videos"}}, r"model patch \(4, 4\) has 2 axes but data.kind 'digit_videos' has 3"),
    ({"data": {"kind": "image_folder"}}, r"data.path is required for kind image_folder"),
    ({"data": {"kind": "image_folder", "path": "x"}, "evaluation": {"samples": 10}}, r"set it to 0 for an image folder"),
    ({"model": {"preset": "dit-xl/2"}}, r"unknown model preset 'dit-xl/2'; known: \['hydit-t/4'"),
    ({"model": {"overrides": {"depth": 5}}}, r"hunyuan_dit takes an even depth >= 2"),
])
def test_a_dit_spec_that_cannot_work_is_refused_with_the_reason(train, message):
    with pytest.raises(ValueError, match=message):
        DiTSpec.model_validate(train)
