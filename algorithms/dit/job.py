"""The ``dit`` job: a diffusion Transformer trained data-parallel on the platform, its weights and AdamW states in
pages on the PS through the paged step runtime (``worker.paged``), with sample grids (and GIFs for clips) under
the run directory and in TensorBoard.

Every worker builds the model's shapes on the meta device (rank 0 builds the seeded initial weights, which become
the first pages), draws its own batches, and runs each step inside ``paged.step``: a layer's weights are fetched
from its pages as forward reaches it, its gradient pushed per page as backward finishes it, summed over the
workers on the PS and applied there by AdamW. The training loop itself (``train.py``) is the one the in-process
reference runs. Rank 0 keeps the EMA weights, refreshed from the PS pages every ``training.ema_every`` steps (one
update of ``d ** ema_every``: the EMA of weights sampled every N steps, not of every step's), writes the sample
grids and, when ``evaluation.samples`` > 0, scores the samples with the attribute classifier (``evaluate.py``);
``sampling.weights: trained`` samples the PS weights through ``paged.inference()`` instead. A restarted worker
resumes at the clock the PS holds for it; rank 0's EMA then starts again from the PS weights.

Files under the run directory (rank 0): ``samples/step-NNNNNN.png`` (``.gif`` too for clips) and their captions
``.txt``, ``model/ema.safetensors``, ``model/config.json``, ``model/tokenizer.json``, ``evaluation.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from safetensors.torch import save_file
from torch import Tensor

from seraphim.algorithms.dit.digits import DigitImages, DigitVideos
from seraphim.algorithms.dit.errors import DiTInputError
from seraphim.algorithms.dit.evaluate import score_generator, train_classifier
from seraphim.algorithms.dit.media import clips_gif, grid_png, log_samples
from seraphim.algorithms.dit.spec import DiTSpec
from seraphim.algorithms.dit.train import TrainingRun
from seraphim.algorithms.registry import Job, JobContext, register
from seraphim.algorithms.transformer.job import PagingSpec
from seraphim.proto.errors import AlreadyExists, FatalJobError
from seraphim.proto.resources import peak_rss_bytes
from seraphim.worker.paged import PagedModel
from seraphim.worker.specs import AdamW

#: the facts the quality targets are stated on: class and position for images, class and direction for clips
JOINT_FACTS = {DigitImages: ("digit", "position"), DigitVideos: ("digit", "direction")}
MODEL_TABLE = "dit_model"


class PagedTrainer:
    """One step of the paged step runtime: forward and backward inside ``paged.step``, the gradients summed over the
    workers (hence loss / world) and applied on the PS; rank 0 refreshes its EMA from the pages every N steps."""

    def __init__(self, run: TrainingRun, paged: PagedModel, ctx: JobContext) -> None:
        self.run, self.paged, self.ctx = run, paged, ctx
        self.training = run.spec.training

    def step(self, step: int, loss: Callable[[], Tensor]) -> float:
        t = self.training
        with self.paged.step(step, lr_scale=t.lr_scale(step), last_step=t.steps - 1):
            value = loss()
            (value / self.ctx.world_size).backward()
        self.ctx.ps.clock()
        done = step + 1
        if self.run.ema is not None and (done % t.ema_every == 0 or done == t.steps):
            self.run.ema.update_from(self.paged.named_tensors(), steps=done - self.run.ema.updates)
        return value.item()


def open_paged(run: TrainingRun, ctx: JobContext, paging: PagingSpec) -> PagedModel:
    t = run.spec.training
    ps_page_bytes = int(ctx.ps.stats()[0].page_bytes)
    try:
        return PagedModel(ctx.ps, run.model, name=MODEL_TABLE, optimizer=AdamW(lr=t.lr, weight_decay=t.weight_decay),
                          config=paging.runtime(ps_page_bytes), rank=ctx.rank, world_size=ctx.world_size,
                          seed=t.seed)
    except AlreadyExists as exc:
        raise FatalJobError(f"the PS already holds model pages {MODEL_TABLE!r} of another shape or optimizer "
                            f"({exc}); the model or the optimizer changed since they were written: use a new run "
                            f"directory") from None


def preview_captions(run: TrainingRun, n: int, seed: int) -> list[str]:
    """Captions of a sample grid: for digits, the classes in order with the other facts drawn; else the data's own."""
    data = run.data
    if isinstance(data, (DigitImages, DigitVideos)):
        rng = np.random.default_rng(seed)
        attrs = data.with_facts(rng, {"digit": np.arange(n) % 10}, split="heldout")
        return data.captions(attrs)
    texts = data.vocabulary()
    return [texts[i % len(texts)] for i in range(n)]


#: captions (and sampler keyword overrides such as seed) -> samples [n, C, *S] in [-1, 1]
Generate = Callable[..., np.ndarray]


def sampler(run: TrainingRun, paged: PagedModel) -> Generate:
    """Rank 0's sampler: its EMA weights, or (``sampling.weights: trained``) the PS weights through the runtime."""
    if run.ema is not None:
        return lambda captions, **options: run.sample(run.ema.model, captions, **options)

    def from_pages(captions: list[str], **options: Any) -> np.ndarray:
        with paged.inference():
            return run.sample(run.model, captions, **options)

    return from_pages


