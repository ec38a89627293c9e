"""DiT quality and throughput, every figure measured in this run (trained models are cached, see --out).

1. The attribute classifiers (images; clips), trained on real renderings of the training glyphs: their accuracy per
   caption fact on held-out glyphs (``classifier_*``).
2. Flow matching against v-prediction DDPM: the image model of examples/dit_image.yaml, the same data, global batch
   (workers x batch_size, in one process, as for every model here), steps and optimizer, over --seeds training
   seeds; each model samples with its own first-order sampler (Euler; DDIM) at 10, 25 and 50 steps with the same
   guidance, and is scored on the same captions: accuracy per caption fact, the joint accuracy on class and
   position, and the Fréchet distance to real renderings of the same captions in the classifier's feature space.
   ``fd_flow_matching`` and ``fd_ddpm`` are the seed means at 25 steps.
3. The time shift ``t -> s t / (1 + (s - 1) t)`` of the flow-matching sampler at few (10 and 5) steps.
4. Dual-then-single-stream (hyvideo-t/4) against all-single-stream blocks (single-t/4) at equal parameters (counts
   printed), trained on the images like the flow-matching models and scored at 25 steps.
5. The video model of examples/dit_video.yaml on moving digits: accuracy on class and direction, and motion
   consistency (the tracked displacement per frame against the caption's velocity).
6. Tokens/s of the ``dit`` job through ``seraphim run`` (2 workers, 2 PS shards, weights and AdamW on the PS) against
   the same model trained in this process with torch.optim.AdamW on the same global batch (2 x the per-worker batch,
   with 1 torch thread and with one per core, the faster counting), each the best of --rounds interleaved rounds;
   tokens are patch tokens (64 per 32x32 image at patch 4). The job's rate comes from its workers' metric files over
   the steady-state span (bench/e2e.py's method), the single process's from its per-step callback over the same
   span; ``ratio_vs_single_process`` divides the two.

``caption_accuracy_image`` is the flow-matching models' joint accuracy on class and position (25 steps, seed mean);
``caption_accuracy_video`` the video model's joint accuracy on class and direction.

Models train in --jobs processes at once (each with one torch thread; the host is shared, so the processes keep
their niceness) and are kept under --out/models by a hash of their spec, so a rerun only scores them; sample grids
(PNG, and GIF for clips) go to --out as well.

    nice -n 10 python bench/dit.py [--seeds 3] [--jobs 3] [--samples 300] [--out runs/bench-dit]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from common import print_figures
from e2e import run_platform, span_rate
from seraphim.algorithms.dit.digits import DigitImages, DigitVideos
from seraphim.algorithms.dit.evaluate import AttributeClassifier, classifier_for, score_generator, train_classifier
from seraphim.algorithms.dit.media import clips_gif, grid_png
from seraphim.algorithms.dit.reference import train_in_process
from seraphim.algorithms.dit.spec import DiTSpec
from seraphim.algorithms.dit.train import TrainingRun, open_data

REPO = Path(__file__).resolve().parents[1]
SAMPLING_STEPS = (10, 25, 50)
SHIFT_STEPS = (10, 5)
SHIFTS = (1.0, 2.0, 4.0, 8.0)
IMAGE_FACTS = ("digit", "position")
VIDEO_FACTS = ("digit", "direction")


def log(message: str) -> None:
    print(f"# {message}", flush=True)


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())


def example_train(name: str) -> dict[str, Any]:
    """An example's train section for one process: its batch is the job's global one (workers x batch_size)."""
    job = example(name)
    train = job["train"]
    train["training"]["batch_size"] *= job["cluster"]["workers"]
    return train


@dataclass(frozen=True)
class Scoring:
    """One sampler configuration to score a trained model with."""

    key: str
    steps: int
    options: dict[str, float] = field(default_factory=dict)
    grid: bool = False  # save its first 16 samples as a grid


@dataclass(frozen=True)
class Task:
    """Train (or load) one model and score it: what a pool process is given."""

    name: str
    spec: dict[str, Any]
    video: bool
    scorings: tuple[Scoring, ...]


def image_spec(args: argparse.Namespace, seed: int, objective: str, preset: str | None = None) -> dict[str, Any]:
    train = example_train("dit_image")
    if preset is not None:
        train["model"] = {"preset": preset}
    train["objective"] = {"kind": objective}
    train["sampling"] = {"sampler": "euler" if objective == "flow_matching" else "ddim", "guidance": args.guidance}
    train["training"] = {**train["training"], "seed": seed, **({"steps": args.image_steps} if args.image_steps else {})}
    train["evaluation"] = {"samples": 0}
    return DiTSpec.model_validate(train).model_dump(mode="json")


def video_spec(args: argparse.Namespace) -> dict[str, Any]:
    train = example_train("dit_video")
    train["sampling"] = {**train.get("sampling", {}), "guidance": args.guidance}
    train["training"] = {**train["training"], **({"steps": args.video_steps} if args.video_steps else {})}
    train["evaluation"] = {"samples": 0}
    return DiTSpec.model_validate(train).model_dump(mode="json")


def tasks(args: argparse.Namespace) -> list[Task]:
    out = []
    for seed in range(args.seeds):
        fm = [Scoring(f"{s}steps", s, {"shift": 1.0}, grid=seed == 0 and s == 25) for s in SAMPLING_STEPS]
        fm += [Scoring(f"shift{shift:g}_{s}steps", s, {"shift": shift}) for s in SHIFT_STEPS for shift in SHIFTS
               if (s, shift) != (10, 1.0)]
        out.append(Task(f"image-flow_matching-seed{seed}", image_spec(args, seed, "flow_matching"), False, tuple(fm)))
        ddpm = [Scoring(f"{s}steps", s, {"eta": 0.0}, grid=seed == 0 and s == 25) for s in SAMPLING_STEPS]
        out.append(Task(f"image-ddpm-seed{seed}", image_spec(args, seed, "v_prediction"), False, tuple(ddpm)))
    for seed in range(args.arch_seeds):
        for preset, label in (("hyvideo-t/4", "dual_single"), ("single-t/4", "all_single")):
            out.append(Task(f"image-{label}-seed{seed}", image_spec(args, seed, "flow_matching", preset), False,
                            (Scoring("25steps", 25, {"shift": 1.0}, grid=seed == 0),)))
    out.append(Task("video-flow_matching", video_spec(args), True, (Scoring("25steps", 25, {"shift": 1.0}, True),)))
    return out


def model_path(out: Path, task: Task) -> Path:
    digest = hashlib.sha256(json.dumps(task.spec, sort_keys=True).encode()).hexdigest()[:10]
    return out / "models" / f"{task.name}-{digest}.safetensors"


def classifier_path(out: Path, video: bool) -> Path:
    return out / "models" / f"classifier-{'video' if video else 'image'}.pt"


def digits_data(video: bool) -> DigitImages | DigitVideos:
    """The data of the example the models train on (its canvas, glyph size and frames)."""
    data = open_data(DiTSpec.model_validate(example("dit_video" if video else "dit_image")["train"]).data)
    if not isinstance(data, (DigitImages, DigitVideos)):
        raise TypeError("the examples train on digits data")
    return data


def fit_classifier(video: bool, steps: int, out: Path) -> dict[str, float]:
    """Pool task: train and save one classifier (or load it); its held-out accuracy per fact."""
    path = classifier_path(out, video)
    if path.exists():
        return json.loads(path.with_suffix(".json").read_text())
    torch.set_num_threads(1)
    classifier, heldout = train_classifier(digits_data(video), steps=steps, batch_size=32 if video else 64)
    torch.save(classifier.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(heldout))
    return heldout


def load_classifier(out: Path, video: bool) -> AttributeClassifier:
    classifier = classifier_for(digits_data(video))
    classifier.load_state_dict(torch.load(classifier_path(out, video)))
    return classifier.eval()


def run_task(task: Task, out: Path, samples: int) -> dict[str, Any]:
    """Pool task: train the model (or load it from --out/models), then score it with every scoring."""
    torch.set_num_threads(1)
    spec = DiTSpec.model_validate(task.spec)
    path = model_path(out, task)
    started = time.perf_counter()
    if path.exists():
        run = TrainingRun.build(spec)
        run.ema.model.load_state_dict(load_file(str(path)))
        train_seconds = float("nan")
    else:
        run = train_in_process(spec)
        save_file({k: v.contiguous() for k, v in run.ema.model.state_dict().items()}, str(path))
        train_seconds = time.perf_counter() - started
    data = run.data
    if not isinstance(data, (DigitImages, DigitVideos)):
        raise TypeError(f"{task.name}: the benchmark scores digits data only")
    classifier = load_classifier(out, task.video)
    result: dict[str, Any] = {"parameters": run.model.num_parameters(), "train_seconds": train_seconds,
                              "scores": {}, "paths": []}
    for s in task.scorings:
        report = score_generator(
            data, lambda captions: run.sample(run.ema.model, captions, steps=s.steps, **s.options), classifier,
            samples)
        facts = VIDEO_FACTS if task.video else IMAGE_FACTS
        result["scores"][s.key] = {**report.figures(), "acc_joint": report.joint_accuracy(facts)}
        if s.grid:
            stem = out / f"{task.name}-{s.key}"
            result["paths"].append(str(grid_png(report.samples[:16], stem.with_suffix(".png"))))
            if task.video:
                result["paths"].append(str(clips_gif(report.samples[:16], stem.with_suffix(".gif"))))
            stem.with_suffix(".txt").write_text("\n".join(report.captions[:16]) + "\n")
    return result


def mean_over(results: list[dict[str, Any]], key: str, figure: str) -> tuple[float, float]:
    values = [r["scores"][key][figure] for r in results]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def quality(args: argparse.Namespace, figures: dict[str, float], paths: list[str]) -> None:
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    all_tasks = tasks(args)
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        fits = {video: pool.submit(fit_classifier, video, steps, args.out)
                for video, steps in ((False, args.classifier_steps), (True, args.video_classifier_steps))}
        for video, future in fits.items():
            heldout = future.result()
            figures.update({f"classifier_{'video' if video else 'image'}_heldout_{k}": v for k, v in heldout.items()})
            log(f"{'video' if video else 'image'} classifier, held-out accuracy: {heldout}")
        futures = {t.name: pool.submit(run_task, t, args.out, args.samples) for t in all_tasks}
        results = {}
        for name, future in futures.items():
            results[name] = future.result()
            log(f"{name}: {results[name]['parameters']} parameters, trained in "
                f"{results[name]['train_seconds']:.0f} s; " + "; ".join(
                    f"{k}: " + ", ".join(f"{f} {v:.3f}" for f, v in s.items())
                    for k, s in results[name]["scores"].items()))
            paths.extend(results[name]["paths"])

    image_facts = digits_data(False).FACTS
    for label in ("flow_matching", "ddpm"):
        runs = [results[f"image-{label}-seed{s}"] for s in range(args.seeds)]
        for steps in SAMPLING_STEPS:
            key = f"{steps}steps"
            for figure, name in (("acc_joint", "acc_class_position"), ("frechet_distance", "fd")):
                mean, std = mean_over(runs, key, figure)
                figures[f"{label}_{key}_{name}"], figures[f"{label}_{key}_{name}_std"] = mean, std
            for fact in image_facts:
                figures[f"{label}_{key}_acc_{fact}"] = mean_over(runs, key, f"acc_{fact}")[0]
    fm_runs = [results[f"image-flow_matching-seed{s}"] for s in range(args.seeds)]
    for steps in SHIFT_STEPS:
        for shift in SHIFTS:
            key = f"{steps}steps" if (steps, shift) == (10, 1.0) else f"shift{shift:g}_{steps}steps"
            figures[f"shift_{shift:g}_{steps}steps_acc_class_position"] = mean_over(fm_runs, key, "acc_joint")[0]
            figures[f"shift_{shift:g}_{steps}steps_fd"] = mean_over(fm_runs, key, "frechet_distance")[0]
    for label in ("dual_single", "all_single"):
        runs = [results[f"image-{label}-seed{s}"] for s in range(args.arch_seeds)]
        figures[f"{label}_parameters"] = runs[0]["parameters"]
        figures[f"{label}_acc_class_position"] = mean_over(runs, "25steps", "acc_joint")[0]
        figures[f"{label}_fd"] = mean_over(runs, "25steps", "frechet_distance")[0]
    video = results["video-flow_matching"]["scores"]["25steps"]
    figures.update({f"video_{k}": v for k, v in video.items() if k != "acc_joint"})
    figures["caption_accuracy_image"] = figures["flow_matching_25steps_acc_class_position"]
    figures["caption_accuracy_video"] = video["acc_joint"]
    figures["fd_flow_matching"] = figures["flow_matching_25steps_fd"]
    figures["fd_ddpm"] = figures["ddpm_25steps_fd"]


def throughput(args: argparse.Namespace, figures: dict[str, float]) -> None:
    job = example("dit_image")
    steps = args.throughput_steps
    job["name"] = "dit-bench"
    job["storage"] = {**job.get("storage", {}), "snapshot_every": 0}
    train_section = job["train"]
    train_section["training"] = {**train_section["training"], "steps": steps, "log_every": 1}
    train_section["sampling"] = {**train_section.get("sampling", {}), "steps": 1, "grid": 1, "every": 0}
    train_section["evaluation"] = {"samples": 0}
    spec = DiTSpec.model_validate(train_section)
    workers = job["cluster"]["workers"]
    single = DiTSpec.model_validate({**train_section, "training": {
        **train_section["training"], "batch_size": workers * spec.training.batch_size}})
    worker_tokens = spec.training.batch_size * TrainingRun.build(spec).tokens_per_sample
    thread_counts = sorted({1, os.cpu_count() or 1})  # the faster is the peer, so it is never weakened
    platform, in_process = [], []
    with tempfile.TemporaryDirectory(prefix="seraphim-dit-") as tmp:
        for r in range(args.rounds):
            for kind in (("platform", "single") if r % 2 == 0 else ("single", "platform")):
                if kind == "platform":
                    tp = run_platform(job, workers, Path(tmp), args.warmup, f"r{r}", steps=steps)
                    platform.append(tp.steps_per_s * worker_tokens)
                else:
                    rate = max(single_process_rate(single, args.warmup, steps - 2, t) for t in thread_counts)
                    in_process.append(rate * workers * worker_tokens)
                log(f"round {r} {kind}: {(platform if kind == 'platform' else in_process)[-1]:.0f} tokens/s")
    figures["platform_2w_tokens_per_s"] = max(platform)
    figures["single_process_tokens_per_s"] = max(in_process)
    figures["ratio_vs_single_process"] = max(platform) / max(in_process)


def single_process_rate(spec: DiTSpec, first: int, last: int, threads: int) -> float:
    """Steps/s of the in-process reference between steps first and last (its own per-step clock)."""
    seconds: dict[int, float] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train_in_process(spec, lambda step, loss, _: seconds.__setitem__(step + 1, time.perf_counter()))
    finally:
        torch.set_num_threads(previous)
    return span_rate(seconds, first, last, f"single process ({threads} threads)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the objective comparison")
    p.add_argument("--arch-seeds", type=int, default=1, help="training seeds of the dual/single-stream comparison")
    p.add_argument("--image-steps", type=int, help="training steps (default: examples/dit_image.yaml's)")
    p.add_argument("--video-steps", type=int, help="training steps (default: examples/dit_video.yaml's)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale of every sampler")
    p.add_argument("--samples", type=int, default=300, help="generated samples per scored configuration")
    p.add_argument("--classifier-steps", type=int, default=1000)
    p.add_argument("--video-classifier-steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=3, help="models trained and scored at once, one process each")
    p.add_argument("--throughput-steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="first step of the measured throughput span")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--skip-quality", action="store_true", help="measure throughput only")
    p.add_argument("--skip-throughput", action="store_true", help="measure quality only")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-dit", help="models, classifiers and grids")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    log(f"{args.seeds} seeds, {args.samples} samples per score, guidance {args.guidance}, {args.jobs} processes; "
        f"image model {image_spec(args, 0, 'flow_matching')['model']}, video model {video_spec(args)['model']}")
    figures: dict[str, float] = {}
    paths: list[str] = []
    if not args.skip_quality:
        quality(args, figures, paths)
    if not args.skip_throughput:
        throughput(args, figures)
    print_figures(figures)
    for path in paths:
        log(f"sample: {path}")
    log(f"measured in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
