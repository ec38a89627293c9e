"""Surge's protocol (Li et al., NeurIPS 2024, §3) as a job whose trials are jobs: the best learning rate per batch.

For each optimizer arm (Adam, with ``betas: [0, 0]`` the paper's sign-of-gradient setting, or SGD) and each batch
size, the sweep submits one ``lr_scaling.trial`` job to its scheduler (``parallel`` at a time): every learning rate of
the arm's grid, with ``seeds`` seeds, trained from scratch to each target loss and K steps further. Then per arm and
target:

- the best learning rate of each batch is the one with the largest mean extra loss drop over the K steps (none when
  no learning rate's mean drop is positive: every run crossed the target on a fluctuation of its noise floor and
  went back up, so the drop ranks noise, not progress), with the band of learning rates it does not beat by two
  standard errors of the paired (same seed) difference;
- S(B) is the fewest mean steps to the target over the learning rates, E(B) = B * S(B), and eq. 22's regression of
  1/S on 1/E gives B_noise (with S_min, E_min and R^2);
- eq. 23 gives eps_max from the best learning rates and B_noise, so the law of the arm's optimizer (eq. 2 for Adam,
  eq. 1 for SGD) can be drawn through the points.

Written to the run directory: ``surge.json`` (``{arm: {target: {"best_lr": {batch: lr}, "b_noise": x, ...}}}``),
``sweep.json`` (every trial's raw steps and drops), ``heatmap.png`` (the extra drop over batch and learning rate) and
``best_lr.png`` (best learning rate against batch with the fitted curves).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from seraphim.algorithms.lr_scaling import NoiseScaleError, fit_b_noise, fit_eps_max
from seraphim.algorithms.lr_scaling_plots import plot_best_lr, plot_heatmaps
from seraphim.algorithms.lr_scaling_trial import OptimizerSpec, TrainingSpec, raw_digits
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.proto import scheduler_pb2
from seraphim.proto.errors import FatalJobError
from seraphim.scheduler.client import SchedulerClient

_ACTIVE = (scheduler_pb2.PENDING, scheduler_pb2.RUNNING)


class SweepError(FatalJobError, ValueError):
    """A sweep that cannot run as started; a restart would fail the same way."""


class ArmSpec(BaseModel):
    """One optimizer configuration and its learning-rate grid."""

    model_config = ConfigDict(extra="forbid")
    optimizer: OptimizerSpec
    lrs: list[float] = Field(min_length=2, description="the learning-rate grid, each > 0")

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        if any(not (math.isfinite(lr) and lr > 0) for lr in v):
            raise ValueError(f"lrs must all be positive, got {v}")
        return sorted(set(v))


class LrSweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arms: dict[str, ArmSpec] = Field(description="arm name (the key in surge.json) -> optimizer and lr grid")
    batch_sizes: list[int] = Field(description="at least two batch sizes, for eq. 22's fit")
    training: TrainingSpec
    parallel: int = Field(2, ge=1, description="trial jobs running at once")
    trial_timeout_s: float = Field(1800.0, gt=0)

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: dict[str, ArmSpec]) -> dict[str, ArmSpec]:
        bad = [name for name in v if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name)]
        if not v or bad:
            raise ValueError(f"arms needs at least one arm, each named with lower-case letters, digits and '-' (it "
                             f"names trial jobs); got {list(v) if v else 'none'}")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        batches = sorted(set(v))
        if len(batches) < 2 or batches[0] < 1:
            raise ValueError(f"batch_sizes needs at least two different sizes >= 1 (eq. 22 fits a line), got {v}")
        return batches


def _per_seed(values: list[list[float | None]]) -> np.ndarray:
    """[lr][seed] with None for a run that never got there -> a float array with NaN there."""
    return np.array([[np.nan if x is None else x for x in row] for row in values], dtype=np.float64)


def best_lr_band(drops: np.ndarray, best: int) -> tuple[int, int]:
    """The lowest and highest lr index whose drop the best one does not beat by two standard errors.

    ``drops``: [lr, seed]. Runs of one seed share their batches under every lr, so the paired difference per seed is
    what is tested; this is the grid's uncertainty about the best learning rate, drawn as its error bar.
    """
    seeds = drops.shape[1]
    differences = drops[best] - drops  # [lr, seed]; NaN rows (some seed never finished) drop out
    mean = differences.mean(axis=1)
    spread = differences.std(axis=1, ddof=1) / math.sqrt(seeds) if seeds > 1 else np.zeros(len(drops))
    near = np.flatnonzero(mean <= 2 * spread)
    near = near if near.size else np.array([best])
    return int(near.min()), int(near.max())


def summarize_arm(kind: str, lrs: list[float], trials: dict[int, dict[str, Any]], target_index: int
                  ) -> dict[str, Any]:
    """One arm at one target: best lr per batch (and its band), S(B), eq. 22's B_noise and eq. 23's eps_max.

    ``trials`` maps batch size to the trial's result (``lr_scaling_trial.train_trial``); missing batches (failed
    trials) are left out.
    """
    batches = sorted(trials)
    per_seed = {b: _per_seed(trials[b]["extra_drop"][target_index]) for b in batches}  # [lr, seed]
    drops = np.array([per_seed[b].mean(axis=1) for b in batches])  # [B, lr]; NaN unless every seed got there
    steps = np.array([_per_seed(trials[b]["steps"][target_index]).mean(axis=1) for b in batches])  # [B, lr]
    best_lr: dict[str, float | None] = {}
    band: dict[str, list[float]] = {}
    fastest: dict[str, float] = {}
    for i, b in enumerate(batches):
        if np.isfinite(drops[i]).any() and np.nanmax(drops[i]) > 0:
            best = int(np.nanargmax(drops[i]))
            best_lr[str(b)] = lrs[best]
            low, high = best_lr_band(per_seed[b], best)
            band[str(b)] = [lrs[low], lrs[high]]
        else:
            best_lr[str(b)] = None
        if np.isfinite(steps[i]).any():
            fastest[str(b)] = float(np.nanmin(steps[i]))
    out: dict[str, Any] = {"best_lr": best_lr, "b_noise": None, "best_lr_band": band, "steps": fastest,
                           "extra_drop": {str(b): [None if math.isnan(d) else float(d) for d in drops[i]]
                                          for i, b in enumerate(batches)}}
    known = {b: lr for b, lr in best_lr.items() if lr is not None}
    if known:
        top = max(known.values())
        out["peak_batches"] = [int(b) for b, lr in known.items() if lr == top]
    try:
        fit = fit_b_noise(list(fastest.values()), [int(b) * s for b, s in fastest.items()])
    except NoiseScaleError as exc:
        out["fit_error"] = str(exc)
        return out
    out.update(b_noise=fit.b_noise, s_min=fit.s_min, e_min=fit.e_min, r2=fit.r2, fit_points=fit.points)
    if known:
        out["eps_max"] = fit_eps_max([int(b) for b in known], list(known.values()), fit.b_noise, kind)
    return out


class _TrialRunner:
    """Runs trial jobs through the scheduler, ``parallel`` at a time; cancels those still running if stopped."""

    def __init__(self, spec: LrSweepSpec, ctx: JobContext) -> None:
        if ctx.scheduler is None:
            raise SweepError("lr_scaling.sweep runs each trial as a job: start it through a scheduler (seraphim "
                                "run or seraphim submit), not as a direct worker")
        self.spec, self.ctx = spec, ctx
        self.client = SchedulerClient(ctx.scheduler.address, token=ctx.scheduler.token, tls=ctx.scheduler.tls)
        self.root = ctx.run_dir / "trials"
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = ctx.run_dir.name[:30]
        self.data_file = ctx.run_dir / "digits.npz"
        x, y = raw_digits()
        np.savez(self.data_file, x=x, y=y)

    def job_yaml(self, arm: str, batch: int) -> str:
        a = self.spec.arms[arm]
        return yaml.safe_dump({
            "name": f"{self.name}-{arm}-b{batch}"[:50].strip("-"), "algorithm": "lr_scaling.trial",
            "cluster": {"ps": 1, "workers": 1, "max_restarts": 0},
            "storage": {"dir": str(self.root), "ram_mb": 1, "page_kb": 4, "snapshot_every": 0},
            "train": {"optimizer": a.optimizer.model_dump(), "batch_size": batch, "lrs": a.lrs,
                      "training": self.spec.training.model_dump(), "data_file": str(self.data_file)},
        })

    def run_all(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        """Every (arm, batch) trial's result, or ``{"failed": reason}``."""
        waiting, running, done = list(keys), {}, {}
        try:
            while waiting or running:
                while waiting and len(running) < self.spec.parallel:
                    key = waiting.pop(0)
                    status = self.client.submit(self.job_yaml(*key), "local", str(self.root))
                    running[key] = (status.job_id, time.monotonic() + self.spec.trial_timeout_s)
                time.sleep(0.5)
                for key, (job_id, deadline) in list(running.items()):
                    status = self.client.job(job_id)
                    if status.state in _ACTIVE and time.monotonic() < deadline:
                        continue
                    del running[key]
                    done[key] = self._outcome(status)
                    self.ctx.report(len(done), {"trials_done": len(done)})
                    self.ctx.log.info("trial %s batch %d: %s", key[0], key[1],
                                      done[key].get("failed") or f"{done[key]['final_step']} steps in "
                                                                 f"{done[key]['train_s']:.1f}s")
        finally:
            for job_id, _ in running.values():
                self.client.cancel(job_id)
        return done

    def _outcome(self, status: scheduler_pb2.JobStatus) -> dict[str, Any]:
        if status.state in _ACTIVE:
            self.client.cancel(status.job_id)
            return {"job": status.job_id, "failed": f"ran past trial_timeout_s={self.spec.trial_timeout_s:.0f}"}
        if status.state != scheduler_pb2.SUCCEEDED:
            return {"job": status.job_id, "failed": f"{scheduler_pb2.JobState.Name(status.state)}: {status.reason}"}
        result = json.loads((Path(status.run_dir) / "results" / "worker-0.json").read_text())
        return {"job": status.job_id, **result}


