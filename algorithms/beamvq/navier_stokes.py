"""2-D incompressible Navier–Stokes in vorticity form, pseudo-spectral, as in the FNO benchmark (Li et al. 2021):

    ∂ω/∂t + ∇·(u ω) = ν ∆ω + f − μ ω,   u = (∂ψ/∂y, −∂ψ/∂x),   −∆ψ = ω,   on the periodic unit square,

with Kolmogorov forcing ``f = −A k_f cos(2π k_f y)`` (the curl of ``A sin(2π k_f y) x̂``). Crank–Nicolson for viscosity and drag, Heun for the advection and
forcing, the 2/3 rule against aliasing. Advection is taken in flux form ``∇·(uω)``, whose mean mode is zero
exactly, so the mean vorticity never moves; the velocity comes from the stream function, so it is divergence-free
to round-off.

    fields = simulate_navier_stokes(NavierStokesConfig(), trajectories=8, frames=20, seed=0)   # [8, 20, 2, 32, 32]

Trajectories start from a Gaussian random field, run ``burn_in`` time units (the transient is not recorded) and
record the velocity ``(u, v)`` every ``frame_interval`` on the output grid (a spectral truncation of the
simulation grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from seraphim.algorithms.beamvq.spectral import check_steps, gaussian_random_field, grid, resample


@dataclass(frozen=True)
class NavierStokesConfig:
    """Physical and numerical settings. The defaults are Kolmogorov flow (Kochkov et al. 2021's forcing and drag,
    a larger viscosity): statistically steady turbulence whose kinetic energy stays within about 10% of its mean
    over a trajectory, and whose trajectories decorrelate from each other within the burn-in."""

    resolution: int = 64  # simulation grid
    out_resolution: int = 32  # recorded grid
    viscosity: float = 5e-4
    drag: float = 0.1  # linear (Ekman) drag μ: with the forcing it holds the energy near a steady level
    forcing: float = 1.0  # A
    forcing_wavenumber: int = 4
    dt: float = 1e-2  # 2e-2 is unstable at the default resolution
    frame_interval: float = 0.5
    burn_in: float = 5.0
    init_rms: float = 1.0  # RMS of the initial vorticity: near the steady state's, so the burn-in is short
    init_alpha: float = 2.5
    init_tau: float = 7.0

    def __post_init__(self) -> None:
        for name in ("viscosity", "dt", "frame_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"navier_stokes.{name} must be > 0, got {getattr(self, name)}")
        check_steps(self.dt, self.frame_interval, self.burn_in, "navier_stokes")
        if self.out_resolution > self.resolution:
            raise ValueError(f"navier_stokes.out_resolution {self.out_resolution} exceeds resolution "
                             f"{self.resolution}")


class VorticitySolver:
    """Advances a batch of vorticity fields ``[B, n, n]`` (float64) in Fourier space."""

    def __init__(self, config: NavierStokesConfig) -> None:
        self.config = c = config
        self.g = grid(c.resolution)
        x = torch.arange(c.resolution, dtype=torch.float64) / c.resolution
        yy = x[:, None].expand(c.resolution, c.resolution)
        self.forcing_hat = torch.fft.rfft2(-c.forcing * c.forcing_wavenumber * torch.cos(
            2 * math.pi * c.forcing_wavenumber * yy))
        self.forcing_hat[0, 0] = 0  # zero-mean forcing: the mean vorticity stays where it starts
        damping = c.viscosity * self.g.k2 + c.drag
        damping[0, 0] = 0.0  # drag acts on the flow, not on the (conserved) mean mode
        self.implicit = 1.0 + 0.5 * c.dt * damping
        self.explicit = 1.0 - 0.5 * c.dt * damping

    def velocity_hat(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi_hat = w_hat / self.g.k2_safe
        psi_hat[..., 0, 0] = 0
        return 1j * self.g.ky * psi_hat, -1j * self.g.kx * psi_hat

    def advection_hat(self, w_hat: torch.Tensor) -> torch.Tensor:
        """−∇·(u ω) in Fourier space, dealiased; its mean mode is exactly zero."""
        n = self.g.n
        u_hat, v_hat = self.velocity_hat(w_hat)
        u, v, w = (torch.fft.irfft2(t, s=(n, n)) for t in (u_hat, v_hat, w_hat))
        flux = 1j * self.g.kx * torch.fft.rfft2(u * w) + 1j * self.g.ky * torch.fft.rfft2(v * w)
        return -flux * self.g.dealias

    def step(self, w_hat: torch.Tensor) -> torch.Tensor:
        dt = self.config.dt
        tendency = self.advection_hat(w_hat) + self.forcing_hat
        predictor = (self.explicit * w_hat + dt * tendency) / self.implicit
        tendency = 0.5 * (tendency + self.advection_hat(predictor) + self.forcing_hat)
        return (self.explicit * w_hat + dt * tendency) / self.implicit

    def advance(self, w_hat: torch.Tensor, duration: float) -> torch.Tensor:
        for _ in range(round(duration / self.config.dt)):
            w_hat = self.step(w_hat)
        return w_hat


def simulate_navier_stokes(config: NavierStokesConfig, trajectories: int, frames: int, seed: int) -> np.ndarray:
    """Velocity trajectories, float32 ``[trajectories, frames, 2 (u, v), out_resolution, out_resolution]``."""
    generator = torch.Generator().manual_seed(seed)
    solver = VorticitySolver(config)
    w0 = config.init_rms * gaussian_random_field(trajectories, config.resolution, config.init_alpha, config.init_tau,
                                                 generator)
    w_hat = solver.advance(torch.fft.rfft2(w0), config.burn_in)
    out = np.empty((trajectories, frames, 2, config.out_resolution, config.out_resolution), dtype=np.float32)
    n = config.resolution
    for t in range(frames):
        if t:
            w_hat = solver.advance(w_hat, config.frame_interval)
        u_hat, v_hat = solver.velocity_hat(w_hat)
        for c, comp in enumerate((u_hat, v_hat)):
            out[:, t, c] = resample(torch.fft.irfft2(comp, s=(n, n)), config.out_resolution).numpy()
    return out