def save_samples(run: TrainingRun, generate: Generate, run_dir: Path, step: int) -> list[Path]:
    """Sample the preview captions; write the PNG grid (and GIF), the captions and TensorBoard."""
    s = run.spec.sampling
    captions = preview_captions(run, s.grid, s.seed)
    samples = generate(captions, seed=s.seed)
    stem = run_dir / "samples" / f"step-{step:06d}"
    paths = [grid_png(samples, stem.with_suffix(".png"))]
    if samples.ndim == 5:
        paths.append(clips_gif(samples, stem.with_suffix(".gif")))
    stem.with_suffix(".txt").write_text("\n".join(captions) + "\n")
    log_samples(run_dir, "samples", samples, step)
    return paths


def save_model(run: TrainingRun, paged: PagedModel, run_dir: Path) -> Path:
    """The weights the samples came from (EMA, or the PS's), the config and the tokenizer, under model/."""
    out = run_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    if run.ema is not None:
        save_file({k: v.contiguous() for k, v in run.ema.model.state_dict().items()}, str(out / "ema.safetensors"))
    else:
        save_file(dict(paged.named_tensors()), str(out / "weights.safetensors"))
    (out / "config.json").write_text(run.model.config.model_dump_json(indent=2))
    run.tokenizer.save(out / "tokenizer.json")
    return out


def evaluate(run: TrainingRun, generate: Generate, ctx: JobContext, step: int) -> dict[str, float]:
    """Train the attribute classifier on real renderings and score the sampled weights with it."""
    e = run.spec.evaluation
    data = run.data
    if not isinstance(data, (DigitImages, DigitVideos)):
        raise DiTInputError("evaluation.samples needs generated digits data")  # the spec says so first
    classifier, heldout = train_classifier(data, steps=e.classifier_steps,
                                           batch_size=64 if isinstance(data, DigitImages) else 32)
    report = score_generator(data, generate, classifier, e.samples)
    figures = {**{f"classifier_heldout_acc_{k}": v for k, v in heldout.items()}, **report.figures("caption_")}
    figures["caption_acc_joint"] = report.joint_accuracy(JOINT_FACTS[type(data)])
    ctx.report(step, figures)
    (ctx.run_dir / "evaluation.json").write_text(json.dumps(figures, indent=2))
    ctx.log.info("evaluation: %s", json.dumps(figures))
    return figures


def run_dit(spec: DiTSpec, ctx: JobContext) -> dict[str, Any]:
    lead = ctx.rank == 0
    run = TrainingRun.build(spec, rank=ctx.rank, device="cpu" if lead else "meta",
                            ema=lead and spec.sampling.weights == "ema")
    paged = open_paged(run, ctx, spec.paging)
    try:
        return _train(run, paged, ctx)
    finally:
        paged.close()


def _train(run: TrainingRun, paged: PagedModel, ctx: JobContext) -> dict[str, Any]:
    spec = run.spec
    if run.ema is not None and ctx.start_step:
        run.ema.reset_from(paged.named_tensors(version=ctx.start_step))  # a restarted rank 0: the PS's weights
        run.ema.updates = ctx.start_step
    t, s = spec.training, spec.sampling
    tokens_per_step = t.batch_size * run.tokens_per_sample
    ctx.log.info("rank %d: %s with %d parameters in %d pages of %d KiB, %d tokens per step, from step %d", ctx.rank,
                 spec.model.preset, run.model.num_parameters(), paged.layout.n_pages, spec.paging.page_kb,
                 tokens_per_step, ctx.start_step)
    generate = sampler(run, paged)
    sample_paths: list[Path] = []
    train_seconds = 0.0

    def on_step(step: int, loss: float, seconds: float) -> None:
        nonlocal train_seconds
        train_seconds += seconds
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            report = paged.report()
            ctx.report(done, {"train_loss": loss, "tokens_per_s": tokens_per_step / seconds,
                              "bytes_moved_mb": (report.pulled_bytes + report.pushed_bytes) / 2**20,
                              "stall_s": report.stall_s})
        if ctx.rank == 0 and s.every and done % s.every == 0 and done < t.steps:
            sample_paths.extend(save_samples(run, generate, ctx.run_dir, done))

    started = time.perf_counter()
    final_loss = run.train(PagedTrainer(run, paged, ctx), start_step=ctx.start_step, on_step=on_step)
    wall = time.perf_counter() - started
    report = paged.report()
    out: dict[str, Any] = {
        "final_loss": final_loss, "parameters": run.model.num_parameters(), "tokens_per_step": tokens_per_step,
        "steps": t.steps - ctx.start_step, "train_seconds": train_seconds, "wall_seconds": wall,
        "pulled_mb": report.pulled_bytes / 2**20, "pushed_mb": report.pushed_bytes / 2**20,
        "stall_s": report.stall_s, "worker_page_budget_bytes": paged.budget_bytes,
        "worker_peak_rss_bytes": peak_rss_bytes(),
    }
    if ctx.rank == 0:
        sample_paths.extend(save_samples(run, generate, ctx.run_dir, t.steps))
        out["samples"] = [str(p) for p in sample_paths]
        out["model_dir"] = str(save_model(run, paged, ctx.run_dir))
        if spec.evaluation.samples:
            out["evaluation"] = evaluate(run, generate, ctx, t.steps)
    return out


@register("dit")
class DiTJob(Job):
    """Hunyuan-DiT or HunyuanVideo-style DiT on captioned images or clips, by flow matching or v-prediction DDPM."""

    Spec = DiTSpec

    def total_steps(self) -> int:
        return self.spec.training.steps

    def run(self, ctx: JobContext) -> dict[str, Any]:
        return run_dit(self.spec, ctx)
