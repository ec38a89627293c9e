"""A backbone with (or without) BeamVQ's code bank beside the path from its encoder to its translator.

    model = BeamVQModel(build_backbone("simvp", shape), bank)     # bank=None: the backbone alone
    out = model(x)                      # training pass: out.forecast, out.latent, out.index, ...
    loss = out.loss(y)                  # the forecast's MSE (+ the commitment and branch terms when weighted)
    cands = model.candidates(x, top_k=4, spread=0.1)               # [B, 4, T_out, C, H, W]

**The forecast is never quantized.** As in the public BeamVQ code, the code bank sits beside the forecaster and
proposes futures; the forecast decodes the encoder's own state ``z``. Putting the bank on the only path cost the
forecast most of its skill in our runs (a 4-vector code per position cannot carry the state's detail).

**The bank follows the encoder; by default it does not train it.** Its codes are EMA means of the encoder's states
(``codebank.py``), so they model the latent distribution whatever the loss. The public script also fits the
decoded codes to the target (``Σ_k MSE(cand_k, y)``, straight-through gradients into the encoder) and pulls the
encoder toward the codes (commitment); here those are ``branch_weight`` and the bank's ``commitment``, 0 by default.
Measured on shallow water with FNO: with both at the public values (1 and 0.25) the forecaster's rollouts came out
with 4-15% more energy than the truth and worse physics before any self-training; at 0 the model trains exactly as
the backbone alone until the first round, so every difference the bench shows is self-training's.

**Candidates are the forecast moved along the code bank's directions.** Candidate 0 is the deterministic forecast;
candidate ``k ≥ 1`` decodes ``z + spread · (e_k − e_0)`` at every position, where ``e_0`` and ``e_k`` are its
nearest and ``k``-th nearest codes (vectors of the learned latent distribution, so the moves stay near states the
decoder has seen). The public code decodes the ``k``-th codes themselves (``spread = 1`` from ``e_0`` rather than
from ``z``); measured on the forecasts of a half-trained FNO on shallow water, those are all worse than the
deterministic forecast in physics and error alike (the filter kept the deterministic one for 32 of 32 inputs), while
at ``spread = 0.1`` the filter's pick beat it by 10% in physics at the same error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from seraphim.algorithms.beamvq.backbones import Forecaster
from seraphim.algorithms.beamvq.codebank import CodeBank


class ForwardPass(NamedTuple):
    forecast: torch.Tensor  # [B, T_out, C, H, W], decoded from the encoder's state
    quantized: torch.Tensor | None  # decoded from the nearest codes; only when the branch is weighted
    branch_weight: float  # weight of the quantized branch's MSE
    aux_loss: torch.Tensor  # the commitment loss; 0 without a bank
    latent: torch.Tensor  # the encoder's state before quantization, [B, D, *positions]
    index: torch.Tensor | None  # nearest code per position, [B·positions]; None without a bank

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """The forecast's MSE, plus the commitment loss and the weighted MSE of the quantized branch."""
        loss = torch.mean((self.forecast - target) ** 2) + self.aux_loss
        if self.quantized is not None:
            loss = loss + self.branch_weight * torch.mean((self.quantized - target) ** 2)
        return loss


class BeamVQModel(nn.Module):
    def __init__(self, backbone: Forecaster, bank: CodeBank | None = None, branch_weight: float = 0.0) -> None:
        super().__init__()
        if branch_weight < 0:
            raise ValueError(f"branch_weight must be >= 0, got {branch_weight}")
        self.backbone, self.bank, self.branch_weight = backbone, bank, branch_weight

    def forward(self, x: torch.Tensor) -> ForwardPass:
        z = self.backbone.encode(x)
        forecast = self.backbone.decode(z, x)
        if self.bank is None:
            return ForwardPass(forecast, None, 0.0, torch.zeros(()), z, None)
        z_q, commitment, index = self.bank.quantize(z)
        quantized = self.backbone.decode(z_q, x) if self.branch_weight > 0 else None
        return ForwardPass(forecast, quantized, self.branch_weight, commitment, z, index)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic forecast, [B, T_out, C, H, W]."""
        return self.backbone(x)

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` forecasts chained, each from the last ``T_in`` frames so far: [B, steps·T_out, C, H, W]."""
        t_in, frames = x.shape[1], x
        outs = []
        for _ in range(steps):
            outs.append(self.predict(frames[:, -t_in:]))
            frames = torch.cat([frames[:, -t_in:], outs[-1]], dim=1)
        return torch.cat(outs, dim=1)

    @torch.no_grad()
    def candidates(self, x: torch.Tensor, top_k: int, spread: float) -> torch.Tensor:
        """``top_k`` forecasts per input, ``[B, top_k, T_out, C, H, W]``: the deterministic one, then the state moved
        by ``spread`` times the step from the nearest to the 2nd, ..., ``top_k``-th nearest code."""
        if self.bank is None:
            raise ValueError("candidates need a code bank: the backbone alone forecasts one future")
        z = self.backbone.encode(x)
        outs = [self.backbone.decode(z, x)]
        if top_k > 1:
            index = self.bank.nearest(z, top_k)
            nearest = self.bank.code_state(index[:, 0], z)
            outs += [self.backbone.decode(z + spread * (self.bank.code_state(index[:, k], z) - nearest), x)
                     for k in range(1, top_k)]
        return torch.stack(outs, dim=1)
