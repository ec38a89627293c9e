"""Spectral nudging gives a smoothed candidate the real state's shell energies and keeps its phases and its mass."""

from __future__ import annotations

import pytest
import torch

from seraphim.algorithms.beamvq.nudging import spectral_nudge
from seraphim.algorithms.beamvq.physics import divergence_ratio
from seraphim.algorithms.beamvq.spectral import energy_spectrum, gaussian_random_field, grid, shell_power, \
    velocity_from_vorticity

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 32


def smoothed(field: torch.Tensor, width: float) -> torch.Tensor:
    """``field`` with its modes damped by a Gaussian of ``width`` (in integer wavenumbers): what MSE does to a forecast."""
    g = grid(N)
    m2 = g.k2 / (2 * torch.pi) ** 2
    return torch.fft.irfft2(torch.fft.rfft2(field) * torch.exp(-m2 / (2 * width**2)), s=(N, N))


def test_a_smoothed_velocity_gets_the_references_spectrum_back_and_stays_divergence_free():
    generator = torch.Generator().manual_seed(0)
    omega = gaussian_random_field(2, N, alpha=2.5, tau=3.0, generator=generator)
    u, v = velocity_from_vorticity(omega)
    reference = torch.stack([u, v], dim=1)  # [2, C=2, H, W]
    candidate = smoothed(reference, width=6.0)[:, None]  # [P=2, T=1, C, H, W]
    nudged = spectral_nudge(candidate, reference, "velocity", bounds=(0.1, 1000.0))
    band = slice(1, N // 3)
    before = energy_spectrum(candidate[:, 0, 0], candidate[:, 0, 1])[:, band]
    after = energy_spectrum(nudged[:, 0, 0], nudged[:, 0, 1])[:, band]
    wanted = energy_spectrum(u, v)[:, band]
    assert (before < 0.9 * wanted).any()  # the smoothing took energy away...
    torch.testing.assert_close(after, wanted, rtol=1e-6, atol=0.0)  # ...and the nudge put it back, shell by shell
    assert divergence_ratio(nudged[:, 0, 0], nudged[:, 0, 1]).max() < 1e-10
    original = torch.fft.rfft2(candidate[:, 0])
    alive = original.abs() > 1e-6 * original.abs().max()  # u has no ky = 0 modes, v no kx = 0 ones
    alive &= grid(N).shell < N // 2  # the Nyquist modes are dropped
    phase = (torch.fft.rfft2(nudged[:, 0]) / original)[alive]
    assert phase.imag.abs().max() < 1e-6 and phase.real.min() > 0  # real and positive factors: the phases are kept


def test_an_incompressible_flows_candidates_lose_their_divergence():
    generator = torch.Generator().manual_seed(2)
    candidate = torch.randn(2, 3, 2, N, N, generator=generator, dtype=torch.float64)  # random: ratio about 0.7
    reference = torch.randn(2, 2, N, N, generator=generator, dtype=torch.float64)
    assert divergence_ratio(candidate[:, :, 0], candidate[:, :, 1]).min() > 0.5
    nudged = spectral_nudge(candidate, reference, "velocity")
    assert divergence_ratio(nudged[:, :, 0], nudged[:, :, 1]).max() < 1e-10
    shallow = spectral_nudge(torch.cat([candidate[:, :, :1], candidate], dim=2), torch.cat([reference[:, :1], reference],
                             dim=1), "shallow_water")  # gravity waves are divergent: no projection there
    assert divergence_ratio(shallow[:, :, 1], shallow[:, :, 2]).min() > 0.5


def test_the_bounds_clamp_the_factors_and_the_mean_mode_is_untouched():
    generator = torch.Generator().manual_seed(1)
    h = 1.0 + 0.1 * gaussian_random_field(1, N, alpha=2.0, tau=3.0, generator=generator)
    uv = gaussian_random_field(2, N, alpha=2.0, tau=3.0, generator=generator)
    reference = torch.cat([h, uv], dim=0)[None]  # shallow water [1, 3, H, W]
    candidate = (0.25 * (reference - reference.mean(dim=(-2, -1), keepdim=True))
                 + reference.mean(dim=(-2, -1), keepdim=True))[:, None]  # every fluctuation at a quarter
    nudged = spectral_nudge(candidate, reference, "shallow_water")  # default bounds: amplitudes at most doubled
    torch.testing.assert_close(nudged.mean(dim=(-2, -1)), candidate.mean(dim=(-2, -1)))  # mass and mean flow
    ratio = shell_power(torch.fft.rfft2(nudged[:, 0]))[..., 1:] / shell_power(torch.fft.rfft2(candidate[:, 0]))[..., 1:]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 4.0))  # factor 4 wanted, 2 allowed: power x 4


def test_wrong_layouts_shapes_and_bounds_are_refused():
    candidate = torch.zeros(2, 1, 2, N, N)
    with pytest.raises(ValueError, match="layout 'pressure' is not one of"):
        spectral_nudge(candidate, torch.zeros(2, 2, N, N), "pressure")
    with pytest.raises(ValueError, match=r"reference must be \[P, C, H, W\] = \[2, 2, 32, 32\]"):
        spectral_nudge(candidate, torch.zeros(2, 1, 2, N, N), "velocity")
    with pytest.raises(ValueError, match="nudging bounds must satisfy"):
        spectral_nudge(candidate, torch.zeros(2, 2, N, N), "velocity", bounds=(1.5, 2.0))
