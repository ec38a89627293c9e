"""BeamVQ as a Seraphim job: data-parallel training of a forecaster whose code bank lives on the PS.

Every worker trains on its share of the training windows with the model's weights and Adam on the PS
(PSParameters); the code bank's EMA statistics are a dense PS table ``[codes, code_dim + 1]`` that every worker
reads after each step's barrier and moves by ADD pushes (``codebank.py`` says why two workers' EMA steps then
combine exactly). Clock 1 is a barrier after rank 0 put the initial codes in place; clocks 2.. are the optimizer
steps. Self-training rounds run beam search on each worker's own share of the inputs and add the kept candidates to
its own training set. Each round and the end report ``round``, ``skill`` and ``physics`` (lower is better) on the
test windows; rank 0 draws ``forecast.png`` (truth, forecast and error of a test window) and every worker writes the
sum of the code-bank deltas it pushed (``codebank/pushed-R.npy``), rank 0 the initial and final rows, so a run
shows what each worker did to the shared bank.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from seraphim.algorithms.beamvq.backbones import PRESETS, build_backbone, parameter_count
from seraphim.algorithms.beamvq.beam_search import BeamConfig
from seraphim.algorithms.beamvq.codebank import CodeBank, PSStore
from seraphim.algorithms.beamvq.data import FieldsError, FieldsSpec, shared_fields
from seraphim.algorithms.beamvq.model import BeamVQModel
from seraphim.algorithms.beamvq.plot import plot_forecast
from seraphim.algorithms.beamvq.train import (
    ForecastData, RoundReport, Share, SplitSpec, TrainConfig, WindowSpec, evaluate, fit,
)
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.proto.atomic_file import atomic_write
from seraphim.worker.specs import Adam
from seraphim.worker.torch_modules import PSOptimizer, PSParameters

#: steps between two reports of the training loss and the code usage
REPORT_EVERY = 10


class SplitModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: int = Field(24, ge=1, description="labelled trajectories")
    pool: int = Field(8, ge=0, description="trajectories whose inputs (not futures) self-training may use")
    test: int = Field(8, ge=1)


class WindowModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t_in: int = Field(4, ge=1)
    t_out: int = Field(4, ge=1)
    eval_steps: int = Field(2, ge=1, description="rollout steps scored on the test trajectories")
    test_stride: int = Field(4, ge=1)


class BackboneModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["simvp", "fno"] = "simvp"
    sizes: dict[str, int] = Field(default_factory=dict, description="overrides of the preset's sizes")


class CodeBankModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codes: int = Field(256, ge=2)
    code_dim: int = Field(4, ge=1, description="each position's latent is cut into vectors of this size, each "
                          "quantized on its own (must divide the backbone's latent width)")
    decay: float = Field(0.99, gt=0.0, lt=1.0)
    commitment: float = Field(0.0, ge=0.0, description="weight pulling the encoder toward its codes (the public "
                              "script: 0.25); 0 leaves the forecaster's training to the forecast's MSE")
    branch_weight: float = Field(0.0, ge=0.0, description="weight of the MSE of the forecast decoded from the codes "
                                 "(the public script: 1)")


class BeamModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="false: the backbone alone, no code bank and no self-training")
    filter: bool = Field(True, description="false: keep every candidate, as the public script does")
    width: int = Field(2, ge=1)
    top_k: int = Field(4, ge=1)
    horizon: int = Field(2, ge=1)
    keep: int = Field(1, ge=1)
    spread: float = Field(0.1, gt=0.0, description="candidates move the state this fraction of the step from its "
                          "nearest code toward each other of its top-K codes")
    nudge: bool = Field(True, description="give kept candidates the energy spectrum of the real input's last frame "
                        "(with the filter)")


class TrainingModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(600, ge=1)
    batch_size: int = Field(8, ge=1, description="samples per step on each worker")
    lr: float = Field(1e-3, gt=0)
    rounds: int = Field(2, ge=0)
    warmup: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of the steps before the first round")
    beam_inputs: int = Field(32, ge=0, description="training windows starting beams per round and worker")
    pool_inputs: int = Field(32, ge=0, description="pool windows starting beams per round and worker")
    weights: dict[str, float] = Field(default_factory=dict, description="filter weight per physics metric, and "
                                      "'mse' for the error against the truth where it is known (default 1 each)")
    seed: int = 0


class BeamVQSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: FieldsSpec
    split: SplitModel = Field(default_factory=SplitModel)
    windows: WindowModel = Field(default_factory=WindowModel)
    backbone: BackboneModel = Field(default_factory=BackboneModel)
    codebank: CodeBankModel = Field(default_factory=CodeBankModel)
    beam: BeamModel = Field(default_factory=BeamModel)
    training: TrainingModel = Field(default_factory=TrainingModel)

    @model_validator(mode="after")
    def _consistent(self) -> "BeamVQSpec":
        b = self.beam
        if b.keep > b.width:
            raise ValueError(f"beam.keep ({b.keep}) cannot exceed beam.width ({b.width})")
        if b.top_k > self.codebank.codes:
            raise ValueError(f"beam.top_k ({b.top_k}) cannot exceed codebank.codes ({self.codebank.codes})")
        known = set(PRESETS[self.backbone.name][1])
        unknown = sorted(set(self.backbone.sizes) - known)
        if unknown:
            raise ValueError(f"backbone.sizes {unknown} are not sizes of {self.backbone.name}: {sorted(known)}")
        return self

    def window_spec(self) -> WindowSpec:
        w = self.windows
        return WindowSpec(w.t_in, w.t_out, self.beam.horizon, w.eval_steps, w.test_stride)

    def train_config(self) -> TrainConfig:
        t = self.training
        return TrainConfig(steps=t.steps, batch_size=t.batch_size, rounds=t.rounds if self.beam.enabled else 0,
                           warmup=t.warmup, beam_inputs=t.beam_inputs, pool_inputs=t.pool_inputs,
                           weights=t.weights, seed=t.seed)

    def beam_config(self) -> BeamConfig | None:
        b = self.beam
        return BeamConfig(b.width, b.top_k, b.horizon, b.keep, b.filter, b.spread, b.nudge) if b.enabled else None


class _Progress:
    """The job's metrics: loss and code usage every few steps, test skill and physics after every round."""

    def __init__(self, ctx: JobContext, model: BeamVQModel, data: ForecastData, rounds: int) -> None:
        self.ctx, self.model, self.data, self.rounds = ctx, model, data, rounds
        self.losses: list[float] = []

    def clock(self, step: int) -> int:
        return step + 2  # clock 1 is the code-bank barrier; step s ends at clock s + 2

    def on_step(self, step: int, loss: float, perplexity: float) -> None:
        self.losses.append(loss)
        if (step + 1) % REPORT_EVERY == 0:
            metrics = {"train_loss": float(np.mean(self.losses))}
            if self.model.bank is not None:
                metrics["code_perplexity"] = perplexity
            self.ctx.report(self.clock(step), metrics)
            self.losses.clear()

    def on_round(self, report: RoundReport) -> None:
        scores = evaluate(self.model, self.data)
        self.ctx.log.info("round %d at step %d: %d pairs added (%d in all) in %.1fs; skill %.4f physics %.4f",
                          report.round + 1, report.step, report.added, report.training_pairs, report.seconds,
                          scores["skill"], scores["physics"])
        self.ctx.report(self.clock(report.step) - 1, {
            "round": report.round + 1, "rounds_total": self.rounds, "pairs_added": report.added,
            "skill": scores["skill"], "physics": scores["physics"], "beam_seconds": report.seconds})


