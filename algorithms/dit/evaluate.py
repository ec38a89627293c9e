"""A quality measure for generated digits that is not eyeballing: a classifier of every caption fact trained on
real renderings, then (a) how often generated samples show the facts their caption states, (b) the Fréchet
distance between real and generated samples in that classifier's feature space (FID with our own network in place
of Inception, whose weights cannot be fetched offline), and (c) for clips, whether the digit moves as captioned.

The classifier trains on the training glyphs and reports its accuracy on the held-out glyphs; generated samples are
compared with real renderings of held-out glyphs that carry the same captions.

    classifier, heldout = train_classifier(DigitImages(DigitGlyphs.load()), steps=1500)
    report = score_generator(run, run.ema.model, classifier, samples=500)
    report.accuracy["digit"], report.frechet_distance
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seraphim.algorithms.dit.digits import DIRECTION_STEP, SPEED_PIXELS, DigitImages, DigitVideos

FEATURES = 128
CROP = 16  #: side of the window cut around the ink, in pixels: the 14-pixel glyphs fit with a pixel to spare
INK_FLOOR = 0.25  #: colour distance from the background (in [-1, 1] units) below which a pixel is not ink


def register(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Find the digit in frames x [B, C, H, W]: the background is the median colour, ink is the colour distance from
    it above INK_FLOOR. Returns the ink cut out around its centroid [B, 1, CROP, CROP], the centroid [B, 2] (y, x in
    [-1, 1]), the ink-weighted colour [B, C], the background colour [B, C] and the ink mass per pixel [B, 1]."""
    b, _, h, w = x.shape
    background = x.flatten(2).median(dim=2).values  # (B, 3)
    ink = ((x - background[:, :, None, None]).norm(dim=1) - INK_FLOOR).clamp_min(0.0)  # (B, H, W)
    mass = ink.sum(dim=(1, 2)) + 1e-6  # (B,)
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    centroid = torch.stack([(ink * ys[:, None]).sum((1, 2)), (ink * xs[None, :]).sum((1, 2))], 1) / mass[:, None]
    colour = (x * ink[:, None]).sum(dim=(2, 3)) / mass[:, None]  # (B, 3)
    scale = torch.tensor([CROP / w, CROP / h])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale[0], scale[1]
    theta[:, 0, 2], theta[:, 1, 2] = centroid[:, 1], centroid[:, 0]  # affine_grid takes (x, y)
    grid = F.affine_grid(theta, [b, 1, CROP, CROP], align_corners=True)
    crop = F.grid_sample(ink[:, None], grid, align_corners=True, padding_mode="zeros")  # (B, 1, CROP, CROP)
    return crop, centroid, colour, background, (mass / (h * w))[:, None]


