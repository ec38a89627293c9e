"""Surge's learning-rate advisor: the best learning rate at a batch size, from the gradient noise scale.

Adam-style (sign-like) optimizers follow Surge's law (Li et al., NeurIPS 2024, eq. 2): the best learning rate rises
as sqrt(B) for small batches, peaks at ``B = B_noise`` and falls towards a floor beyond it. SGD follows McCandlish et
al.'s eq. 1: it rises and saturates, never falls. ``B_noise`` comes from the gradients of a run (McCandlish's
unbiased estimators, App. A) or from a sweep (Surge eq. 22: steps and examples to a target loss at several batches).

Usage::

    # in a data-parallel training step (LM, MoE): squared norms before and after the gradient all-reduce
    noise = GradientNoiseScale(decay=0.99)
    loss.backward()
    g_local_sq = sum(float(p.grad.square().sum()) for p in params)       # this worker's b_local examples
    all_reduce_mean(params)                                              # dist.all_reduce(...) / world_size
    g_global_sq = sum(float(p.grad.square().sum()) for p in params)      # all b_local * world_size examples
    noise.observe(g_local_sq, g_global_sq, b_local, b_local * world_size)
    ctx.report(step, {"train_loss": loss, **noise.metrics()})   # logs b_noise (once defined), grad_sq, trace_sigma

    fit = fit_b_noise(steps, examples)              # eq. 22 over (S, E) pairs: fit.b_noise, s_min, e_min, r2
    lr_for_batch(1024, ref=(256, 3e-4), b_noise=fit.b_noise, optimizer="adam")   # eq. 2 ("sgd": eq. 1)

    advisor = LrAdvisor(ref=(256, 3e-4), optimizer="adam")   # B_noise from observe(), or pass b_noise=...
    advisor.observe(g_local_sq, g_global_sq, b_local, b_global)
    advisor.lr_for_batch(1024)
    advisor.expert_lr(1024, k=1, experts=16)        # Hunyuan-Large: routed experts see B*k/E examples per step

Pure numpy, no I/O: the sweep (``lr_scaling_sweep``), the CLI (``seraphim lr-advise``) and training jobs call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


class NoiseScaleError(ValueError):
    """B_noise cannot be given: no observation yet, a noise-dominated estimate, or a regression that does not fit."""


def adam_lr_curve(batch: float | np.ndarray, b_noise: float, eps_max: float) -> float | np.ndarray:
    """Surge eq. 2: ``eps_max / (0.5 (sqrt(B_noise/B) + sqrt(B/B_noise)))``, equal to eps_max at B = B_noise."""
    ratio = np.sqrt(np.asarray(batch, dtype=np.float64) / b_noise)
    return eps_max / (0.5 * (1.0 / ratio + ratio))


def sgd_lr_curve(batch: float | np.ndarray, b_noise: float, eps_max: float) -> float | np.ndarray:
    """McCandlish's eq. 1 (Surge's eq. 1): ``eps_max / (1 + B_noise/B)``, rising to eps_max and never falling."""
    return eps_max / (1.0 + b_noise / np.asarray(batch, dtype=np.float64))


_CURVES = {"adam": adam_lr_curve, "sgd": sgd_lr_curve}


def lr_curve(optimizer: Optimizer, batch: float | np.ndarray, b_noise: float, eps_max: float) -> float | np.ndarray:
    """The optimizer's law: eq. 2 for ``adam``, eq. 1 for ``sgd``."""
    return _CURVES[_checked_optimizer(optimizer)](batch, b_noise, eps_max)


def fit_eps_max(batches: Sequence[float], lrs: Sequence[float], b_noise: float, optimizer: Optimizer = "adam") -> float:
    """Surge eq. 23: eps_max as the mean, over (B, best lr) pairs, of the lr divided by the law's shape at B."""
    _positive("b_noise", b_noise)
    b, lr = np.asarray(batches, dtype=np.float64), np.asarray(lrs, dtype=np.float64)
    if b.shape != lr.shape or b.size == 0:
        raise ValueError(f"fit_eps_max needs as many batch sizes as learning rates, at least one (got {b.size} "
                         f"and {lr.size})")
    return float(np.mean(lr / lr_curve(optimizer, b, b_noise, 1.0)))


