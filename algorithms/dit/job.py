"""The ``dit`` job: a diffusion Transformer trained data-parallel on the platform, its weights and AdamW states on
the PS, with sample grids (and GIFs for clips) under the run directory and in TensorBoard.

Every worker builds the same model (seeded), draws its own batches, and steps through :func:`build_trainer`,
the one seam between the model and the platform; the training loop itself (``train.py``) is the one the in-process
reference runs. Rank 0 keeps the EMA weights, writes the sample grids and, when ``evaluation.samples`` > 0, scores
the EMA model with the attribute classifier (``evaluate.py``). A restarted worker resumes at the clock the PS holds
for it; its EMA then starts again from the PS weights.

Files under the run directory (rank 0): ``samples/step-NNNNNN.png`` (``.gif`` too for clips) and their captions
``.txt``, ``model/ema.safetensors``, ``model/config.json``, ``model/tokenizer.json``, ``evaluation.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file
from torch import nn

from seraphim.algorithms.dit.digits import DigitImages, DigitVideos
from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.evaluate import score_generator, train_classifier
from seraphim.algorithms.dit.media import clips_gif, grid_png, log_samples
from seraphim.algorithms.dit.spec import DiTSpec, TrainingSpec
from seraphim.algorithms.dit.train import Stepper, TrainingRun
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.proto.resources import peak_rss_bytes
from seraphim.worker.specs import AdamW
from seraphim.worker.torch_modules import PSOptimizer, PSParameters

#: columns per row of the model's PS table: a row with AdamW's two moments and its step count is 3 KiB, so it fits
#: the smallest page size a job may choose (4 KiB)
MODEL_ROW_COLS = 256
MODEL_TABLE = "dit_model"


def build_trainer(model: nn.Module, ctx: JobContext, training: TrainingSpec) -> Stepper:
    """The seam between the model and the platform: what ``zero_grad``/``step`` the training loop calls.

    Today: every parameter of the module in one PS table with AdamW on the PS (``PSParameters``), pulled after each
    clock so data-parallel workers stay on identical weights (``PSOptimizer``). The paged step runtime (model states
    in PS pages, a bounded working set, prefetch, early gradient pushes) replaces this body; the model is an ordinary
    ``nn.Module`` whose blocks are ``nn.ModuleList``s, and nothing else in the job touches the PS.
    """
    params = PSParameters(ctx.ps, MODEL_TABLE, model.named_parameters(),
                          AdamW(lr=training.lr, weight_decay=training.weight_decay), cols=MODEL_ROW_COLS)
    return PSOptimizer(params, model)


def preview_captions(run: TrainingRun, n: int, seed: int) -> list[str]:
    """Captions of a sample grid: for digits, the classes in order with the other facts drawn; else the data's own."""
    data = run.data
    if isinstance(data, (DigitImages, DigitVideos)):
        rng = np.random.default_rng(seed)
        attrs = data.with_facts(rng, {"digit": np.arange(n) % 10}, split="heldout")
        return data.captions(attrs)
    texts = data.vocabulary()
    return [texts[i % len(texts)] for i in range(n)]


def save_samples(run: TrainingRun, run_dir: Path, step: int) -> list[Path]:
    """Sample the EMA model on the preview captions; write the PNG grid (and GIF), the captions and TensorBoard."""
    s = run.spec.sampling
    captions = preview_captions(run, s.grid, s.seed)
    samples = run.sample(run.ema.model, captions, seed=s.seed)
    stem = run_dir / "samples" / f"step-{step:06d}"
    paths = [grid_png(samples, stem.with_suffix(".png"))]
    if samples.ndim == 5:
        paths.append(clips_gif(samples, stem.with_suffix(".gif")))
    stem.with_suffix(".txt").write_text("\n".join(captions) + "\n")
    log_samples(run_dir, "samples", samples, step)
    return paths


def save_model(run: TrainingRun, run_dir: Path) -> Path:
    out = run_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in run.ema.model.state_dict().items()}, str(out / "ema.safetensors"))
    (out / "config.json").write_text(run.model.config.model_dump_json(indent=2))
    run.tokenizer.save(out / "tokenizer.json")
    return out


def evaluate(run: TrainingRun, ctx: JobContext, step: int) -> dict[str, float]:
    """Train the attribute classifier on real renderings and score the EMA model's samples with it."""
    e = run.spec.evaluation
    data = run.data
    if not isinstance(data, (DigitImages, DigitVideos)):
        raise DiTInputError("evaluation.samples needs generated digits data")  # the spec says so first
    classifier, heldout = train_classifier(data, steps=e.classifier_steps,
                                           batch_size=64 if isinstance(data, DigitImages) else 32)
    report = score_generator(data, lambda captions: run.sample(run.ema.model, captions), classifier, e.samples)
    figures = {**{f"classifier_heldout_acc_{k}": v for k, v in heldout.items()}, **report.figures("caption_")}
    ctx.report(step, figures)
    (ctx.run_dir / "evaluation.json").write_text(json.dumps(figures, indent=2))
    ctx.log.info("evaluation: %s", json.dumps(figures))
    return figures


def run_dit(spec: DiTSpec, ctx: JobContext) -> dict[str, Any]:
    run = TrainingRun.build(spec, rank=ctx.rank)
    trainer = build_trainer(run.model, ctx, spec.training)
    run.ema.model.load_state_dict(run.model.state_dict())  # the PS weights (a restarted worker's trained ones)
    t, s = spec.training, spec.sampling
    tokens_per_step = t.batch_size * run.tokens_per_sample
    ctx.log.info("rank %d: %s with %d parameters, %d tokens per step, from step %d", ctx.rank,
                 spec.model.preset, run.model.num_parameters(), tokens_per_step, ctx.start_step)
    sample_paths: list[Path] = []
    train_seconds = 0.0

    def on_step(step: int, loss: float, seconds: float) -> None:
        nonlocal train_seconds
        train_seconds += seconds
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            ctx.report(done, {"train_loss": loss, "tokens_per_s": tokens_per_step / seconds})
        if ctx.rank == 0 and s.every and done % s.every == 0 and done < t.steps:
            sample_paths.extend(save_samples(run, ctx.run_dir, done))

    started = time.perf_counter()
    final_loss = run.train(trainer, start_step=ctx.start_step, on_step=on_step)
    wall = time.perf_counter() - started
    out: dict[str, Any] = {
        "final_loss": final_loss, "parameters": run.model.num_parameters(), "tokens_per_step": tokens_per_step,
        "steps": t.steps - ctx.start_step, "train_seconds": train_seconds, "wall_seconds": wall,
        "worker_peak_rss_bytes": peak_rss_bytes(),
    }
    if ctx.rank == 0:
        sample_paths.extend(save_samples(run, ctx.run_dir, t.steps))
        out["samples"] = [str(p) for p in sample_paths]
        out["model_dir"] = str(save_model(run, ctx.run_dir))
        if spec.evaluation.samples:
            out["evaluation"] = evaluate(run, ctx, t.steps)
    return out


@register("dit")
class DiTJob(Job):
    """Hunyuan-DiT or HunyuanVideo-style DiT on captioned images or clips, by flow matching or v-prediction DDPM."""

    Spec = DiTSpec

    def total_steps(self) -> int:
        return self.spec.training.steps

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return run_dit(self.spec, ctx)
