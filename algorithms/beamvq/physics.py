"""Physics-aware metrics of forecast fields: what BeamVQ's filter ranks candidates by and what the runs report.

    metrics = physics_metrics(pred, context, "velocity", truth)   # {"divergence": [N], "energy": [N], ...}
    cost = physics_cost(metrics, weights)                         # [N], lower is better

Fields are ``[N, T, C, H, W]`` on the periodic unit square; the layout names the channels:

- ``velocity``: ``(u, v)`` of an incompressible flow; metrics ``divergence`` (RMS of ``∇·u`` over the RMS of
  ``∇u``: zero for a physical field), ``energy`` (kinetic-energy drift), ``enstrophy`` (drift), ``spectrum``.
- ``vorticity``: ``(ω,)``; the velocity comes from the stream function, so it has no divergence metric.
- ``shallow_water``: ``(h, u, v)``; metrics ``mass`` (drift of ``∫h``, which the equations conserve exactly),
  ``energy`` (drift of ``½∫(h|u|² + g η²)``, ``η = h − h̄``), ``spectrum`` (of the kinetic energy).

A drift is ``|Q(pred_t) / Q(ref_t) − 1|`` averaged over the frames, where ``ref_t`` is the true frame when the
truth is known, else the last input frame (the flows here are statistically steady, and mass is conserved, so the
last state is the reference a forecast can be held to without the truth). ``spectrum`` is the mean over shells
``1 ≤ k ≤ n/3`` of ``|log10 E(k) − log10 E_ref(k)|``. Every metric is dimensionless, zero for the reference
itself, and per sample.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch

from seraphim.algorithms.beamvq.spectral import ddx, ddy, energy_spectrum, velocity_from_vorticity

Layout = Literal["velocity", "vorticity", "shallow_water"]

#: channels of each layout, and the physics metrics reported for it
CHANNELS: dict[str, int] = {"velocity": 2, "vorticity": 1, "shallow_water": 3}
METRICS: dict[str, tuple[str, ...]] = {
    "velocity": ("divergence", "energy", "enstrophy", "spectrum"),
    "vorticity": ("energy", "enstrophy", "spectrum"),
    "shallow_water": ("mass", "energy", "spectrum"),
}
#: filter weights where not 1: a forecast's mass drift is about 100x smaller than its other drifts (mass is the one
#: exactly conserved quantity), so at weight 1 it would never decide a ranking
DEFAULT_WEIGHTS: dict[str, float] = {"mass": 100.0}
GRAVITY = 1.0  # g of the shallow-water energy; the generated data uses g = 1 (ShallowWaterConfig.gravity)
_SPECTRUM_FLOOR = 1e-10  # relative to the reference's total energy: shells the reference leaves empty


def velocity(fields: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, v)`` of fields ``[..., C, H, W]``."""
    if layout == "velocity":
        return fields[..., 0, :, :], fields[..., 1, :, :]
    if layout == "vorticity":
        return velocity_from_vorticity(fields[..., 0, :, :])
    return fields[..., 1, :, :], fields[..., 2, :, :]


def divergence(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ddx(u) + ddy(v)


def vorticity(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ddx(v) - ddy(u)


def _mean(field: torch.Tensor) -> torch.Tensor:
    return field.mean(dim=(-2, -1))


def kinetic_energy(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``½⟨u² + v²⟩`` (the domain has unit area, so the mean is the integral)."""
    return 0.5 * _mean(u * u + v * v)


def enstrophy(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return 0.5 * _mean(vorticity(u, v) ** 2)


def mass(h: torch.Tensor) -> torch.Tensor:
    return _mean(h)


def shallow_water_energy(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, gravity: float = GRAVITY) -> torch.Tensor:
    """``½⟨h|u|² + g η²⟩`` with ``η = h − h̄``: the total energy less the constant that mass conservation fixes."""
    eta = h - _mean(h)[..., None, None]
    return 0.5 * _mean(h * (u * u + v * v) + gravity * eta * eta)


def divergence_ratio(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``rms(∇·u) / rms(∇u)``: 0 for an incompressible field, about 1/√2 for one with random gradients."""
    gradient = ddx(u) ** 2 + ddy(u) ** 2 + ddx(v) ** 2 + ddy(v) ** 2
    return torch.sqrt(_mean(divergence(u, v) ** 2) / _mean(gradient).clamp_min(1e-30))


def _drift(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (value / reference.clamp_min(1e-30) - 1.0).abs()


def spectrum_error(u: torch.Tensor, v: torch.Tensor, u_ref: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """Mean over shells ``1..n/3`` of ``|log10 E(k) − log10 E_ref(k)|``."""
    band = slice(1, u.shape[-1] // 3 + 1)
    e, e_ref = energy_spectrum(u, v)[..., band], energy_spectrum(u_ref, v_ref)[..., band]
    floor = _SPECTRUM_FLOOR * e_ref.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return (torch.log10(e + floor) - torch.log10(e_ref + floor)).abs().mean(dim=-1)


def physics_metrics(pred: torch.Tensor, context: torch.Tensor, layout: str,
                    truth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The layout's metrics (:data:`METRICS`) of ``pred [N, T, C, H, W]``, each ``[N]`` (mean over the frames).

    ``context [N, C, H, W]`` is the last input frame: the reference of the drifts where ``truth [N, T, C, H, W]``
    is not given, and of the mass always (it is conserved, so the truth's mass is the context's).
    """
    if layout not in METRICS:
        raise ValueError(f"layout {layout!r} is not one of {sorted(METRICS)}")
    pred = pred.to(torch.float64)
    reference = (context[:, None] if truth is None else truth).to(torch.float64).expand_as(pred)
    u, v = velocity(pred, layout)
    u_ref, v_ref = velocity(reference, layout)
    out: dict[str, torch.Tensor] = {}
    if layout == "velocity":
        out["divergence"] = divergence_ratio(u, v)
    if layout == "shallow_water":
        h, h_ref = pred[..., 0, :, :], reference[..., 0, :, :]
        out["mass"] = _drift(mass(h), mass(context[:, None, 0].to(torch.float64)))
        out["energy"] = _drift(shallow_water_energy(h, u, v), shallow_water_energy(h_ref, u_ref, v_ref))
    else:
        out["energy"] = _drift(kinetic_energy(u, v), kinetic_energy(u_ref, v_ref))
        out["enstrophy"] = _drift(enstrophy(u, v), enstrophy(u_ref, v_ref))
    out["spectrum"] = spectrum_error(u, v, u_ref, v_ref)
    return {name: out[name].mean(dim=1) for name in METRICS[layout]}


def physics_cost(metrics: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``Σ_m w_m · metric_m`` over the metrics given, ``w_m`` from ``weights`` else :data:`DEFAULT_WEIGHTS` else 1
    (a weight of 0 leaves one out); lower is better."""
    total = torch.zeros_like(next(iter(metrics.values())))
    for name, value in metrics.items():
        total = total + weights.get(name, DEFAULT_WEIGHTS.get(name, 1.0)) * value
    return total


def relative_mse(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE over the truth's variance (per sample), so it weighs like the other dimensionless terms."""
    dims = tuple(range(1, pred.dim()))
    err = (pred.to(torch.float64) - truth.to(torch.float64)) ** 2
    return err.mean(dim=dims) / truth.to(torch.float64).var(dim=dims).clamp_min(1e-30)