def lr_for_batch(batch: float, ref: tuple[float, float], b_noise: float, optimizer: Optimizer = "adam") -> float:
    """The learning rate at ``batch`` given one tuned point ``ref = (B0, lr0)``: eps_max from it, then the law.

    Adam: eq. 2, so the answer falls again past B_noise; SGD: eq. 1, so it saturates.
    """
    b0, lr0 = ref
    _positive("batch", batch)
    _positive("ref batch", b0)
    _positive("ref lr", lr0)
    eps_max = fit_eps_max([b0], [lr0], b_noise, optimizer)
    return float(lr_curve(optimizer, batch, b_noise, eps_max))


def expert_lr(batch: float, k: int, experts: int, ref: tuple[float, float], b_noise: float,
              optimizer: Optimizer = "adam") -> float:
    """Hunyuan-Large's expert-specific rate: a routed expert sees ``B*k/E`` examples a step, so it gets that batch's lr.

    The shared expert (and every dense parameter) keeps ``lr_for_batch(B)``.
    """
    if not 1 <= k <= experts:
        raise ValueError(f"expert_lr needs 1 <= k <= experts (top-k of E routed experts), got k={k}, experts={experts}")
    return lr_for_batch(batch * k / experts, ref, b_noise, optimizer)


@dataclass(frozen=True)
class NoiseFit:
    """Surge eq. 22's regression of 1/S on 1/E: slope -B_noise, intercept 1/S_min; E_min = B_noise * S_min."""

    b_noise: float
    s_min: float
    e_min: float
    r2: float
    points: int


def fit_b_noise(steps: Sequence[float], examples: Sequence[float]) -> NoiseFit:
    """B_noise from (steps, examples) pairs to one target loss, one pair per batch size (Surge eq. 22).

    McCandlish's tradeoff ``(S/S_min - 1)(E/E_min - 1) = 1`` is linear in the reciprocals:
    ``1/S = 1/S_min - B_noise/E``. Least squares on (1/E, 1/S) gives B_noise = -slope and S_min = 1/intercept.
    """
    s, e = np.asarray(steps, dtype=np.float64), np.asarray(examples, dtype=np.float64)
    if s.shape != e.shape or s.ndim != 1:
        raise NoiseScaleError(f"fit_b_noise needs two equal-length lists, got shapes {s.shape} and {e.shape}")
    if s.size < 2:
        raise NoiseScaleError(f"fit_b_noise needs at least 2 (steps, examples) pairs, one per batch size; got {s.size}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(e)) and np.all(s > 0) and np.all(e > 0)):
        raise NoiseScaleError("fit_b_noise needs positive, finite steps and examples")
    x, y = 1.0 / e, 1.0 / s
    if np.ptp(x) == 0:
        raise NoiseScaleError("fit_b_noise needs at least two different example counts (all pairs have E = "
                              f"{e[0]:g}): run more than one batch size")
    slope, intercept = np.polyfit(x, y, 1)
    if slope >= -1e-9 * y.max() / x.max():  # zero up to rounding counts as zero: equal steps at every batch
        raise NoiseScaleError(f"eq. 22 fit has slope {slope:.3g} >= 0 (B_noise = -slope would not be positive): "
                              "steps do not fall as the batch grows; the batch sizes may all be far below B_noise "
                              "or the step counts too noisy (more seeds)")
    if intercept <= 0:
        raise NoiseScaleError(f"eq. 22 fit has intercept {intercept:.3g} <= 0 (S_min = 1/intercept would not be "
                              "positive): the batch sizes do not reach the regime where steps stop falling; add larger "
                              "batches")
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / total) if total > 0 else 1.0
    b_noise = float(-slope)
    return NoiseFit(b_noise=b_noise, s_min=float(1.0 / intercept), e_min=float(b_noise / intercept), r2=r2,
                    points=int(s.size))


