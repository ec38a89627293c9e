"""Captioned images and short videos made from scikit-learn's handwritten digits, so that every caption word is a
fact about the pixels that a classifier can check.

Images: a digit glyph (the 8x8 scan upsampled, thin or dilated thick) in one quadrant of the canvas, with a few
pixels of jitter, coloured red, green or blue on a dark or light background:
``"a thick red 3 in the top left on a dark background"``. Videos (one channel: a light glyph on a dark ground, so a
video token carries a third of the values an RGB one would): the glyph moving left, right, up or down at 1 or 2
pixels per frame: ``"a 7 moving up quickly"``. Glyphs are split once (seeded) into a
training and a held-out set, so the evaluation classifier is tested on handwriting it has not seen.

Everything is drawn from a ``numpy.random.Generator``: the same seed gives the same attributes, captions and pixels.

    digits = DigitGlyphs.load()
    images = DigitImages(digits)
    attrs = images.sample_attributes(np.random.default_rng(0), 64, split="train")
    pixels, captions = images.render(attrs), images.captions(attrs)   # [64, 3, 32, 32] in [-1, 1], 64 strings
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from seraphim.algorithms.dit.errors import DiTInputError

Split = Literal["train", "heldout"]

POSITIONS = ("top left", "top right", "bottom left", "bottom right")
COLOURS = ("red", "green", "blue")
COLOUR_RGB = np.array([[0.92, 0.16, 0.12], [0.12, 0.78, 0.22], [0.18, 0.36, 0.98]], dtype=np.float32)
BACKGROUNDS = ("dark", "light")
BACKGROUND_RGB = np.array([[0.08, 0.08, 0.1], [0.9, 0.9, 0.86]], dtype=np.float32)
THICKNESS = ("thin", "thick")
DIRECTIONS = ("right", "left", "down", "up")
#: (dy, dx) per frame of each direction at speed 1, in image coordinates (y grows downwards)
DIRECTION_STEP = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]], dtype=np.int64)
SPEEDS = ("slowly", "quickly")
SPEED_PIXELS = np.array([1, 2], dtype=np.int64)
GREY = np.array([0.08, 0.95], dtype=np.float32)  #: dark and light intensity of one-channel images and clips
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class DigitGlyphs:
    """Every scikit-learn digit as an alpha mask of ``size`` x ``size`` pixels, thin and thick, with its class and
    its split (a fixed, seeded fifth of the scans is held out)."""

    alpha: np.ndarray  # float32 [2 (thin, thick), n, size, size] in [0, 1]
    digit: np.ndarray  # int64 [n]
    heldout: np.ndarray  # bool [n]

    @classmethod
    def load(cls, size: int = 14, split_seed: int = 0) -> "DigitGlyphs":
        scans = load_digits()
        raw = torch.from_numpy(scans.images.astype(np.float32) / 16.0)[:, None]  # (n, 1, 8, 8)
        thin = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)  # (n, 1, s, s)
        thick = F.max_pool2d(thin, kernel_size=3, stride=1, padding=1)  # grey dilation by a 3x3 square
        alpha = torch.stack([thin[:, 0], thick[:, 0]]).clamp(0, 1).numpy()
        n = len(scans.target)
        heldout = np.zeros(n, dtype=bool)
        heldout[np.random.default_rng(split_seed).permutation(n)[: round(HELDOUT_FRACTION * n)]] = True
        return cls(alpha, scans.target.astype(np.int64), heldout)

    @property
    def size(self) -> int:
        return self.alpha.shape[-1]

    @cached_property
    def _indices(self) -> dict[str, np.ndarray]:
        return {"train": np.flatnonzero(~self.heldout), "heldout": np.flatnonzero(self.heldout)}

    def draw(self, rng: np.random.Generator, n: int, split: Split) -> np.ndarray:
        """n glyph indices drawn uniformly from a split."""
        return rng.choice(self._split(split), size=n)

    def draw_of_class(self, rng: np.random.Generator, digit: np.ndarray, split: Split) -> np.ndarray:
        """For each requested class in digit [B], a glyph index of that class drawn uniformly from the split."""
        pool = self._split(split)
        pool = pool[np.argsort(self.digit[pool], kind="stable")]  # grouped by class
        counts = np.bincount(self.digit[pool], minlength=10)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return pool[first[digit] + (rng.random(len(digit)) * counts[digit]).astype(np.int64)]

    def _split(self, split: Split) -> np.ndarray:
        if split not in self._indices:
            raise DiTInputError(f"split must be one of {sorted(self._indices)}, got {split!r}")
        return self._indices[split]


def place(alpha: np.ndarray, top: np.ndarray, left: np.ndarray, canvas: int) -> np.ndarray:
    """Paste alpha masks [B, g, g] at (top, left) [B] on empty canvases: [B, canvas, canvas]."""
    b, g = alpha.shape[0], alpha.shape[-1]
    if b and (top.min() < 0 or left.min() < 0 or max(top.max(), left.max()) + g > canvas):
        raise DiTInputError(f"place: a {g}-pixel glyph at rows {top.min()}..{top.max()}, columns "
                            f"{left.min()}..{left.max()} does not fit a {canvas}-pixel canvas")
    out = np.zeros((b, canvas, canvas), dtype=np.float32)
    span = np.arange(g)
    rows = (top[:, None] + span)[:, :, None]  # (B, g, 1)
    cols = (left[:, None] + span)[:, None, :]  # (B, 1, g)
    out[np.arange(b)[:, None, None], rows, cols] = alpha
    return out


def colourise(alpha: np.ndarray, colour: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Blend: alpha [B, *S] of colour index [B] over background index [B] -> [B, 3, *S] in [-1, 1]."""
    extra = (None,) * (alpha.ndim - 1)
    fg = COLOUR_RGB[colour][(slice(None), slice(None), *extra)]  # (B, 3, 1, ...)
    bg = BACKGROUND_RGB[background][(slice(None), slice(None), *extra)]
    a = alpha[:, None]  # (B, 1, *S)
    return (2.0 * (bg * (1.0 - a) + fg * a) - 1.0).astype(np.float32)


