"""2-D rotating shallow water on the periodic unit square, pseudo-spectral with classic RK4:

    ∂u/∂t = (f₀ + ζ) v − ∂B/∂x + ν∆u,   ∂v/∂t = −(f₀ + ζ) u − ∂B/∂y + ν∆v,   ∂h/∂t = −∇·(h u) + ν∆h,

with ``ζ = ∂v/∂x − ∂u/∂y`` and the Bernoulli function ``B = g h + ½|u|²`` (the vector-invariant form). The height
tendency is a divergence plus a Laplacian, both zero in the mean mode, so the total mass ``∫h`` never changes.

    fields = simulate_shallow_water(ShallowWaterConfig(), trajectories=8, frames=20, seed=0)   # [8, 20, 3, 32, 32]

Initial states: the height is ``H`` plus a few Gaussian bumps of random sign, place and width, the fluid at rest:
geostrophic adjustment then sheds interfering gravity waves (PDEBench's dam breaks, with rotation) while inertial
oscillations and slow vortices remain. Channels: ``(h, u, v)``. (A start in geostrophic balance was tried and
dropped: its vortices barely move over the frames a short forecast covers.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from seraphim.algorithms.beamvq.spectral import check_steps, grid, resample


@dataclass(frozen=True)
class ShallowWaterConfig:
    """Physical and numerical settings; with the defaults the gravity-wave speed √(gH) is 1 domain per time unit,
    the deformation radius √(gH)/f₀ a fifth of the domain, and a frame moves a wave by under one grid cell. The
    fields are smooth: simulating at 64 instead of 32 points changes them by under 1%."""

    resolution: int = 32
    out_resolution: int = 32
    gravity: float = 1.0
    depth: float = 1.0  # H, the mean height
    coriolis: float = 5.0  # f₀
    viscosity: float = 2e-4
    dt: float = 5e-3
    frame_interval: float = 0.025
    burn_in: float = 0.2
    bumps: int = 6
    bump_amplitude: float = 0.15  # of H
    bump_width: tuple[float, float] = (0.04, 0.12)  # range of the Gaussian widths (domain units)

    def __post_init__(self) -> None:
        for name in ("gravity", "depth", "dt", "frame_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"shallow_water.{name} must be > 0, got {getattr(self, name)}")
        check_steps(self.dt, self.frame_interval, self.burn_in, "shallow_water")
        if not 0 < self.bump_amplitude < 1:
            raise ValueError(f"shallow_water.bump_amplitude must be in (0, 1) (a fraction of the depth), got "
                             f"{self.bump_amplitude}")


class ShallowWaterSolver:
    """Advances a batch of states ``[B, 3 (h, u, v), n, n]`` (float64, Fourier space along the last two axes)."""

    def __init__(self, config: ShallowWaterConfig) -> None:
        self.config = config
        self.g = grid(config.resolution)

    def tendency(self, state_hat: torch.Tensor) -> torch.Tensor:
        c, g, n = self.config, self.g, self.g.n
        h, u, v = torch.fft.irfft2(state_hat, s=(n, n)).unbind(-3)
        u_hat, v_hat = state_hat[:, 1], state_hat[:, 2]
        zeta = torch.fft.irfft2(1j * g.kx * v_hat - 1j * g.ky * u_hat, s=(n, n))
        absolute = c.coriolis + zeta
        bernoulli_hat = torch.fft.rfft2(c.gravity * h + 0.5 * (u * u + v * v))
        du = torch.fft.rfft2(absolute * v) - 1j * g.kx * bernoulli_hat
        dv = torch.fft.rfft2(-absolute * u) - 1j * g.ky * bernoulli_hat
        dh = -(1j * g.kx * torch.fft.rfft2(h * u) + 1j * g.ky * torch.fft.rfft2(h * v))
        out = torch.stack((dh, du, dv), dim=1) * g.dealias
        return out - c.viscosity * g.k2 * state_hat

    def step(self, s: torch.Tensor) -> torch.Tensor:
        dt = self.config.dt
        k1 = self.tendency(s)
        k2 = self.tendency(s + 0.5 * dt * k1)
        k3 = self.tendency(s + 0.5 * dt * k2)
        k4 = self.tendency(s + dt * k3)
        return s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    def advance(self, state_hat: torch.Tensor, duration: float) -> torch.Tensor:
        for _ in range(round(duration / self.config.dt)):
            state_hat = self.step(state_hat)
        return state_hat


def initial_height(config: ShallowWaterConfig, trajectories: int, generator: torch.Generator) -> torch.Tensor:
    """``H`` plus ``bumps`` periodic Gaussian bumps per trajectory (random sign, centre and width), float64."""
    n, b = config.resolution, config.bumps
    x = torch.arange(n, dtype=torch.float64) / n
    centres = torch.rand(trajectories, b, 2, generator=generator, dtype=torch.float64)
    lo, hi = config.bump_width
    widths = lo + (hi - lo) * torch.rand(trajectories, b, 1, 1, generator=generator, dtype=torch.float64)
    signs = torch.where(torch.rand(trajectories, b, 1, 1, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)

    def periodic_offset(centre: torch.Tensor) -> torch.Tensor:  # [T, b] -> [T, b, n]: distance on the circle
        d = x - centre[..., None]
        return d - torch.round(d)

    dy, dx = periodic_offset(centres[..., 0])[..., :, None], periodic_offset(centres[..., 1])[..., None, :]
    bumps = signs * torch.exp(-(dx**2 + dy**2) / (2 * widths**2))
    return config.depth * (1.0 + config.bump_amplitude * bumps.sum(dim=1) / math.sqrt(b))


def simulate_shallow_water(config: ShallowWaterConfig, trajectories: int, frames: int, seed: int) -> np.ndarray:
    """Trajectories of ``(h, u, v)``, float32 ``[trajectories, frames, 3, out_resolution, out_resolution]``."""
    generator = torch.Generator().manual_seed(seed)
    n = config.resolution
    state = torch.zeros(trajectories, 3, n, n, dtype=torch.float64)
    state[:, 0] = initial_height(config, trajectories, generator)
    solver = ShallowWaterSolver(config)
    state_hat = solver.advance(torch.fft.rfft2(state), config.burn_in)
    out = np.empty((trajectories, frames, 3, config.out_resolution, config.out_resolution), dtype=np.float32)
    for t in range(frames):
        if t:
            state_hat = solver.advance(state_hat, config.frame_interval)
        out[:, t] = resample(torch.fft.irfft2(state_hat, s=(n, n)), config.out_resolution).numpy()
    return out
