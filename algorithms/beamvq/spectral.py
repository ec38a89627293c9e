"""Fourier tools on a periodic square grid, shared by the solvers and the physics metrics.

Every field lives on the unit square ``[0, 1)²`` sampled at ``n × n`` points, so the wavenumbers are ``2π·m`` for
the integer modes ``m``. Derivatives taken here are exact for band-limited fields, which is why a velocity derived
from a stream function has zero divergence to round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grid:
    """Wavenumbers of an ``n × n`` grid (rfft layout: last axis keeps the non-negative modes only)."""

    n: int
    kx: torch.Tensor  # [n, n//2+1] angular wavenumber along x (the last axis)
    ky: torch.Tensor  # [n, n//2+1] along y (the second-to-last axis)
    k2: torch.Tensor  # |k|², zero at the mean mode
    k2_safe: torch.Tensor  # |k|² with 1 at the mean mode (a divisor)
    dealias: torch.Tensor  # 2/3-rule mask: modes above n/3 in either direction zeroed
    shell: torch.Tensor  # int64 radial shell index round(|m|) of each mode, for spectra

    @classmethod
    def build(cls, n: int, dtype: torch.dtype = torch.float64) -> "Grid":
        if n < 4 or n % 2:
            raise ValueError(f"grid size must be even and >= 4, got {n}")
        my = torch.fft.fftfreq(n, d=1.0 / n).to(dtype)  # integer modes along y
        mx = torch.fft.rfftfreq(n, d=1.0 / n).to(dtype)
        my, mx = torch.meshgrid(my, mx, indexing="ij")
        kx, ky = 2 * math.pi * mx, 2 * math.pi * my
        k2 = kx**2 + ky**2
        k2_safe = k2.clone()
        k2_safe[0, 0] = 1.0
        cut = n / 3.0
        dealias = ((mx.abs() < cut) & (my.abs() < cut)).to(dtype)
        shell = torch.sqrt(mx**2 + my**2).round().to(torch.int64)
        return cls(n, kx, ky, k2, k2_safe, dealias, shell)


_GRIDS: dict[tuple[int, torch.dtype], Grid] = {}


def grid(n: int, dtype: torch.dtype = torch.float64) -> Grid:
    """The (cached) :class:`Grid` of size ``n`` in ``dtype``."""
    key = (n, dtype)
    if key not in _GRIDS:
        _GRIDS[key] = Grid.build(n, dtype)
    return _GRIDS[key]


def _check_square(field: torch.Tensor) -> Grid:
    h, w = field.shape[-2:]
    if h != w:
        raise ValueError(f"spectral operators need a square periodic grid, got {h}x{w}")
    return grid(h, torch.float64 if field.dtype == torch.float64 else torch.float32)


def ddx(field: torch.Tensor) -> torch.Tensor:
    """∂f/∂x along the last axis, spectrally."""
    g = _check_square(field)
    return torch.fft.irfft2(1j * g.kx * torch.fft.rfft2(field), s=field.shape[-2:])


def ddy(field: torch.Tensor) -> torch.Tensor:
    """∂f/∂y along the second-to-last axis, spectrally."""
    g = _check_square(field)
    return torch.fft.irfft2(1j * g.ky * torch.fft.rfft2(field), s=field.shape[-2:])


def velocity_from_vorticity(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) = (∂ψ/∂y, −∂ψ/∂x) with −∆ψ = ω: divergence-free by construction (the mean mode of ψ is dropped)."""
    g = _check_square(w)
    psi_hat = torch.fft.rfft2(w) / g.k2_safe
    psi_hat[..., 0, 0] = 0
    shape = w.shape[-2:]
    return torch.fft.irfft2(1j * g.ky * psi_hat, s=shape), torch.fft.irfft2(-1j * g.kx * psi_hat, s=shape)


def shell_power(spectrum: torch.Tensor) -> torch.Tensor:
    """``⟨f²⟩`` per radial shell k = 0..n/2 (trailing axis) of fields given by their ``rfft2`` ``[..., n, n//2+1]``:
    ``Σ_k`` of it is the domain mean of ``f²`` up to the modes beyond the last shell."""
    n = spectrum.shape[-2]
    g = grid(n, torch.float64 if spectrum.dtype == torch.complex128 else torch.float32)
    # rfft2 keeps half the kx modes: the others are conjugates, so every column but kx=0 (and Nyquist) counts twice
    weight = torch.full((n // 2 + 1,), 2.0, dtype=g.k2.dtype)
    weight[0] = 1.0
    weight[-1] = 1.0
    power = spectrum.abs() ** 2 * weight / n**4
    shells = n // 2 + 1
    keep = g.shell < shells
    flat = power[..., keep]  # [..., modes]
    out = torch.zeros(*flat.shape[:-1], shells, dtype=power.dtype)
    return out.index_add_(-1, g.shell[keep], flat)


def energy_spectrum(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Kinetic-energy spectrum ``E(k)`` over radial shells k = 0..n/2 (trailing axis), summed over modes so that
    ``Σ_k E(k)`` is the domain-mean kinetic energy ``½⟨u² + v²⟩`` up to the modes beyond the last shell."""
    _check_square(u)
    return 0.5 * (shell_power(torch.fft.rfft2(u)) + shell_power(torch.fft.rfft2(v)))


def gaussian_random_field(count: int, n: int, alpha: float, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Samples of a periodic Gaussian random field with covariance ``∝ (−∆ + τ²)^(−α)``, zero mean and unit RMS each
    (float64 ``[count, n, n]``): the initial-state distribution of the FNO Navier–Stokes benchmark, its amplitude
    left to the caller."""
    g = grid(n)
    amplitude = (g.k2 + tau**2) ** (-alpha / 2.0)
    amplitude[0, 0] = 0.0
    noise = torch.randn(count, n, n, generator=generator, dtype=torch.float64)
    field = torch.fft.irfft2(amplitude * torch.fft.rfft2(noise), s=(n, n))
    return field / field.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()


def resample(field: torch.Tensor, n_out: int) -> torch.Tensor:
    """A periodic field on ``n_out × n_out`` points with the same Fourier modes up to the smaller grid's band
    (spectral truncation, or zero padding when ``n_out`` is larger)."""
    n = field.shape[-1]
    if n_out == n:
        return field
    spec = torch.fft.rfft2(field)
    keep = min(n, n_out) // 2
    out = torch.zeros(*field.shape[:-2], n_out, n_out // 2 + 1, dtype=spec.dtype)
    out[..., :keep, :keep] = spec[..., :keep, :keep]
    out[..., -keep:, :keep] = spec[..., -keep:, :keep]
    out[..., keep, :] = 0  # the Nyquist row/column of the smaller grid has no unique partner: drop it
    out[..., :, keep] = 0
    return torch.fft.irfft2(out, s=(n_out, n_out)) * (n_out / n) ** 2


def check_steps(dt: float, frame_interval: float, burn_in: float, section: str) -> None:
    """A solver records frames at whole time steps: ``frame_interval`` and ``burn_in`` must be multiples of ``dt``."""
    for name, value in (("frame_interval", frame_interval), ("burn_in", burn_in)):
        steps = value / dt
        if abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
            raise ValueError(f"{section}.{name} {value} is not a whole number of time steps dt={dt}")
