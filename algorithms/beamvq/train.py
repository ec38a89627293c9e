"""Training a forecaster alone or with BeamVQ's self-training, on the same data and the same optimizer steps.

    data = ForecastData.build(fields, SplitSpec(train=24, pool=8, test=8), WindowSpec(t_in=4, t_out=4))
    model = BeamVQModel(build_backbone("simvp", data.shape), CodeBank(LocalStore(codes=256, dim=4)))
    model.bank.initialize(model.backbone.encode(data.train_x[:64]), seed=0)   # codes start at encoder outputs
    rounds = fit(model, LocalStepper(model, lr=2e-3, steps=600), data, TrainConfig(steps=600),
                 BeamConfig(width=2, top_k=4, horizon=2, keep=1, filter=True))
    evaluate(model, data)   # {"mse": ..., "skill": ..., "physics": ..., "physics_divergence": ...}

**Compute is matched in optimizer steps.** Every variant takes ``config.steps`` steps of ``batch_size`` samples.
The backbone alone draws every batch from the training pairs; BeamVQ draws its first ``warmup`` fraction from
them, then runs ``rounds`` self-training rounds evenly spaced over the rest; each round adds the kept beam-search
candidates (paired with the windows they were forecast from) to the training set, and later batches are drawn
uniformly from the union, as the public script's ``ConcatDataset`` does. Beam search costs forward passes only,
no optimizer steps; its time is reported apart.

**Inputs that start beams**, each round: ``beam_inputs`` training windows whose future is known for the whole
horizon (their candidates are scored by physics plus MSE against the truth, as the paper scores training
samples) and ``pool_inputs`` windows of the pool, trajectories whose futures the method never sees (physics only).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np
import torch

from seraphim.algorithms.beamvq.backbones import FrameShape
from seraphim.algorithms.beamvq.beam_search import BeamConfig, BeamResult, beam_search
from seraphim.algorithms.beamvq.data import Fields, FieldsError, Normalizer, windows
from seraphim.algorithms.beamvq.model import BeamVQModel
from seraphim.algorithms.beamvq.nudging import spectral_nudge
from seraphim.algorithms.beamvq.physics import METRICS, physics_cost, physics_metrics, relative_mse


@dataclass(frozen=True)
class SplitSpec:
    """Trajectories in order: the first ``train`` are labelled, the next ``pool`` give inputs only, the next
    ``test`` are held out."""

    train: int
    pool: int
    test: int


@dataclass(frozen=True)
class WindowSpec:
    t_in: int = 4
    t_out: int = 4
    horizon: int = 2  # beam-search rollout steps (training windows carry this many steps of truth)
    eval_steps: int = 2  # rollout steps scored on the test trajectories
    test_stride: int = 4  # frames between the starts of test windows


@dataclass(frozen=True)
class Share:
    """This worker's part of the data: every ``world``-th training window and beam input, from ``rank``."""

    rank: int = 0
    world: int = 1


@dataclass
class ForecastData:
    """Standardized tensors of one split (models see standardized fields; physics sees ``normalizer``'s inverse)."""

    layout: str
    normalizer: Normalizer
    shape: FrameShape
    train_x: torch.Tensor  # [M, T_in, C, H, W] one-step training pairs
    train_y: torch.Tensor  # [M, T_out, C, H, W]
    beam_x: torch.Tensor  # training windows with a known future over the beam horizon
    beam_future: torch.Tensor  # [M', horizon·T_out, C, H, W]
    pool_x: torch.Tensor  # pool windows: inputs without futures
    test_x: torch.Tensor
    test_future: torch.Tensor  # [M'', eval_steps·T_out, C, H, W]

    @classmethod
    def build(cls, fields: Fields, split: SplitSpec, spec: WindowSpec, share: Share = Share()) -> "ForecastData":
        data = fields.data
        need = split.train + split.pool + split.test
        if data.shape[0] < need:
            raise FieldsError(f"{fields.source}: {data.shape[0]} trajectories, the split needs {need} "
                              f"(train {split.train} + pool {split.pool} + test {split.test})")
        if split.train < 1 or split.test < 1:
            raise FieldsError(f"split: train and test need at least one trajectory each, got {split}")
        train = data[:split.train]
        pool = data[split.train:split.train + split.pool]
        test = data[split.train + split.pool:need]
        norm = Normalizer.fit(train)
        mine = slice(share.rank, None, share.world)
        x, y = windows(train, spec.t_in, spec.t_out)
        bx, bf = windows(train, spec.t_in, spec.t_out, spec.horizon)
        px = windows(pool, spec.t_in, 0)[0] if split.pool else np.zeros((0, *x.shape[1:]), np.float32)
        tx, tf = windows(test, spec.t_in, spec.t_out, spec.eval_steps, stride=spec.test_stride)
        shape = FrameShape(spec.t_in, spec.t_out, data.shape[2], data.shape[-1])
        n = norm.normalize
        return cls(fields.layout, norm, shape, n(x[mine]), n(y[mine]), n(bx[mine]), n(bf[mine]), n(px[mine]), n(tx),
                   n(tf))


