"""The same DiT trained in one process with torch.optim.AdamW: the peer the platform's throughput is measured
against, and the quickest way to train a model for the quality benchmarks (the model, data and loop are the job's).

    run = train_in_process(spec, on_step=lambda step, loss, seconds: None)
    images = run.sample(run.ema.model, ["a thick red 3 in the top left on a dark background"])
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from seraphim.algorithms.dit.spec import DiTSpec
from seraphim.algorithms.dit.train import StepCallback, TrainingRun


class LocalTrainer:
    """torch.optim.AdamW on this process's weights, at the spec's learning-rate schedule; the EMA after every step."""

    def __init__(self, run: TrainingRun) -> None:
        t = run.spec.training
        self.run, self.training = run, t
        self.optimizer = torch.optim.AdamW(run.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, foreach=True)

    def step(self, step: int, loss: Callable[[], Tensor]) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.training.lr * self.training.lr_scale(step)
        self.optimizer.zero_grad()
        value = loss()
        value.backward()
        self.optimizer.step()
        if self.run.ema is not None:
            self.run.ema.update(self.run.model)
        return value.item()


def train_in_process(spec: DiTSpec, on_step: StepCallback | None = None) -> TrainingRun:
    run = TrainingRun.build(spec)
    run.train(LocalTrainer(run), on_step=on_step)
    return run
