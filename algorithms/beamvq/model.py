"""A backbone with (or without) BeamVQ's code bank between its encoder and its translator.

    model = BeamVQModel(build_backbone("simvp", shape), bank)     # bank=None: the backbone alone
    out = model(x)                      # training pass: out.forecast, out.aux_loss, out.latent, out.index
    cands = model.candidates(x, top_k=4)                           # [B, 4, T_out, C, H, W]: k-th nearest codes

Candidate ``k`` decodes the state in which every position takes its ``k``-th nearest code (k = 0 is the
deterministic forecast), as the public BeamVQ code builds its top-K futures.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from seraphim.algorithms.beamvq.backbones import Forecaster
from seraphim.algorithms.beamvq.codebank import CodeBank


class ForwardPass(NamedTuple):
    forecast: torch.Tensor  # [B, T_out, C, H, W]
    aux_loss: torch.Tensor  # the commitment loss; 0 without a bank
    latent: torch.Tensor  # the encoder's state before quantization, [B, D, *positions]
    index: torch.Tensor | None  # nearest code per position, [B·positions]; None without a bank


class BeamVQModel(nn.Module):
    def __init__(self, backbone: Forecaster, bank: CodeBank | None = None) -> None:
        super().__init__()
        self.backbone, self.bank = backbone, bank

    def forward(self, x: torch.Tensor) -> ForwardPass:
        z = self.backbone.encode(x)
        if self.bank is None:
            return ForwardPass(self.backbone.decode(z, x), torch.zeros(()), z, None)
        z_q, commitment, index = self.bank.quantize(z)
        return ForwardPass(self.backbone.decode(z_q, x), commitment, z, index)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic forecast (nearest codes), [B, T_out, C, H, W]."""
        return self(x).forecast

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
    def candidates(self, x: torch.Tensor, top_k: int) -> torch.Tensor:
        """``top_k`` forecasts per input, ``[B, top_k, T_out, C, H, W]``, from the top-K retrieved codes."""
        if self.bank is None:
            raise ValueError("candidates need a code bank: the backbone alone forecasts one future")
        z = self.backbone.encode(x)
        index = self.bank.nearest(z, top_k)
        outs = [self.backbone.decode(self.bank.retrieve(z, k, index), x) for k in range(top_k)]
        return torch.stack(outs, dim=1)
