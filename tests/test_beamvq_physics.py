"""BeamVQ's solvers conserve what they must, and its physics metrics are exact on fields with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seraphim.algorithms.beamvq import physics
from seraphim.algorithms.beamvq.navier_stokes import NavierStokesConfig, VorticitySolver, simulate_navier_stokes
from seraphim.algorithms.beamvq.shallow_water import ShallowWaterConfig, ShallowWaterSolver, initial_height
from seraphim.algorithms.beamvq.spectral import energy_spectrum, gaussian_random_field, resample, velocity_from_vorticity

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N = 32
_x = torch.arange(N, dtype=torch.float64) / N
Y, X = torch.meshgrid(_x, _x, indexing="ij")


def test_navier_stokes_keeps_its_mean_vorticity_and_a_divergence_free_velocity():
    config = NavierStokesConfig(resolution=N, out_resolution=N)
    solver = VorticitySolver(config)
    w0 = gaussian_random_field(3, N, 2.5, 7.0, torch.Generator().manual_seed(0)) + 0.3  # a non-zero mean
    w_hat = solver.advance(torch.fft.rfft2(w0), 0.3)
    w = torch.fft.irfft2(w_hat, s=(N, N))
    assert torch.allclose(w.mean(dim=(-2, -1)), torch.full((3,), 0.3, dtype=torch.float64), atol=1e-12)
    assert (w - w0).abs().max() > 0.05  # it did move
    u, v = (torch.fft.irfft2(c, s=(N, N)) for c in solver.velocity_hat(w_hat))
    assert physics.divergence_ratio(u, v).max() < 1e-12
    recorded = simulate_navier_stokes(NavierStokesConfig(resolution=N, out_resolution=16, burn_in=0.1,
                                                         frame_interval=0.1), 2, 3, seed=1)
    assert recorded.shape == (2, 3, 2, 16, 16) and np.isfinite(recorded).all()
    fields = torch.from_numpy(recorded).double()
    assert physics.divergence_ratio(fields[:, :, 0], fields[:, :, 1]).max() < 1e-5  # float32 round-off only


def test_shallow_water_conserves_mass_to_round_off():
    config = ShallowWaterConfig(resolution=N, bump_width=(0.03, 0.05))  # sharp bumps: strong waves
    state = torch.zeros(2, 3, N, N, dtype=torch.float64)
    state[:, 0] = initial_height(config, 2, torch.Generator().manual_seed(0))
    solver = ShallowWaterSolver(config)
    end = torch.fft.irfft2(solver.advance(torch.fft.rfft2(state), 0.2), s=(N, N))
    assert (end[:, 1:] ** 2).mean() > 1e-6  # the fluid started at rest and now moves
    np.testing.assert_allclose(physics.mass(end[:, 0]), physics.mass(state[:, 0]), rtol=1e-13)


def test_solver_settings_are_checked():
    with pytest.raises(ValueError, match="frame_interval 0.013 is not a whole number of time steps dt=0.005"):
        ShallowWaterConfig(frame_interval=0.013)
    with pytest.raises(ValueError, match="out_resolution 128 exceeds resolution 64"):
        NavierStokesConfig(out_resolution=128)


def test_a_velocity_from_a_stream_function_has_no_divergence_and_a_potential_flow_has_ratio_one():
    w = resample(resample(gaussian_random_field(2, N, 2.0, 5.0, torch.Generator().manual_seed(3)), N // 2), N)
    u, v = velocity_from_vorticity(w)  # w band-limited: no Nyquist mode, whose derivative a real field cannot hold
    assert physics.divergence_ratio(u, v).max() < 1e-12
    np.testing.assert_allclose(physics.vorticity(u, v), w - w.mean(dim=(-2, -1), keepdim=True), atol=1e-10)
    wave = -2 * math.pi * torch.sin(2 * math.pi * (2 * X + 3 * Y))  # u = ∇φ for φ = cos 2π(2x + 3y)
    np.testing.assert_allclose(physics.divergence_ratio(2 * wave, 3 * wave), 1.0, rtol=1e-10)  # |∇·u| = |∇u|


def test_energy_enstrophy_and_the_spectrum_of_known_fields():
    a = 0.7
    u, v = a * torch.cos(2 * math.pi * 3 * X), torch.zeros_like(X)
    spectrum = energy_spectrum(u, v)
    expected = torch.zeros(N // 2 + 1, dtype=torch.float64)
    expected[3] = a * a / 4
    np.testing.assert_allclose(spectrum, expected, atol=1e-14)
    np.testing.assert_allclose(physics.kinetic_energy(u, v), a * a / 4, rtol=1e-12)
    shear = torch.sin(2 * math.pi * Y)  # ω = −∂u/∂y = −2π cos(2πy): enstrophy ½⟨ω²⟩ = π²
    np.testing.assert_allclose(physics.enstrophy(shear, torch.zeros_like(shear)), math.pi**2, rtol=1e-12)
    w = gaussian_random_field(1, N, 2.5, 7.0, torch.Generator().manual_seed(4))  # band-limited enough
    u, v = velocity_from_vorticity(w)
    np.testing.assert_allclose(energy_spectrum(u, v).sum(), physics.kinetic_energy(u, v), rtol=1e-6)


def test_physics_metrics_are_zero_on_the_truth_and_measure_drifts_exactly():
    h = 1.0 + 0.1 * torch.sin(2 * math.pi * X)
    u = 0.05 * torch.cos(2 * math.pi * Y)
    truth = torch.stack([h, u, -u])[None, None].expand(2, 3, 3, N, N)  # [N=2, T=3, (h, u, v), H, W]
    context = truth[:, 0]
    np.testing.assert_allclose(physics.mass(h), 1.0, rtol=1e-14)
    for name, value in physics.physics_metrics(truth, context, "shallow_water", truth).items():
        assert value.abs().max() < 1e-12, name
    heavier = truth.clone()
    heavier[:, :, 0] += 0.01  # 1% more fluid everywhere
    metrics = physics.physics_metrics(heavier, context, "shallow_water")
    np.testing.assert_allclose(metrics["mass"], 0.01, rtol=1e-10)
    faster = torch.stack([u, u])[None, None] * 1.1  # 10% faster: 21% more kinetic energy and enstrophy
    slower = torch.stack([u, u])[None, None]
    metrics = physics.physics_metrics(faster, slower[:, 0], "velocity", slower)
    np.testing.assert_allclose(metrics["energy"], 0.21, rtol=1e-10)
    np.testing.assert_allclose(metrics["enstrophy"], 0.21, rtol=1e-10)
    np.testing.assert_allclose(metrics["spectrum"] * (N // 3), 2 * math.log10(1.1), rtol=1e-6)  # one shell used
    with pytest.raises(ValueError, match="layout 'pressure' is not one of"):
        physics.physics_metrics(faster, slower[:, 0], "pressure")
