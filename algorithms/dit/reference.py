"""The same DiT trained in one process with torch.optim.AdamW: the peer the platform's throughput is measured
against, and the quickest way to train a model for the quality benchmarks (the model, data and loop are the job's).

    run = train_in_process(spec, on_step=lambda step, loss, seconds: None)
    images = run.sample(run.ema.model, ["a thick red 3 in the top left on a dark background"])
"""

from __future__ import annotations

import torch

from seraphim.algorithms.dit.spec import DiTSpec
from seraphim.algorithms.dit.train import StepCallback, TrainingRun


def train_in_process(spec: DiTSpec, on_step: StepCallback | None = None) -> TrainingRun:
    run = TrainingRun.build(spec)
    t = spec.training
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, foreach=True)
    run.train(optimizer, on_step=on_step)
    return run