class Stepper(Protocol):
    """What takes an optimizer step: a torch optimizer here, PSOptimizer in the distributed job."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...


class LocalStepper:
    """Adam with a linear warm-up and a cosine decay over ``steps``, in this process."""

    def __init__(self, model: torch.nn.Module, lr: float, steps: int, warmup_steps: int = 20) -> None:
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))))

        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.optimizer.step()
        self.schedule.step()


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600  # optimizer steps, every variant
    batch_size: int = 8
    rounds: int = 2  # self-training rounds (BeamVQ variants)
    warmup: float = 0.5  # fraction of the steps before the first round
    beam_inputs: int = 32  # training windows starting beams, per round and worker
    pool_inputs: int = 32  # pool windows starting beams, per round and worker
    weights: Mapping[str, float] = field(default_factory=dict)  # metric -> filter weight (physics.DEFAULT_WEIGHTS, else 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.rounds < 0:
            raise ValueError(f"steps and batch_size must be >= 1 and rounds >= 0, got {self}")
        if not 0.0 < self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in (0, 1) of the steps, got {self.warmup}")

    def round_steps(self) -> list[int]:
        """The steps before which each self-training round runs."""
        first = round(self.steps * self.warmup)
        every = (self.steps - first) / max(1, self.rounds)
        return [first + round(r * every) for r in range(self.rounds)]


class TrainingSet:
    """Training pairs, the real ones first and self-training's candidates after; batches are uniform over all."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = [x], [y]
        self._cat: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return sum(len(x) for x in self.x)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x.append(x)
        self.y.append(y)
        self._cat = None

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cat is None:
            self._cat = torch.cat(self.x), torch.cat(self.y)
        pick = torch.from_numpy(rng.integers(0, len(self), size))
        return self._cat[0][pick], self._cat[1][pick]


def candidate_score(data: ForecastData, weights: Mapping[str, float]) -> Callable:
    """BeamVQ's filter: the physics cost of candidates in physical units, plus ``weights['mse']`` × their relative
    MSE where the truth is known."""
    denorm = data.normalizer.denormalize

    def score(cands: torch.Tensor, context: torch.Tensor, truth: torch.Tensor | None) -> torch.Tensor:
        metrics = physics_metrics(denorm(cands), denorm(context), data.layout,
                                  None if truth is None else denorm(truth))
        cost = physics_cost(metrics, weights)
        if truth is not None:
            cost = cost + weights.get("mse", 1.0) * relative_mse(cands, truth)
        return cost

    return score


@dataclass
class RoundReport:
    round: int
    step: int
    added: int  # pairs added this round
    training_pairs: int  # real + added, after the round
    kept_cost: float  # mean filter cost of the kept candidates (NaN without the filter)
    seconds: float


