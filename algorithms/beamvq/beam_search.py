"""Beam search over forecast rollouts: BeamVQ's way of sampling many futures and keeping the best.

    result = beam_search(model.candidates, x, BeamConfig(width=2, top_k=4, horizon=2, keep=1), score, truth)
    result.inputs, result.targets   # the (input window, candidate) pairs self-training adds to the training set

Each of the ``N`` inputs starts one beam. At every rollout step each beam's ``T_in``-frame window yields ``top_k``
candidate forecasts; ``score(candidates, context, truth_step)`` gives each a cost (lower is better; the context is
the input's last real frame) and a beam's cost is the sum over its steps; the ``width`` cheapest of the
``beams × top_k`` extensions go on, their windows rolled forward by the candidate frames.

What is kept for self-training: with the filter, the ``keep`` cheapest extensions of every input at every step
(the heads of the best beams), each paired with the window it was forecast from; that window is model-generated
from step 2 on, so the pairs teach the model to continue its own rollouts. Without the filter (the public script,
which adds every top-K candidate) nothing is scored: every candidate of every step is kept and the beams advance by
a uniformly random choice among the extensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: (inputs [M, T_in, C, H, W], top_k) -> candidates [M, top_k, T_out, C, H, W]
Propose = Callable[[torch.Tensor, int], torch.Tensor]
#: (candidates [M, T_out, C, H, W], context [M, C, H, W], truth [M, T_out, C, H, W] or None) -> cost [M], lower is
#: better. The context is the last frame of the *real* input at every rollout step, not the beam's last forecast
#: frame: conserved (mass) and steady (energy) quantities are held to the real state, so a drift cannot accumulate
#: along a beam one step at a time.
Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class BeamConfig:
    width: int = 2  # beams carried from step to step, per input
    top_k: int = 4  # candidates per beam and step: the K nearest codes
    horizon: int = 2  # rollout steps of T_out frames
    keep: int = 1  # extensions per input and step added to the training set (with the filter)
    filter: bool = True  # False: every candidate kept, no scores (the public script)
    spread: float = 0.1  # how far candidates move toward the other codes (BeamVQModel.candidates)
    nudge: bool = True  # kept candidates get the real state's energy spectrum (nudging.py); with the filter only

    def __post_init__(self) -> None:
        for name in ("width", "top_k", "horizon", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"beam.{name} must be >= 1, got {getattr(self, name)}")
        if self.spread <= 0:
            raise ValueError(f"beam.spread must be > 0, got {self.spread}")
        if self.keep > self.width:
            raise ValueError(f"beam.keep ({self.keep}) cannot exceed beam.width ({self.width}): only the beams' "
                             f"heads are kept")


@dataclass
class BeamResult:
    inputs: torch.Tensor  # [P, T_in, C, H, W]: the window each kept candidate was forecast from
    targets: torch.Tensor  # [P, T_out, C, H, W]: the kept candidates
    costs: torch.Tensor  # [P]: their step cost (NaN without the filter)
    origin: torch.Tensor  # [P]: the input (row of ``x``) whose beam each kept candidate continues
    best: torch.Tensor  # [N, horizon·T_out, C, H, W]: each input's cheapest beam (the first one without the filter)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[n, index[n, j]]`` for t ``[N, S, ...]`` and index ``[N, J]`` -> ``[N, J, ...]``."""
    shape = index.shape + (1,) * (t.dim() - 2)
    return torch.gather(t, 1, index.reshape(shape).expand(*index.shape, *t.shape[2:]))


@torch.no_grad()
def beam_search(propose: Propose, x: torch.Tensor, config: BeamConfig, score: Score | None = None,
                truth: torch.Tensor | None = None, generator: torch.Generator | None = None) -> BeamResult:
    """Search ``config.horizon`` steps from inputs ``x [N, T_in, C, H, W]``; ``truth [N, horizon·T_out, C, H, W]``
    (when known) is handed to ``score`` step by step. ``score`` is required with the filter."""
    if config.filter and score is None:
        raise ValueError("beam search with the physics filter needs a score function")
    n, t_in = x.shape[:2]
    windows = x[:, None]  # [N, B, T_in, C, H, W], B = 1 at the start
    total = torch.zeros(n, 1, dtype=torch.float64)
    paths = x.new_zeros((n, 1, 0, *x.shape[2:]))  # the frames each beam forecast so far
    kept_inputs, kept_targets, kept_costs, kept_origin = [], [], [], []
    for step in range(config.horizon):
        beams = windows.shape[1]
        cands = propose(windows.flatten(0, 1), config.top_k)  # [N·B, K, T_out, C, H, W]
        t_out = cands.shape[2]
        cands = cands.reshape(n, beams * config.top_k, *cands.shape[2:])  # extensions, parent-major
        parent = torch.arange(beams * config.top_k).div(config.top_k, rounding_mode="floor").expand(n, -1)
        parent_windows = _gather(windows, parent)  # [N, B·K, T_in, ...]
        if config.filter:
            context = x[:, None, -1].expand(-1, beams * config.top_k, *x.shape[2:]).flatten(0, 1)
            step_truth = None
            if truth is not None:
                frames = truth[:, step * t_out:(step + 1) * t_out]
                step_truth = frames[:, None].expand(-1, beams * config.top_k, *frames.shape[1:]).flatten(0, 1)
            cost = score(cands.flatten(0, 1), context, step_truth).reshape(n, -1).to(torch.float64)
            extended = _gather(total, parent) + cost  # [N, B·K]
            order = extended.argsort(dim=1)[:, :config.width]
            best = order[:, :config.keep]
            kept_inputs.append(_gather(parent_windows, best).flatten(0, 1))
            kept_targets.append(_gather(cands, best).flatten(0, 1))
            kept_costs.append(torch.gather(cost, 1, best).flatten())
            kept_origin.append(torch.arange(n).repeat_interleave(config.keep))
            total = torch.gather(extended, 1, order)
        else:
            order = torch.rand(n, beams * config.top_k, generator=generator).argsort(dim=1)[:, :config.width]
            kept_inputs.append(parent_windows.flatten(0, 1))
            kept_targets.append(cands.flatten(0, 1))
            kept_costs.append(torch.full((n * beams * config.top_k,), float("nan"), dtype=torch.float64))
            kept_origin.append(torch.arange(n).repeat_interleave(beams * config.top_k))
            total = torch.zeros(order.shape, dtype=torch.float64)
        chosen = _gather(cands, order)  # [N, width, T_out, ...]
        paths = torch.cat([_gather(paths, _gather(parent, order)), chosen], dim=2)
        windows = torch.cat([_gather(parent_windows, order), chosen], dim=2)[:, :, -t_in:]
    return BeamResult(torch.cat(kept_inputs), torch.cat(kept_targets), torch.cat(kept_costs), torch.cat(kept_origin),
                      paths[:, 0])