def _init_bank(bank: CodeBank, model: BeamVQModel, data: ForecastData, ctx: JobContext, seed: int) -> None:
    """Rank 0 puts the first codes on the PS (encoder outputs of its first windows); clock 1 is the barrier."""
    if ctx.start_step == 0:
        if ctx.rank == 0:
            with torch.no_grad():
                latent = model.backbone.encode(data.train_x[:64])
            bank.initialize(latent, seed)
        ctx.ps.clock()
    bank.refresh()


def run_beamvq(spec: BeamVQSpec, ctx: JobContext) -> dict[str, Any]:
    """Train this worker's share with the model and the code bank on the PS; return the test scores and timings."""
    if any(h.staleness != 0 for h in ctx.ps.health()):
        raise FieldsError("beamvq jobs need consistency.staleness: 0: the code bank's EMA pushes combine exactly "
                          "only when every worker reads the rows of the same step")
    torch.manual_seed(spec.training.seed)
    fields = shared_fields(spec.fields, ctx.run_dir / "fields", ctx.rank)
    split = SplitSpec(spec.split.train, spec.split.pool, spec.split.test)
    data = ForecastData.build(fields, split, spec.window_spec(), Share(ctx.rank, ctx.world_size))
    try:
        backbone = build_backbone(spec.backbone.name, data.shape, **spec.backbone.sizes)
    except ValueError as exc:
        raise FieldsError(f"backbone: {exc}") from None
    bank = None
    if spec.beam.enabled:
        cb = spec.codebank
        if backbone.latent_dim % cb.code_dim:
            raise FieldsError(f"codebank.code_dim {cb.code_dim} does not divide the {spec.backbone.name} latent "
                              f"width {backbone.latent_dim}")
        store = PSStore(ctx.ps, "beamvq_codebank", cb.codes, cb.code_dim, ctx.world_size)
        bank = CodeBank(store, cb.decay, cb.commitment)
    model = BeamVQModel(backbone, bank, spec.codebank.branch_weight)
    t = spec.training
    optimizer = PSOptimizer(PSParameters(ctx.ps, "beamvq_model", model.named_parameters(), Adam(lr=t.lr)))
    if bank is not None:
        _init_bank(bank, model, data, ctx, t.seed)
        initial = bank.stats.copy()
    elif ctx.start_step == 0:
        ctx.ps.clock()  # clock 1 exists in every run, so steps end at the same clocks with or without a bank
    config = spec.train_config()
    progress = _Progress(ctx, model, data, config.rounds)
    start = time.perf_counter()
    rounds = fit(model, optimizer, data, config, spec.beam_config(), progress.on_step, progress.on_round,
                 start_step=max(0, ctx.start_step - 1))
    train_s = time.perf_counter() - start
    scores = evaluate(model, data)
    ctx.report(progress.clock(config.steps - 1), {"skill": scores["skill"], "physics": scores["physics"],
                                                   "mse": scores["mse"]})
    out: dict[str, Any] = {**scores, "train_s": train_s, "steps": config.steps, "parameters": parameter_count(model),
                           "training_windows": len(data.train_x), "layout": data.layout,
                           "rounds": [vars(r) for r in rounds]}
    if bank is not None:
        bank_dir = ctx.run_dir / "codebank"
        bank_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(bank_dir / f"pushed-{ctx.rank}.npy", lambda f: np.save(f, bank.pushed))
        if ctx.rank == 0:
            atomic_write(bank_dir / "initial.npy", lambda f: np.save(f, initial))
            atomic_write(bank_dir / "final.npy", lambda f: np.save(f, bank.stats))
        with torch.no_grad():
            out["code_perplexity"] = bank.usage(bank.nearest(model.backbone.encode(data.test_x), 1)[:, 0])
    if ctx.rank == 0:
        denorm = data.normalizer.denormalize
        pred = model.rollout(data.test_x[:1], data.test_future.shape[1] // data.shape.t_out)
        name = spec.backbone.name + (" + BeamVQ" if spec.beam.enabled else "")
        out["forecast_plot"] = str(plot_forecast(denorm(data.test_future[0]), denorm(pred[0]), data.layout,
                                                 ctx.run_dir / "forecast.png", title=name))
    return out


@register("beamvq")
class BeamVQJob(Job):
    """A forecaster with BeamVQ's code bank on the PS, beam search and physics-aware self-training."""

    Spec = BeamVQSpec

    def total_steps(self) -> int:
        return self.spec.training.steps + 1

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return run_beamvq(self.spec, ctx)