def _words(table: tuple[str, ...], index: np.ndarray) -> np.ndarray:
    return np.asarray(table, dtype=object)[index]


@dataclass(frozen=True)
class ImageAttributes:
    """One row per image; every field int64 [B]."""

    glyph: np.ndarray
    digit: np.ndarray
    position: np.ndarray  # index into POSITIONS
    colour: np.ndarray  # index into COLOURS
    background: np.ndarray  # index into BACKGROUNDS
    thickness: np.ndarray  # index into THICKNESS
    jitter_y: np.ndarray  # pixels inside the quadrant
    jitter_x: np.ndarray

    def __len__(self) -> int:
        return len(self.glyph)


class DigitImages:
    """Captioned images: one glyph per canvas, in a quadrant, coloured (or, with ``colours=False``, one channel: ink
    light on the dark background and dark on the light one, and no colour word); see the module docstring."""

    #: the attributes a caption states, each with its vocabulary, in the order the evaluation reports them
    FACTS = {"digit": tuple(str(d) for d in range(10)), "position": POSITIONS, "colour": COLOURS,
             "background": BACKGROUNDS, "thickness": THICKNESS}

    def __init__(self, glyphs: DigitGlyphs, canvas: int = 32, colours: bool = True) -> None:
        self.glyphs, self.canvas, self.colours = glyphs, canvas, colours
        if not colours:
            self.FACTS = {k: v for k, v in DigitImages.FACTS.items() if k != "colour"}
        self.quadrant = canvas // 2
        if self.quadrant < glyphs.size:
            raise DiTInputError(f"DigitImages: a {canvas}-pixel canvas has {self.quadrant}-pixel quadrants, smaller "
                                f"than the {glyphs.size}-pixel glyphs; use canvas >= {2 * glyphs.size}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return 3 if self.colours else 1, self.canvas, self.canvas

    def sample_attributes(self, rng: np.random.Generator, n: int, split: Split = "train") -> ImageAttributes:
        glyph = self.glyphs.draw(rng, n, split)
        slack = self.quadrant - self.glyphs.size + 1
        return ImageAttributes(glyph=glyph, digit=self.glyphs.digit[glyph], position=rng.integers(0, 4, n),
                               colour=rng.integers(0, len(COLOURS), n), background=rng.integers(0, 2, n),
                               thickness=rng.integers(0, 2, n), jitter_y=rng.integers(0, slack, n),
                               jitter_x=rng.integers(0, slack, n))

    def with_facts(self, rng: np.random.Generator, facts: dict[str, np.ndarray],
                   split: Split = "train") -> ImageAttributes:
        """Attributes whose caption facts are given (a digit, position, ... per row); glyph and jitter drawn."""
        n = len(next(iter(facts.values())))
        drawn = self.sample_attributes(rng, n, split)
        values = {f.name: getattr(drawn, f.name) for f in fields(drawn)}
        if "digit" in facts:
            values["glyph"] = self.glyphs.draw_of_class(rng, facts["digit"], split)
        values.update(facts)
        return ImageAttributes(**values)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
        """n training images [n, 3, canvas, canvas] in [-1, 1] and their captions."""
        a = self.sample_attributes(rng, n, "train")
        return self.render(a), self.captions(a)

    def render(self, a: ImageAttributes) -> np.ndarray:
        """[B, C, canvas, canvas] float32 in [-1, 1] (C: 3, or 1 without colours)."""
        top = (a.position // 2) * self.quadrant + a.jitter_y
        left = (a.position % 2) * self.quadrant + a.jitter_x
        alpha = place(self.glyphs.alpha[a.thickness, a.glyph], top, left, self.canvas)
        if not self.colours:
            ground = GREY[a.background][:, None, None]  # dark: light ink; light: dark ink
            ink = GREY[1 - a.background][:, None, None]
            return (2.0 * (ground + (ink - ground) * alpha) - 1.0)[:, None].astype(np.float32)
        return colourise(alpha, a.colour, a.background)

    def captions(self, a: ImageAttributes) -> list[str]:
        colour = (_words(COLOURS, a.colour), " ") if self.colours else ()
        words = ("a ", _words(THICKNESS, a.thickness), " ", *colour, a.digit.astype(str),
                 " in the ", _words(POSITIONS, a.position), " on a ", _words(BACKGROUNDS, a.background),
                 " background")
        return list(_concat(words, len(a)))

    def vocabulary(self) -> list[str]:
        """Every caption word, for the tokenizer."""
        return self.captions(self._every_fact())

    def _every_fact(self) -> ImageAttributes:
        n = 10
        index = np.arange(n)
        return ImageAttributes(glyph=index, digit=index, position=index % 4, colour=index % 3,
                               background=index % 2, thickness=(index // 2) % 2, jitter_y=index * 0,
                               jitter_x=index * 0)


@dataclass(frozen=True)
class VideoAttributes:
    """One row per clip; every field int64 [B]."""

    glyph: np.ndarray
    digit: np.ndarray
    direction: np.ndarray  # index into DIRECTIONS
    speed: np.ndarray  # index into SPEEDS
    start_y: np.ndarray  # glyph's top-left at frame 0
    start_x: np.ndarray

    def __len__(self) -> int:
        return len(self.glyph)

    @property
    def velocity(self) -> np.ndarray:
        """(dy, dx) pixels per frame: [B, 2]."""
        return DIRECTION_STEP[self.direction] * SPEED_PIXELS[self.speed][:, None]


class DigitVideos:
    """Captioned one-channel clips of a thin glyph moving in a straight line; see the module docstring."""

    FACTS = {"digit": tuple(str(d) for d in range(10)), "direction": DIRECTIONS, "speed": SPEEDS}

    def __init__(self, glyphs: DigitGlyphs, canvas: int = 32, frames: int = 8) -> None:
        self.glyphs, self.canvas, self.frames = glyphs, canvas, frames
        travel = (frames - 1) * int(SPEED_PIXELS.max())
        if glyphs.size + travel > canvas:
            raise DiTInputError(f"DigitVideos: a {glyphs.size}-pixel glyph moving {travel} pixels over {frames} "
                                f"frames needs a canvas of at least {glyphs.size + travel} pixels, got {canvas}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return 1, self.frames, self.canvas, self.canvas

    def sample_attributes(self, rng: np.random.Generator, n: int, split: Split = "train") -> VideoAttributes:
        glyph = self.glyphs.draw(rng, n, split)
        return self._placed(rng, glyph, rng.integers(0, 4, n), rng.integers(0, 2, n))

    def with_facts(self, rng: np.random.Generator, facts: dict[str, np.ndarray],
                   split: Split = "train") -> VideoAttributes:
        """Clips whose caption facts (digit, direction, speed) are given; glyph and start drawn."""
        glyph = self.glyphs.draw_of_class(rng, facts["digit"], split)
        direction = facts.get("direction", rng.integers(0, 4, len(glyph)))
        return self._placed(rng, glyph, direction, facts.get("speed", rng.integers(0, 2, len(glyph))))

    def _placed(self, rng: np.random.Generator, glyph: np.ndarray, direction: np.ndarray,
                speed: np.ndarray) -> VideoAttributes:
        """A start drawn uniformly among those that keep the whole path on the canvas."""
        step = DIRECTION_STEP[direction] * SPEED_PIXELS[speed][:, None]  # (B, 2)
        travel = step * (self.frames - 1)
        low = np.maximum(0, -travel)  # (B, 2)
        high = self.canvas - self.glyphs.size - np.maximum(0, travel)
        start = low + (rng.random(low.shape) * (high - low + 1)).astype(np.int64)
        return VideoAttributes(glyph=glyph, digit=self.glyphs.digit[glyph], direction=np.asarray(direction),
                               speed=np.asarray(speed), start_y=start[:, 0], start_x=start[:, 1])

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
        """n training clips [n, 3, frames, canvas, canvas] in [-1, 1] and their captions."""
        a = self.sample_attributes(rng, n, "train")
        return self.render(a), self.captions(a)

    def render(self, a: VideoAttributes) -> np.ndarray:
        """[B, 1, frames, canvas, canvas] float32 in [-1, 1]."""
        b, t = len(a), self.frames
        frame = np.arange(t)
        top = (a.start_y[:, None] + a.velocity[:, None, 0] * frame).reshape(-1)  # (B*T,)
        left = (a.start_x[:, None] + a.velocity[:, None, 1] * frame).reshape(-1)
        alpha = place(np.repeat(self.glyphs.alpha[0, a.glyph], t, axis=0), top, left, self.canvas)
        alpha = alpha.reshape(b, t, self.canvas, self.canvas)
        background, glyph = GREY
        return (2.0 * (background + (glyph - background) * alpha[:, None]) - 1.0).astype(np.float32)

    def captions(self, a: VideoAttributes) -> list[str]:
        words = ("a ", a.digit.astype(str), " moving ", _words(DIRECTIONS, a.direction), " ",
                 _words(SPEEDS, a.speed))
        return list(_concat(words, len(a)))

    def vocabulary(self) -> list[str]:
        index = np.arange(10)
        return self.captions(VideoAttributes(glyph=index, digit=index, direction=index % 4,
                                             speed=index % 2, start_y=index * 0, start_x=index * 0))


def _concat(parts: tuple, n: int) -> np.ndarray:
    """Element-wise concatenation of strings and string arrays into n captions."""
    out = np.full(n, "", dtype=object)
    for part in parts:
        out = out + (part if isinstance(part, str) else np.asarray(part, dtype=object))
    return out
