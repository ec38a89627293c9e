"""One trial of Surge's protocol: at one batch size, every learning rate of a grid trained from scratch to each target
loss, then K more steps; the steps to each target and the extra loss drop are the trial's result.

The workload is a one-hidden-layer MLP on scikit-learn's digits (1,797 8x8 images, 10 classes; the paper's CNN used
Fashion-MNIST, which needs a download). All (learning rate, seed) runs of a trial train at once as one ensemble: the
parameters carry leading ``[lrs, seeds]`` axes and every step is one batched matmul, so a trial of a hundred runs
costs about what one costs in Python overhead. Runs of the same seed share their initial weights and their
minibatches (common random numbers), so the learning rates are compared on the same noise.

- Batches are drawn i.i.d. with replacement (the theory's sampling model), so B may exceed the 1,797 examples.
- "The training loss" is the mean cross-entropy on a fixed subset of the training examples (``eval_examples``):
  exact for each run, no moving average to lag behind a fast one. It is computed after every step up to
  ``1 / eval_resolution`` steps, then every ``step * eval_resolution`` steps (so a step count is known to that
  fraction; evaluating 100 runs costs 5x a training step at small batches), and always K steps after a crossing.
- A run that needs more than ``patience`` times the steps of the fastest run to the last target is stopped and
  reported as not reaching it: it cannot be the best learning rate of this batch size.

Results (``results/worker-0.json``): ``steps[target][lr][seed]`` (the first step whose loss is at or below the
target; null if never) and ``extra_drop[target][lr][seed]`` (loss at that step minus loss K steps later).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from seraphim.algorithms.registry import Job, JobContext, register

#: report progress every this many steps (a trial runs thousands of millisecond steps)
_REPORT_EVERY = 50


class OptimizerSpec(BaseModel):
    """Adam (``betas: [0, 0]`` is Surge's sign-of-gradient configuration) or plain SGD."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["adam", "sgd"]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must each be in [0, 1), got {list(v)}")
        return v


class TrainingSpec(BaseModel):
    """What every run of a sweep shares: the model, the targets and K, and when to give up."""

    model_config = ConfigDict(extra="forbid")
    targets: list[float] = Field(description="training losses to reach, each > 0")
    extra_steps: int = Field(10, ge=1, description="K: steps after reaching a target over which the drop is measured")
    seeds: int = Field(4, ge=1, description="runs per (batch, lr), each with its own initial weights and batches")
    hidden: int = Field(32, ge=1)
    eval_examples: int = Field(512, ge=1, description="size of the fixed subset the training loss is measured on")
    eval_resolution: float = Field(0.01, gt=0, le=1, description="relative precision of the step counts")
    max_steps: int = Field(4000, ge=1)
    patience: float = Field(8.0, gt=1.0, description="stop runs slower than this many times the fastest")
    seed: int = 0

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[float]) -> list[float]:
        if not v or any(t <= 0 for t in v):
            raise ValueError(f"targets must be a non-empty list of losses > 0, got {v}")
        return sorted(set(v), reverse=True)


class LrTrialSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    optimizer: OptimizerSpec
    batch_size: int = Field(ge=1)
    lrs: list[float] = Field(min_length=1)
    training: TrainingSpec
    data_file: str | None = Field(None, description="digits as an .npz of x, y (the sweep writes one, so a trial "
                                  "need not import scikit-learn: seconds per process on a busy host); default: "
                                  "scikit-learn's load_digits")

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        if any(not (math.isfinite(lr) and lr > 0) for lr in v):
            raise ValueError(f"lrs must all be positive, got {v}")
        return v


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: pixel intensities 0..16, [1797, 64], and the digit of each image."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target


@dataclass(frozen=True)
class Digits:
    """scikit-learn's digits scaled to [0, 1] and centred; the loss is measured on a fixed subset of them."""

    x: torch.Tensor  # [N, 64]
    y: torch.Tensor  # [N]
    eval_x: torch.Tensor  # [n, 64]
    eval_y: torch.Tensor  # [n]

    @classmethod
    def load(cls, eval_examples: int, data_file: str | None = None) -> "Digits":
        if data_file is None:
            x_raw, y_raw = raw_digits()
        else:
            with np.load(data_file) as arrays:
                x_raw, y_raw = arrays["x"], arrays["y"]
        x = torch.tensor(x_raw / 16.0, dtype=torch.float32)
        x = x - x.mean(0)
        y = torch.tensor(y_raw, dtype=torch.int64)
        subset = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:eval_examples]
        return cls(x, y, x[subset], y[subset])