class GradientNoiseScale:
    """McCandlish et al.'s simple noise scale ``B_simple = tr(Sigma) / |G|^2`` from two batch sizes each step.

    In data-parallel training both come for free: the small batch is one worker's gradient before the all-reduce
    (``b_local`` examples), the big one the all-reduced mean (``b_global``). With one worker, use one
    micro-batch's gradient as the small one. Per step (App. A), unbiased:

        |G|^2   ~ (b_global |g_global|^2 - b_local |g_local|^2) / (b_global - b_local)
        tr(Sigma) ~ (|g_local|^2 - |g_global|^2) / (1/b_local - 1/b_global)

    Each is noisy (|G|^2 can come out negative), so each is averaged in its own bias-corrected EMA and the ratio
    taken of the averages, never an average of ratios. Caveat: B_simple is the SGD noise scale; Surge's Adam B_noise
    weights it by the Hessian. Use it as a trend (B_noise grows as the loss falls) and calibrate with a sweep.
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._grad_sq = 0.0
        self._trace = 0.0
        self._weight = 0.0  # sum of EMA weights so far: the Adam-style bias correction

    @property
    def observations(self) -> bool:
        return self._weight > 0.0

    def observe(self, g_local_sq: float | Sequence[float], g_global_sq: float, b_local: float,
                b_global: float) -> None:
        """One step: squared norms of the small (per-worker; several are averaged) and the big batch's mean gradient."""
        local = float(np.mean(g_local_sq))
        if not 0 < b_local < b_global:
            raise ValueError(f"observe needs 0 < b_local < b_global (per-worker and global examples per step), got "
                             f"b_local={b_local}, b_global={b_global}")
        if not (math.isfinite(local) and math.isfinite(g_global_sq)) or local < 0 or g_global_sq < 0:
            raise ValueError(f"observe needs finite, non-negative squared norms, got g_local_sq={local}, "
                             f"g_global_sq={g_global_sq}")
        grad_sq = (b_global * g_global_sq - b_local * local) / (b_global - b_local)
        trace = (local - g_global_sq) / (1.0 / b_local - 1.0 / b_global)
        self._grad_sq = self.decay * self._grad_sq + (1.0 - self.decay) * grad_sq
        self._trace = self.decay * self._trace + (1.0 - self.decay) * trace
        self._weight = self.decay * self._weight + (1.0 - self.decay)

    def grad_sq(self) -> float:
        """|G|^2, the EMA of the unbiased estimates."""
        self._require_observations()
        return self._grad_sq / self._weight

    def trace_sigma(self) -> float:
        """tr(Sigma), the per-example gradient covariance's trace, the EMA of the unbiased estimates."""
        self._require_observations()
        return self._trace / self._weight

    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2; NoiseScaleError while the |G|^2 estimate is not positive (the noise dominates)."""
        grad_sq = self.grad_sq()
        if grad_sq <= 0:
            raise NoiseScaleError(f"the |G|^2 estimate is {grad_sq:.3g} <= 0: the gradient noise dominates at these "
                                  "batch sizes; observe more steps, a larger decay, or a larger b_global/b_local ratio")
        return self.trace_sigma() / grad_sq

    def metrics(self) -> dict[str, float]:
        """What a job logs each step: ``grad_sq`` and ``trace_sigma`` always, ``b_noise`` once |G|^2 > 0."""
        out = {"grad_sq": self.grad_sq(), "trace_sigma": self.trace_sigma()}
        if out["grad_sq"] > 0:
            out["b_noise"] = out["trace_sigma"] / out["grad_sq"]
        return out

    def _require_observations(self) -> None:
        if not self.observations:
            raise NoiseScaleError("no gradient observed yet: call observe(...) first")


class LrAdvisor:
    """B_noise (fixed, e.g. from a sweep, or live from ``observe``) and one tuned point give the lr at any batch."""

    def __init__(self, ref: tuple[float, float], optimizer: Optimizer = "adam", b_noise: float | None = None,
                 decay: float = 0.99) -> None:
        self.ref = ref
        self.optimizer = _checked_optimizer(optimizer)
        self._fixed = None if b_noise is None else _positive("b_noise", b_noise)
        self.noise = GradientNoiseScale(decay)

    def observe(self, g_local_sq: float | Sequence[float], g_global_sq: float, b_local: float,
                b_global: float) -> None:
        self.noise.observe(g_local_sq, g_global_sq, b_local, b_global)

    def b_noise(self) -> float:
        """The fixed B_noise when one was given, else the online estimate."""
        return self._fixed if self._fixed is not None else self.noise.b_simple()

    def lr_for_batch(self, batch: float) -> float:
        return lr_for_batch(batch, self.ref, self.b_noise(), self.optimizer)

    def expert_lr(self, batch: float, k: int, experts: int) -> float:
        return expert_lr(batch, k, experts, self.ref, self.b_noise(), self.optimizer)


def _checked_optimizer(optimizer: str) -> Optimizer:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    return optimizer  # type: ignore[return-value]


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)
