"""The two training objectives and their samplers, with classifier-free guidance.

**Time convention (pinned here, tested in tests/test_dit_model.py).** Continuous time t in [0, 1] with
**t = 0 the data and t = 1 pure noise**, as HunyuanVideo's code (``scheduling_flow_match_discrete.py``: sigma runs
1 -> 0, sigma = 1 is noise); the paper's §4.5.1 writes the opposite. DDPM keeps its integer steps 0..T-1 with T-1
the noisiest. Both feed the model a timestep on the 0..1000 scale that grows with the noise (``1000 t`` for flow
matching, the step index for DDPM), so one timestep embedder serves both.

- :class:`FlowMatching` (HunyuanVideo §4.5.1, SD3): ``x_t = (1 - t) x0 + t eps``, the model predicts the velocity
  ``v = eps - x0``; t is logit-normal, ``sigmoid(N(m, s))``. Sampling integrates ``dx/dt = v`` with Euler from t = 1
  to t = 0 over ``n`` steps whose times are shifted by ``t -> s t / (1 + (s - 1) t)`` (HunyuanVideo §5.1: the shift
  keeps 0 and 1 fixed and spends more steps at high noise for s > 1).
- :class:`VPrediction` (Hunyuan-DiT: DDPM with ``predict-type v_prediction`` and a ``scaled_linear`` beta schedule):
  ``x_t = alpha_t x0 + sigma_t eps`` with ``alpha_t^2 = prod(1 - beta)``, ``sigma_t^2 = 1 - alpha_t^2``, the model
  predicts ``v = alpha_t eps - sigma_t x0``. Sampling is DDIM (eta = 0) or DDPM's ancestral step (eta = 1) over ``n``
  evenly spaced steps ending at alpha = 1.

Guidance (DiT's ``forward_with_cfg``, Hunyuan-DiT's default 6.0): ``v = v_null + w (v_cond - v_null)``; the caption
is replaced by the empty caption with probability ``cond_drop`` in training, so one model learns both.

    objective = FlowMatching()
    loss = objective.loss(model, x0, ids, torch.Generator().manual_seed(0))
    images = objective.sample(model, noise, ids, null_ids, steps=25, guidance=4.0, shift=3.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from seraphim.algorithms.dit.errors import DiTInputError

#: the model's signature: noisy x [B, C, *S], timestep [B] on the 0..1000 scale, caption ids [B, L] -> [B, C, *S]
Predictor = Callable[[Tensor, Tensor, Tensor], Tensor]
TIMESTEP_SCALE = 1000.0


def shift_time(t: Tensor, shift: float) -> Tensor:
    """HunyuanVideo's (and SD3's) time shift ``s t / (1 + (s - 1) t)``: 0 and 1 fixed, s > 1 pushes t towards 1."""
    return shift * t / (1 + (shift - 1) * t)


def guided(model: Predictor, x: Tensor, timestep: Tensor, ids: Tensor, null_ids: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance in one batched call: ``null + scale * (cond - null)``; null_ids [1 or B, L]."""
    both = model(torch.cat([x, x]), torch.cat([timestep, timestep]),
                 torch.cat([ids, null_ids.expand_as(ids)]))  # (2B, C, *S)
    cond, null = both.chunk(2)
    return null + scale * (cond - null)