def self_training_round(model: BeamVQModel, data: ForecastData, config: TrainConfig, beam: BeamConfig,
                        rng: np.random.Generator, generator: torch.Generator) -> BeamResult:
    """Beam search from this round's inputs (training windows with truth, pool windows without)."""
    score = candidate_score(data, config.weights) if beam.filter else None
    propose = functools.partial(model.candidates, spread=beam.spread)
    denorm = data.normalizer.denormalize
    results = []
    for x, future, count in ((data.beam_x, data.beam_future, config.beam_inputs),
                             (data.pool_x, None, config.pool_inputs)):
        if count == 0 or len(x) == 0:
            continue
        pick = torch.from_numpy(rng.choice(len(x), min(count, len(x)), replace=False))
        result = beam_search(propose, x[pick], beam, score, None if future is None else future[pick], generator)
        if beam.filter and beam.nudge:
            reference = denorm(x[pick][result.origin, -1])  # the real input's last frame
            result.targets = data.normalizer.normalize(spectral_nudge(denorm(result.targets), reference, data.layout))
        result.origin = result.origin + sum(len(r.best) for r in results)
        results.append(result)
    return BeamResult(*(torch.cat([getattr(r, name) for r in results])
                        for name in ("inputs", "targets", "costs", "origin", "best")))


def fit(model: BeamVQModel, stepper: Stepper, data: ForecastData, config: TrainConfig, beam: BeamConfig | None,
        on_step: Callable[[int, float, float], None] | None = None,
        on_round: Callable[[RoundReport], None] | None = None, start_step: int = 0) -> list[RoundReport]:
    """Train for ``config.steps`` steps, with self-training rounds when ``beam`` is given (the model needs a code
    bank then). ``on_step(step, loss, code perplexity)`` after every step. A worker restarted at ``start_step``
    continues from the model the PS holds and runs the rounds scheduled before it at once, with that model (the
    candidates it had added died with it)."""
    if beam is not None and model.bank is None:
        raise ValueError("self-training rounds need a model with a code bank")
    rng = np.random.default_rng([config.seed, 1])
    generator = torch.Generator().manual_seed(config.seed)
    pairs = TrainingSet(data.train_x, data.train_y)
    pending = config.round_steps() if beam is not None else []
    reports: list[RoundReport] = []
    for step in range(start_step, config.steps):
        while pending and pending[0] <= step:  # a restarted worker runs the rounds it missed at once
            pending.pop(0)
            reports.append(_round(model, data, config, beam, pairs, rng, generator, len(reports), step))
            if on_round is not None:
                on_round(reports[-1])
        x, y = pairs.batch(rng, config.batch_size)
        model.train()
        out = model(x)
        loss = out.loss(y)
        stepper.zero_grad()
        loss.backward()
        perplexity = 0.0
        if model.bank is not None:
            model.bank.ema_update(out.latent, out.index)
            perplexity = model.bank.usage(out.index)
        stepper.step()
        if model.bank is not None:
            model.bank.refresh()
        if on_step is not None:
            on_step(step, loss.item(), perplexity)
    return reports


def _round(model: BeamVQModel, data: ForecastData, config: TrainConfig, beam: BeamConfig, pairs: TrainingSet,
           rng: np.random.Generator, generator: torch.Generator, index: int, step: int) -> RoundReport:
    start = time.perf_counter()
    model.eval()
    result = self_training_round(model, data, config, beam, rng, generator)
    pairs.add(result.inputs, result.targets)
    return RoundReport(index, step, len(result.inputs), len(pairs), float(result.costs.mean()),
                       time.perf_counter() - start)


def evaluate(model: BeamVQModel, data: ForecastData, steps: int | None = None) -> dict[str, float]:
    """Rollout metrics on the test windows: ``mse`` (standardized fields), ``persistence_mse`` (the last input
    frame held), ``skill = 1 − mse / persistence_mse``, every physics metric against the truth as
    ``physics_<name>``, and ``physics``, their mean."""
    model.eval()
    steps = steps or data.test_future.shape[1] // data.shape.t_out
    future = data.test_future[:, :steps * data.shape.t_out]
    pred = model.rollout(data.test_x, steps)
    mse = float(torch.mean((pred - future) ** 2))
    persistence = float(torch.mean((data.test_x[:, -1:] - future) ** 2))
    denorm = data.normalizer.denormalize
    metrics = physics_metrics(denorm(pred), denorm(data.test_x[:, -1]), data.layout, denorm(future))
    out = {"mse": mse, "persistence_mse": persistence, "skill": 1.0 - mse / persistence}
    out.update({f"physics_{name}": float(value.mean()) for name, value in metrics.items()})
    out["physics"] = float(np.mean([out[f"physics_{name}"] for name in METRICS[data.layout]]))
    return out
