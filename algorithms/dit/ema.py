"""Exponential moving average of a model's weights, the weights a DiT samples with (DiT keeps 0.9999).

    ema = EMA(model, decay=0.999)
    ...; optimizer.step(); ema.update(model)
    images = objective.sample(ema.model, ...)
    ema.update_from(paged.named_tensors(), steps=10)   # every 10 steps of a model whose weights live on the PS
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import Tensor, nn


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

    @torch.no_grad()
    def update_from(self, tensors: Iterable[tuple[str, Tensor]], steps: int) -> None:
        """One update standing for ``steps`` optimizer steps, from named weights read elsewhere (the PS pages):
        ``d`` becomes ``d ** steps``, as if the weights had stood still over those steps."""
        d = self.current_decay() ** steps
        params = dict(self.model.named_parameters())
        for name, value in tensors:
            params[name].lerp_(value, 1.0 - d)
        self.updates += steps

    @torch.no_grad()
    def reset_from(self, tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Start again from these weights (a restarted worker's, read from the PS)."""
        params = dict(self.model.named_parameters())
        for name, value in tensors:
            params[name].copy_(value)
