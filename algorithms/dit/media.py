"""Samples as files a person opens: PNG grids (a clip's frames side by side, one clip per row), animated GIFs, and
TensorBoard image summaries under ``run_dir/tensorboard/samples`` (beside the metric event files the run reports
write, which they replace; this folder they leave alone).

    grid_png(samples, path)      # samples [n, 3, H, W] or [n, 3, T, H, W] in [-1, 1]
    clips_gif(clips, path)       # the clips as one animated grid
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter

UPSCALE = 4  #: nearest-neighbour enlargement of the saved files: a 32x32 digit is unreadably small at 1:1


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, channels last: [..., 3, H, W] -> [..., H, W, 3]."""
    pixels = np.clip((samples + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(pixels, -3, -1)


def tile(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """images [n, H, W, 3] uint8 into one [rows * (H + pad), columns * (W + pad), 3] mosaic (grey padding)."""
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    out = np.full((rows, columns, h + pad, w + pad, 3), 128, dtype=np.uint8)
    out.reshape(rows * columns, h + pad, w + pad, 3)[:n, :h, :w] = images
    return out.transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), columns * (w + pad), 3)


def grid_image(samples: np.ndarray) -> np.ndarray:
    """A mosaic [H', W', 3] uint8: images in a near-square grid, or clips one per row with their frames across."""
    if samples.ndim == 5:  # (n, 3, T, H, W): frames across
        frames = to_uint8(np.moveaxis(samples, 2, 1))  # (n, T, H, W, 3)
        return tile(frames.reshape(-1, *frames.shape[2:]), frames.shape[1])
    return tile(to_uint8(samples), math.ceil(math.sqrt(len(samples))))


def _enlarged(mosaic: np.ndarray) -> Image.Image:
    image = Image.fromarray(mosaic)
    return image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.Resampling.NEAREST)


def grid_png(samples: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _enlarged(grid_image(samples)).save(path)
    return path


def clips_gif(clips: np.ndarray, path: Path, frame_ms: int = 150) -> Path:
    """clips [n, 3, T, H, W] as one looping GIF whose frame t tiles every clip's frame t."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = math.ceil(math.sqrt(len(clips)))
    frames = [_enlarged(tile(to_uint8(clips[:, :, t]), columns)) for t in range(clips.shape[2])]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path


def log_samples(run_dir: Path, tag: str, samples: np.ndarray, step: int) -> None:
    """The grid (clips: frames across) as a TensorBoard image at this step."""
    with SummaryWriter(str(run_dir / "tensorboard" / "samples")) as writer:
        writer.add_image(tag, grid_image(samples), step, dataformats="HWC")