class AttributeClassifier(nn.Module):
    """Caption facts from frames [B, 3, H, W] or clips [B, 3, T, H, W]: each frame is registered (:func:`register`),
    a small CNN reads the digit's shape from the ink cut out around it (so the shape reader does not depend on where
    the digit is), and one MLP joins the shape features (averaged over frames), the centroid track, the colours and
    the ink mass into the 128 features that every fact's linear head reads (and the Fréchet distance compares)."""

    def __init__(self, facts: dict[str, int], frames: int = 1, channels: int = 3) -> None:
        super().__init__()
        self.frames = frames
        self.shape_reader = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # (32, 8, 8)
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),  # (64, 4, 4)
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(), nn.Flatten(),  # (1024,)
            nn.Linear(64 * (CROP // 4) ** 2, FEATURES), nn.GELU(),
        )
        joined = FEATURES + 2 * frames + 2 * channels + 1
        self.join = nn.Sequential(nn.Linear(joined, 2 * FEATURES), nn.GELU(), nn.Linear(2 * FEATURES, FEATURES),
                                  nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, n) for name, n in facts.items()})

    def features(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] or [B, C, T, H, W] in [-1, 1] -> [B, 128]."""
        clips = x if x.ndim == 5 else x[:, :, None]
        b, c, t, h, w = clips.shape
        crop, centroid, colour, background, mass = register(clips.transpose(1, 2).reshape(b * t, c, h, w))
        shape = self.shape_reader(crop).reshape(b, t, -1).mean(1)  # (B, F)
        track = centroid.reshape(b, t, 2)
        track = torch.cat([track[:, :1], track[:, 1:] - track[:, :1]], 1) * torch.tensor([h / 2, w / 2])  # pixels
        per_clip = [v.reshape(b, t, -1).mean(1) for v in (colour, background, mass)]  # (B, C), (B, C), (B, 1)
        joined = torch.cat([shape, track.flatten(1) / 4, per_clip[0], per_clip[1], 4 * per_clip[2]], dim=1)
        return self.join(joined)  # (B, F)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


Digits = DigitImages | DigitVideos


def _facts_of(data: Digits, attrs: Any) -> dict[str, np.ndarray]:
    return {name: getattr(attrs, name) for name in data.FACTS}


def classifier_for(data: Digits) -> AttributeClassifier:
    """An untrained classifier with a head per caption fact of the data, sized for its frames and channels."""
    frames = data.frames if isinstance(data, DigitVideos) else 1
    return AttributeClassifier({name: len(words) for name, words in data.FACTS.items()}, frames,
                               data.sample_shape[0])


def train_classifier(data: Digits, steps: int = 1500, batch_size: int = 64, heldout: int = 2000, seed: int = 0,
                     noise_std: float = 0.05) -> tuple[AttributeClassifier, dict[str, float]]:
    """Train on renderings of training glyphs (plus a little pixel noise, so it does not hinge on the exact
    rendering); return the model and its accuracy per fact on renderings of held-out glyphs."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = classifier_for(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        attrs = data.sample_attributes(rng, batch_size, "train")
        x = torch.from_numpy(data.render(attrs))
        x = x + noise_std * torch.randn_like(x)
        logits = model(x)
        loss = sum(F.cross_entropy(logits[name], torch.from_numpy(target))
                   for name, target in _facts_of(data, attrs).items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    attrs = data.sample_attributes(np.random.default_rng(seed + 1), heldout, "heldout")
    return model, fact_accuracy(model, data.render(attrs), _facts_of(data, attrs))


@torch.no_grad()
def predict(model: AttributeClassifier, samples: np.ndarray, batch: int = 256) -> tuple[dict[str, np.ndarray],
                                                                                          np.ndarray]:
    """Predicted index per fact and the features, for samples [n, C, *S]."""
    preds: dict[str, list[np.ndarray]] = {name: [] for name in model.heads}
    feats = []
    for start in range(0, len(samples), batch):
        x = torch.from_numpy(np.ascontiguousarray(samples[start:start + batch]))
        h = model.features(x)
        feats.append(h.numpy())
        for name, head in model.heads.items():
            preds[name].append(head(h).argmax(-1).numpy())
    return {name: np.concatenate(p) for name, p in preds.items()}, np.concatenate(feats).astype(np.float64)


def fact_accuracy(model: AttributeClassifier, samples: np.ndarray, facts: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of samples whose predicted fact equals the stated one, per fact."""
    preds, _ = predict(model, samples)
    return {name: float(np.mean(preds[name] == facts[name])) for name in facts}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians fitted to feature rows a, b."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    if np.iscomplexobj(root):
        root = root.real  # round-off leaves tiny imaginary parts
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def tracked_velocity(clips: np.ndarray) -> np.ndarray:
    """The digit's mean displacement per frame, (dy, dx) [n, 2], from the centroid of each frame's ink: pixels
    weighted by their distance above INK_FLOOR from the clip's background (its median colour)."""
    background = np.median(clips.reshape(*clips.shape[:2], -1), axis=2)[:, :, None, None, None]  # (n, C, 1, 1, 1)
    ink = np.clip(np.linalg.norm(clips - background, axis=1) - INK_FLOOR, 0, None)  # (n, T, H, W)
    h, w = ink.shape[-2:]
    mass = ink.sum(axis=(2, 3)) + 1e-6  # (n, T)
    cy = (ink * np.arange(h)[:, None]).sum(axis=(2, 3)) / mass
    cx = (ink * np.arange(w)[None, :]).sum(axis=(2, 3)) / mass
    return np.stack([_slope(cy), _slope(cx)], axis=1)


def _slope(track: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of track [n, T] against the frame index: displacement per frame."""
    t = np.arange(track.shape[1], dtype=np.float64)
    t -= t.mean()
    return (track * t).sum(1) / (t ** 2).sum()


def motion_consistency(clips: np.ndarray, direction: np.ndarray, speed: np.ndarray) -> dict[str, float]:
    """How the tracked motion matches the caption: the mean error of the displacement per frame (pixels), and the
    fraction of clips whose tracked motion points in the captioned direction (largest-component axis and sign)."""
    stated = (DIRECTION_STEP[direction] * SPEED_PIXELS[speed][:, None]).astype(np.float64)
    tracked = tracked_velocity(clips)
    error = np.linalg.norm(tracked - stated, axis=1)
    axis = np.abs(tracked).argmax(1)
    tracked_dir = np.where(axis == 1, np.where(tracked[:, 1] >= 0, 0, 1), np.where(tracked[:, 0] >= 0, 2, 3))
    return {"motion_error_px_per_frame": float(error.mean()),
            "motion_direction_match": float(np.mean(tracked_dir == direction))}


@dataclass
class GeneratorReport:
    """Scores of one sampler configuration on n generated samples."""

    correct: dict[str, np.ndarray]  # per fact, bool [n]: the classifier read the captioned value
    frechet_distance: float
    samples: np.ndarray  # the generated samples [n, C, *S], for grids
    captions: list[str]
    motion: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, float]:
        return {name: float(c.mean()) for name, c in self.correct.items()}

    def joint_accuracy(self, names: tuple[str, ...]) -> float:
        """Fraction of samples that show every one of the named facts as captioned."""
        return float(np.logical_and.reduce([self.correct[n] for n in names]).mean())

    def figures(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}acc_{name}": v for name, v in self.accuracy.items()}
        out[f"{prefix}acc_all"] = self.joint_accuracy(tuple(self.correct))
        out[f"{prefix}frechet_distance"] = self.frechet_distance
        out.update({f"{prefix}{name}": v for name, v in self.motion.items()})
        return out


def score_generator(data: Digits, generate: Callable[[list[str]], np.ndarray], classifier: AttributeClassifier,
                    samples: int, seed: int = 0, batch: int = 100) -> GeneratorReport:
    """Draw ``samples`` captions from held-out glyphs' attributes, generate one sample each (``generate``: captions ->
    [n, C, *S]) and score them against the captions and against the real renderings of the same attributes."""
    rng = np.random.default_rng(seed)
    attrs = data.sample_attributes(rng, samples, "heldout")
    captions = data.captions(attrs)
    generated = np.concatenate([generate(captions[i:i + batch]) for i in range(0, samples, batch)])
    facts = _facts_of(data, attrs)
    preds, gen_features = predict(classifier, generated)
    _, real_features = predict(classifier, data.render(attrs))
    report = GeneratorReport({name: preds[name] == facts[name] for name in facts},
                             frechet_distance(real_features, gen_features), generated, captions)
    if isinstance(data, DigitVideos):
        report.motion = motion_consistency(generated, attrs.direction, attrs.speed)
    return report
