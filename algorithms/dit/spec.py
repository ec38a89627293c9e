"""The ``train:`` section of a ``dit`` job: data, model, objective, training, sampling and evaluation, each a
pydantic model whose errors name the field, the value and what is allowed.

    train:
      data: {kind: digits}                              # digits | digit_videos | image_folder (with path)
      model: {preset: hydit-t/4, overrides: {depth: 8}}
      objective: {kind: flow_matching}                  # or v_prediction
      training: {steps: 2000, batch_size: 32, lr: 3.0e-4}
      sampling: {sampler: euler, steps: 25, guidance: 4.0, shift: 3.0}
      evaluation: {samples: 500}
      paging: {page_kb: 64}                             # the paged step runtime (as lm.transformer's)
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from seraphim.algorithms.dit.backbone import DiTConfig
from seraphim.algorithms.dit.diffusion import FlowMatching, VPrediction
from seraphim.algorithms.dit.models import model_config
from seraphim.algorithms.transformer.job import PagingSpec

#: which objective each sampler integrates, and the options it passes to that objective's ``sample``
SAMPLERS: dict[str, tuple[str, dict[str, float]]] = {
    "euler": ("flow_matching", {}), "ddim": ("v_prediction", {"eta": 0.0}), "ddpm": ("v_prediction", {"eta": 1.0}),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Section):
    kind: Literal["digits", "digit_videos", "image_folder"] = "digits"
    canvas: int = Field(32, ge=8, description="digits: canvas side in pixels")
    glyph: int = Field(16, ge=4, description="digits: glyph side in pixels (16 on a 32 canvas: one glyph fills a "
                                             "quadrant, 4x4 patches exactly)")
    colours: bool = Field(True, description="digits: RGB glyphs with a colour word; false: one channel, no colour")
    frames: int = Field(8, ge=2, description="digit_videos: frames per clip")
    path: str | None = Field(None, description="image_folder: a folder of images with metadata.jsonl or .csv")
    size: int = Field(32, ge=8, description="image_folder: images are centre-cropped and resized to size x size")
    max_caption_tokens: int = Field(16, ge=2, description="caption tokens, [BOS] included; longer ones are cut")

    @model_validator(mode="after")
    def _path(self) -> "DataSpec":
        if (self.kind == "image_folder") != (self.path is not None):
            raise ValueError(f"data.path is required for kind image_folder and only for it (kind {self.kind!r}, "
                             f"path {self.path!r})")
        return self

    @property
    def channels(self) -> int:
        """1 for one-channel digits and clips, 3 for RGB digits and image folders."""
        return 1 if self.kind == "digit_videos" or (self.kind == "digits" and not self.colours) else 3

    @property
    def axes(self) -> int:
        """2 for images, 3 for clips."""
        return 3 if self.kind == "digit_videos" else 2


class ModelSpec(_Section):
    preset: str = "hydit-t/4"
    overrides: dict[str, Any] = Field(default_factory=dict, description="DiTConfig fields replacing the preset's")
    text_encoder: Literal["trained", "frozen"] = Field(
        "trained", description="the caption encoder trains with the DiT, or stays at its seeded initial weights "
                               "(HunyuanVideo keeps its text encoders frozen; the projection into the DiT still trains)")

    def config(self, data: DataSpec) -> DiTConfig:
        """The preset with the overrides; the caption length and the channels follow the data."""
        return model_config(self.preset, **{"max_text_len": data.max_caption_tokens, "channels": data.channels,
                                            **self.overrides})


class ObjectiveSpec(_Section):
    kind: Literal["flow_matching", "v_prediction"] = "flow_matching"
    logit_mean: float = Field(0.0, description="flow matching: t = sigmoid(N(logit_mean, logit_std))")
    logit_std: float = Field(1.0, gt=0)
    train_shift: float = Field(1.0, gt=0, description="flow matching: time shift applied to training times")
    steps_total: int = Field(1000, ge=2, description="v_prediction: DDPM steps T")
    beta_start: float = Field(0.00085, gt=0, lt=1)
    beta_end: float = Field(0.03, gt=0, lt=1)

    def build(self) -> FlowMatching | VPrediction:
        if self.kind == "flow_matching":
            return FlowMatching(self.logit_mean, self.logit_std, self.train_shift)
        return VPrediction(self.steps_total, self.beta_start, self.beta_end)


class TrainingSpec(_Section):
    steps: int = Field(2000, ge=1, description="optimizer steps of each worker")
    batch_size: int = Field(32, ge=1, description="samples per step on each worker")
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warm-up")
    decay: Literal["constant", "cosine"] = Field("constant", description="after warm-up: constant, or cosine to "
                                                                        "a tenth of lr at the last step")
    weight_decay: float = Field(0.0, ge=0)
    cond_drop: float = Field(0.1, ge=0, lt=1, description="probability of training on the empty caption (CFG)")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_every: int = Field(10, ge=1, description="platform: steps between rank 0's EMA updates from the PS pages")
    seed: int = 0
    log_every: int = Field(10, ge=1, description="steps between reported training losses")

    def lr_scale(self, step: int) -> float:
        """The learning-rate multiplier of a step."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - 1 - self.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class SamplingSpec(_Section):
    sampler: Literal["euler", "ddim", "ddpm"] = "euler"
    steps: int = Field(25, ge=1)
    guidance: float = Field(4.0, ge=0, description="classifier-free guidance scale (1: conditional only)")
    shift: float = Field(1.0, gt=0, description="euler: time shift s of t -> s t / (1 + (s - 1) t)")
    every: int = Field(0, ge=0, description="steps between sample grids during training (0: at the end only)")
    grid: int = Field(16, ge=1, le=256, description="samples in a grid")
    weights: Literal["ema", "trained"] = Field("ema", description="platform: sample rank 0's EMA weights, or the "
                                                                  "PS's trained weights through the paged runtime")
    seed: int = 0

    def options(self) -> dict[str, float]:
        """Keyword arguments of the objective's ``sample`` for this sampler."""
        return {"shift": self.shift} if self.sampler == "euler" else dict(SAMPLERS[self.sampler][1])


class EvaluationSpec(_Section):
    samples: int = Field(0, ge=0, description="generated samples scored by the attribute classifier (0: off)")
    classifier_steps: int = Field(1500, ge=1, description="training steps of the attribute classifier")


class DiTSpec(_Section):
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    paging: PagingSpec = Field(default_factory=lambda: PagingSpec(page_kb=64),
                               description="platform: how the weights and AdamW states move between PS and worker")

    @model_validator(mode="after")
    def _consistent(self) -> "DiTSpec":
        wanted = SAMPLERS[self.sampling.sampler][0]
        if wanted != self.objective.kind:
            allowed = sorted(name for name, (kind, _) in SAMPLERS.items() if kind == self.objective.kind)
            raise ValueError(f"sampling.sampler {self.sampling.sampler!r} integrates {wanted}, not "
                             f"{self.objective.kind}; use one of {allowed}")
        patch = self.model.config(self.data).patch
        if len(patch) != self.data.axes:
            raise ValueError(f"model patch {patch} has {len(patch)} axes but data.kind {self.data.kind!r} has "
                             f"{self.data.axes} (images: (p, p); clips: (p_t, p, p))")
        if self.evaluation.samples and self.data.kind == "image_folder":
            raise ValueError("evaluation.samples needs generated digits data (its classifier checks the captions' "
                             "facts); set it to 0 for an image folder")
        return self