def run_sweep(spec: LrSweepSpec, ctx: JobContext) -> dict[str, Any]:
    if ctx.world_size != 1:
        raise SweepError(f"lr_scaling.sweep drives its trials from one worker; set cluster.workers: 1 (got "
                            f"{ctx.world_size})")
    start = time.perf_counter()
    keys = [(arm, b) for b in spec.batch_sizes for arm in spec.arms]
    outcomes = _TrialRunner(spec, ctx).run_all(keys)
    targets = spec.training.targets
    surge: dict[str, dict[str, Any]] = {}
    for arm, a in spec.arms.items():
        trials = {b: outcomes[(arm, b)] for b in spec.batch_sizes if "failed" not in outcomes[(arm, b)]}
        surge[arm] = {f"{t:g}": summarize_arm(a.optimizer.kind, a.lrs, trials, i) for i, t in enumerate(targets)
                      if trials}
    failed = {f"{arm}/b{b}": o["failed"] for (arm, b), o in outcomes.items() if "failed" in o}
    (ctx.run_dir / "surge.json").write_text(json.dumps(surge, indent=2))
    (ctx.run_dir / "sweep.json").write_text(json.dumps(
        {"spec": spec.model_dump(), "failed": failed,
         "trials": [{"arm": arm, **o} for (arm, _), o in sorted(outcomes.items())]}, indent=2))
    kinds = {arm: a.optimizer.kind for arm, a in spec.arms.items()}
    plot_heatmaps(surge, {arm: a.lrs for arm, a in spec.arms.items()}, ctx.run_dir / "heatmap.png",
                  spec.training.extra_steps)
    plot_best_lr(surge, kinds, ctx.run_dir / "best_lr.png")
    for arm, per_target in surge.items():
        for target, s in per_target.items():
            ctx.log.info("%s at loss %s: B_noise %s (R^2 %s), best lr %s", arm, target, _fmt(s.get("b_noise")),
                         _fmt(s.get("r2")), s["best_lr"])
    return {"trials": len(outcomes) - len(failed), "failed": failed, "seconds": time.perf_counter() - start,
            "b_noise": {arm: {t: s.get("b_noise") for t, s in per_target.items()} for arm, per_target in
                        surge.items()}}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


@register("lr_scaling.sweep")
class LrSweepJob(Job):
    """The sweep driver; ``cluster.workers`` must be 1."""

    Spec = LrSweepSpec

    def total_steps(self) -> int:
        return len(self.spec.arms) * len(self.spec.batch_sizes)

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return run_sweep(self.spec, ctx)
