"""The DiT training loop, the same in one process and on the platform: only the :class:`Trainer` it hands each
step's loss to differs (``reference.LocalTrainer``: torch.optim.AdamW; ``job.PagedTrainer``: the paged step
runtime, weights and AdamW states on the PS).

    run = TrainingRun.build(spec)                        # data, tokenizer, model, objective, EMA from a DiTSpec
    run.train(LocalTrainer(run), on_step=lambda step, loss, seconds: ...)
    images = run.sample(run.ema.model, captions)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from seraphim.algorithms.dit.backbone import PatchDiT
from seraphim.algorithms.dit.diffusion import FlowMatching, VPrediction, drop_captions
from seraphim.algorithms.dit.digits import DigitGlyphs, DigitImages, DigitVideos
from seraphim.algorithms.dit.ema import EMA
from seraphim.algorithms.dit.image_folder import ImageFolder
from seraphim.algorithms.dit.models import build_model
from seraphim.algorithms.dit.spec import DataSpec, DiTSpec
from seraphim.algorithms.dit.text import CaptionTokenizer


class CaptionedData(Protocol):
    """Where training pairs come from: generated digits, or a user's image folder."""

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]: ...

    def vocabulary(self) -> list[str]: ...


class Trainer(Protocol):
    """Runs one optimizer step around a loss (``loss()`` builds the graph) and keeps the EMA weights current."""

    def step(self, step: int, loss: Callable[[], Tensor]) -> float: ...


def open_data(spec: DataSpec) -> CaptionedData:
    if spec.kind == "digits":
        return DigitImages(DigitGlyphs.load(spec.glyph), spec.canvas, spec.colours)
    if spec.kind == "digit_videos":
        return DigitVideos(DigitGlyphs.load(spec.glyph), spec.canvas, spec.frames)
    return ImageFolder.open(Path(spec.path or ""), spec.size)


#: called after every step with (step, training loss, seconds the step took)
StepCallback = Callable[[int, float, float], None]


@dataclass
class TrainingRun:
    """Everything one worker (or the single process) trains with; built the same way everywhere from the spec."""

    spec: DiTSpec
    data: CaptionedData
    tokenizer: CaptionTokenizer
    model: PatchDiT
    objective: FlowMatching | VPrediction
    ema: EMA | None  # None on a platform worker that does not sample (only rank 0 keeps it)
    rank: int = 0

    @classmethod
    def build(cls, spec: DiTSpec, rank: int = 0, device: str = "cpu", ema: bool = True) -> "TrainingRun":
        """Every rank builds identical initial weights (seeded by training.seed); data draws differ by rank. On
        device "meta" the model has shapes only (its weights live on the PS) and no EMA."""
        data = open_data(spec.data)
        tokenizer = CaptionTokenizer.from_captions(data.vocabulary(), spec.data.max_caption_tokens)
        torch.manual_seed(spec.training.seed)
        model = build_model(spec.model.config(spec.data), tokenizer.vocab_size, device)
        if spec.model.text_encoder == "frozen":
            model.cond.text.requires_grad_(False)
        keep_ema = ema and device != "meta"
        return cls(spec, data, tokenizer, model, spec.objective.build(),
                   EMA(model, spec.training.ema_decay) if keep_ema else None, rank)

    @property
    def null_ids(self) -> Tensor:
        """The empty caption, [1, L]."""
        return self.tokenizer.encode([""])

    @property
    def tokens_per_sample(self) -> int:
        """Patch tokens of one image or clip (caption tokens not counted)."""
        return math.prod(s // p for s, p in zip(self.data.sample_shape[1:], self.model.config.patch))

    def train(self, trainer: Trainer, start_step: int = 0, on_step: StepCallback | None = None) -> float:
        """Steps start_step .. training.steps - 1; returns the mean loss of the last 10% of them."""
        t = self.spec.training
        rng = np.random.default_rng([t.seed, self.rank, start_step])
        generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        null = self.null_ids
        self.model.train()
        losses: list[float] = []
        for step in range(start_step, t.steps):
            started = time.perf_counter()
            pixels, captions = self.data.batch(rng, t.batch_size)
            ids = drop_captions(self.tokenizer.encode(captions), null, t.cond_drop, generator)
            x0 = torch.from_numpy(pixels)
            losses.append(trainer.step(step, lambda: self.objective.loss(self.model, x0, ids, generator)))
            if on_step is not None:
                on_step(step, losses[-1], time.perf_counter() - started)
        tail = losses[-max(1, len(losses) // 10):]
        return float(np.mean(tail)) if tail else float("nan")

    @torch.no_grad()
    def sample(self, model: PatchDiT, captions: list[str], seed: int = 0, steps: int | None = None,
               guidance: float | None = None, **options: float) -> np.ndarray:
        """Generate one sample per caption with the spec's sampler (arguments override it): [n, C, *S] in [-1, 1]."""
        s = self.spec.sampling
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(captions), *self.data.sample_shape), generator=generator)
        was_training = model.training
        model.eval()
        try:
            out = self.objective.sample(model, noise, self.tokenizer.encode(captions), self.null_ids,
                                        steps or s.steps, s.guidance if guidance is None else guidance,
                                        **{**s.options(), **options}, **self._generator_option(generator))
        finally:
            model.train(was_training)
        return out.clamp(-1, 1).numpy()

    def _generator_option(self, generator: torch.Generator) -> dict[str, torch.Generator]:
        """The ancestral DDPM sampler draws noise at every step: from the sample's generator."""
        return {"generator": generator} if isinstance(self.objective, VPrediction) else {}