def drop_captions(ids: Tensor, null_ids: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each caption replaced by the empty one with probability p (classifier-free guidance training)."""
    drop = torch.rand(ids.shape[0], generator=generator) < p
    return torch.where(drop[:, None], null_ids.expand_as(ids), ids)


def _broadcast(v: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] to scale a batch of x [B, C, *S]."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class Objective(Protocol):
    def loss(self, model: Predictor, x0: Tensor, ids: Tensor, generator: torch.Generator) -> Tensor: ...

    def sample(self, model: Predictor, noise: Tensor, ids: Tensor, null_ids: Tensor, steps: int, guidance: float,
               **options) -> Tensor: ...


@dataclass(frozen=True)
class FlowMatching:
    """Rectified flow with logit-normal times; see the module docstring for the convention."""

    logit_mean: float = 0.0
    logit_std: float = 1.0
    train_shift: float = 1.0  #: shift applied to the training times too (SD3 does at high resolution); 1: none

    def sample_time(self, n: int, generator: torch.Generator) -> Tensor:
        t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator))
        return shift_time(t, self.train_shift)

    @staticmethod
    def noisy(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        t = _broadcast(t, x0)
        return (1 - t) * x0 + t * eps

    @staticmethod
    def target(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps - x0

    def loss(self, model: Predictor, x0: Tensor, ids: Tensor, generator: torch.Generator) -> Tensor:
        t = self.sample_time(x0.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator)
        v = model(self.noisy(x0, eps, t), TIMESTEP_SCALE * t, ids)
        return torch.mean((v - self.target(x0, eps, t)) ** 2)

    @staticmethod
    def times(steps: int, shift: float) -> Tensor:
        """The n + 1 times of an n-step sampler, 1 -> 0, shifted."""
        if steps < 1:
            raise DiTInputError(f"sampling steps must be >= 1, got {steps}")
        return shift_time(torch.linspace(1.0, 0.0, steps + 1), shift)

    @torch.no_grad()
    def sample(self, model: Predictor, noise: Tensor, ids: Tensor, null_ids: Tensor, steps: int, guidance: float,
               shift: float = 1.0) -> Tensor:
        """Euler from x_1 = noise to x_0: ``x <- x + v(x, t_i) (t_{i+1} - t_i)``."""
        ts = self.times(steps, shift)
        x = noise
        for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
            timestep = torch.full((x.shape[0],), TIMESTEP_SCALE * t)
            x = x + guided(model, x, timestep, ids, null_ids, guidance) * (t_next - t)
        return x


@dataclass(frozen=True)
class VPrediction:
    """DDPM with v-prediction over T steps of a ``scaled_linear`` schedule (Hunyuan-DiT: 0.00085 -> 0.03)."""

    steps_total: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.03

    @property
    def alphas_cumprod(self) -> Tensor:
        betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.steps_total,
                               dtype=torch.float64) ** 2
        return torch.cumprod(1 - betas, dim=0)

    def alpha_sigma(self, step: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t and sigma_t of integer steps [B] (step -1 is the clean end: alpha 1, sigma 0)."""
        cumprod = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])[step + 1]
        return cumprod.sqrt().float(), (1 - cumprod).sqrt().float()

    def noisy(self, x0: Tensor, eps: Tensor, step: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(step)
        return _broadcast(alpha, x0) * x0 + _broadcast(sigma, x0) * eps

    def target(self, x0: Tensor, eps: Tensor, step: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(step)
        return _broadcast(alpha, x0) * eps - _broadcast(sigma, x0) * x0

    def loss(self, model: Predictor, x0: Tensor, ids: Tensor, generator: torch.Generator) -> Tensor:
        step = torch.randint(0, self.steps_total, (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        v = model(self.noisy(x0, eps, step), step.float(), ids)
        return torch.mean((v - self.target(x0, eps, step)) ** 2)

    def timesteps(self, steps: int) -> Tensor:
        """n evenly spaced steps from T-1 down ("trailing" spacing, so the first step is pure noise), then -1."""
        if not 1 <= steps <= self.steps_total:
            raise DiTInputError(f"sampling steps must be in [1, {self.steps_total}], got {steps}")
        start = torch.round(torch.arange(self.steps_total, 0, -self.steps_total / steps)).long() - 1
        return torch.cat([start, torch.tensor([-1])])

    @torch.no_grad()
    def sample(self, model: Predictor, noise: Tensor, ids: Tensor, null_ids: Tensor, steps: int, guidance: float,
               eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """DDIM (eta 0) or ancestral DDPM (eta 1) from x_{T-1} = noise; generator draws the ancestral noise."""
        x = noise
        ts = self.timesteps(steps)
        for step, prev in zip(ts[:-1].tolist(), ts[1:].tolist()):
            v = guided(model, x, torch.full((x.shape[0],), float(step)), ids, null_ids, guidance)
            x = self.step(x, v, step, prev, eta, generator)
        return x

    def step(self, x: Tensor, v: Tensor, step: int, prev: int, eta: float,
             generator: torch.Generator | None = None) -> Tensor:
        """One step from ``step`` to ``prev``: ``x0^ = a x - s v``, ``eps^ = s x + a v``, then
        ``x' = a' x0^ + sqrt(s'^2 - c^2) eps^ + c z`` with ``c = eta (s'/s) sqrt(1 - a^2/a'^2)`` (DDIM's sigma)."""
        (a, a_prev), (s, s_prev) = self.alpha_sigma(torch.tensor([step, prev]))
        x0 = a * x - s * v
        eps = s * x + a * v
        c = eta * (s_prev / s) * torch.sqrt(torch.clamp(1 - (a / a_prev) ** 2, min=0.0))
        out = a_prev * x0 + torch.sqrt(torch.clamp(s_prev ** 2 - c ** 2, min=0.0)) * eps
        return out + c * torch.randn(x.shape, generator=generator) if eta > 0 else out