class MLPEnsemble:
    """``lrs x seeds`` independent MLPs 64 -> hidden -> 10 (ReLU) as ``[L, S, ...]`` tensors; seed s's weights are the
    same under every learning rate."""

    def __init__(self, lrs: int, seeds: int, hidden: int, in_dim: int, classes: int, generator: torch.Generator):
        def shared(*shape: int, std: float) -> torch.Tensor:
            w = torch.randn(seeds, *shape, generator=generator) * std  # LeCun normal init, one draw per seed
            return w.expand(lrs, *w.shape).clone().requires_grad_()

        self.params = [shared(in_dim, hidden, std=in_dim**-0.5), shared(1, hidden, std=0.0),
                       shared(hidden, classes, std=hidden**-0.5), shared(1, classes, std=0.0)]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: [S, B, in] (each seed's batch) or [n, in] (one batch for all); logits [L, S, B|n, classes]."""
        w1, b1, w2, b2 = self.params
        return torch.relu(x @ w1 + b1) @ w2 + b2  # [L, S, B, hidden] -> [L, S, B, classes]

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each run, [L, S]; y matches x's leading shape."""
        out = self.logits(x)
        target = y.expand(out.shape[:-1])
        return torch.nn.functional.cross_entropy(out.flatten(0, -2), target.flatten(), reduction="none").view(
            target.shape).mean(-1)


class EnsembleOptimizer:
    """Adam or SGD with one learning rate per ensemble run.

    Written out because torch.optim takes one learning rate per tensor and here each ``[l]`` slice has its own. Adam
    is Kingma and Ba's update with bias correction (eps outside the square root, as torch.optim.Adam).
    """

    def __init__(self, params: list[torch.Tensor], lrs: list[float], spec: OptimizerSpec) -> None:
        self.params, self.spec = params, spec
        self.lr = torch.tensor(lrs, dtype=torch.float32).view(-1, 1, 1, 1)  # [L, 1, 1, 1] against [L, S, a, b]
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params] if spec.kind == "adam" else []
        self.t = 0

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        self.t += 1
        if self.spec.kind == "sgd":
            for p, g in zip(self.params, grads):
                p.sub_(self.lr * g)
            return
        beta1, beta2 = self.spec.betas
        correction1, correction2 = 1.0 - beta1**self.t, 1.0 - beta2**self.t
        for p, g, (m, v) in zip(self.params, grads, self.moments):
            m.lerp_(g, 1.0 - beta1)
            v.lerp_(g * g, 1.0 - beta2)
            p.sub_(self.lr / correction1 * m / ((v / correction2).sqrt_() + self.spec.eps))


class _Crossings:
    """Per target and run: the step the loss first reached the target, the loss there, and the drop K steps later."""

    def __init__(self, targets: list[float], shape: tuple[int, int], extra_steps: int) -> None:
        self.targets = np.asarray(targets)[:, None, None]
        self.extra_steps = extra_steps
        self.steps = np.zeros((len(targets), *shape), np.int64)  # 0: not reached yet
        self.loss_at = np.full((len(targets), *shape), np.nan)
        self.drop = np.full((len(targets), *shape), np.nan)

    def update(self, step: int, loss: np.ndarray) -> None:
        reached = (self.steps == 0) & (loss[None] <= self.targets)
        self.steps[reached] = step
        self.loss_at[reached] = np.broadcast_to(loss, self.steps.shape)[reached]
        ends = (self.steps > 0) & (self.steps + self.extra_steps == step)
        self.drop[ends] = (self.loss_at - loss[None])[ends]

    def drop_due(self, step: int) -> bool:
        """Some run ends its K extra steps at ``step``: the loss must be measured there."""
        return bool(np.any(self.steps + self.extra_steps == step))

    def finished(self) -> np.ndarray:
        """[L, S]: the drop after every target is known."""
        return np.isfinite(self.drop).all(0)


def train_trial(spec: LrTrialSpec, on_progress: Callable[[int, dict[str, float]], None] | None = None
                ) -> dict[str, Any]:
    """Train every (lr, seed) run of the trial until each has its drop at every target, diverges, or falls behind."""
    t = spec.training
    data = Digits.load(t.eval_examples, spec.data_file)
    generator = torch.Generator().manual_seed(t.seed * 1_000_003 + spec.batch_size)
    model = MLPEnsemble(len(spec.lrs), t.seeds, t.hidden, data.x.shape[1], int(data.y.max()) + 1, generator)
    optimizer = EnsembleOptimizer(model.params, spec.lrs, spec.optimizer)
    crossings = _Crossings(t.targets, (len(spec.lrs), t.seeds), t.extra_steps)
    start = time.perf_counter()
    step, reported, stopped = 0, 0, "max_steps"
    while step < t.max_steps:
        batch = torch.randint(0, len(data.x), (t.seeds, spec.batch_size), generator=generator)  # shared by every lr
        loss = model.losses(data.x[batch], data.y[batch]).sum()
        optimizer.step(torch.autograd.grad(loss, model.params))
        step += 1
        if step % max(1, int(step * t.eval_resolution)) and not crossings.drop_due(step):
            continue
        with torch.no_grad():
            eval_loss = model.losses(data.eval_x, data.eval_y).numpy().astype(np.float64)
        crossings.update(step, eval_loss)
        finished = crossings.finished()
        if (finished | ~np.isfinite(eval_loss)).all():
            stopped = "all finished or diverged"
            break
        if finished.any() and step >= t.patience * crossings.steps[-1][finished].min() + t.extra_steps:
            stopped = f"patience: the rest are over {t.patience:g}x slower than the fastest"
            break
        if on_progress is not None and step >= reported + _REPORT_EVERY:
            reported = step
            on_progress(step, {"runs_finished": float(finished.mean()), "best_loss": float(np.nanmin(eval_loss))})
    if on_progress is not None:
        on_progress(step, {"runs_finished": float(crossings.finished().mean())})
    return {
        "optimizer": spec.optimizer.kind, "batch_size": spec.batch_size, "lrs": spec.lrs, "targets": t.targets,
        "seeds": t.seeds, "extra_steps": t.extra_steps, "final_step": step, "stopped": stopped,
        "steps": [[[s if s > 0 else None for s in row] for row in per_target]
                  for per_target in crossings.steps.tolist()],
        "extra_drop": [[[d if math.isfinite(d) else None for d in row] for row in per_target]
                       for per_target in crossings.drop.tolist()],
        "train_s": time.perf_counter() - start,
    }


@register("lr_scaling.trial")
class LrTrialJob(Job):
    """One batch size of an ``lr_scaling.sweep``, trained in this worker process: the PS holds nothing, since each of
    a trial's thousands of small steps would otherwise wait on a PS round trip."""

    Spec = LrTrialSpec

    def total_steps(self) -> int:
        return self.spec.training.max_steps

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return train_trial(self.spec, ctx.report)
