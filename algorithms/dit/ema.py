"""Exponential moving average of a model's weights, the weights a DiT samples with (DiT keeps 0.9999).

    ema = EMA(model, decay=0.999)
    ...; optimizer.step(); ema.update(model)
    images = objective.sample(ema.model, ...)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema <- d ema + (1 - d) theta`` after every step, with ``d = min(decay, (1 + n) / (10 + n))`` at update n
    (the usual warm-up: short runs are not dominated by the random initial weights)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - d)
        self.updates += 1
