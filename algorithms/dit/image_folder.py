"""A folder of captioned images, in the layout of Hugging Face's ``imagefolder``: the images, and a
``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` per line) or a ``metadata.csv`` (columns ``file_name``
and ``text``) beside them.

Every image is read once (any format Pillow reads), converted to RGB, centre-cropped to a square and resized to
``size`` x ``size``, and kept in memory as uint8. Any unusable row fails the whole load with its line number.

    folder = ImageFolder.open(Path("my_images"), size=32)
    pixels, captions = folder.batch(np.random.default_rng(0), 16)   # [16, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seraphim.algorithms.dit.errors import DiTInputError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
FIELDS = ("file_name", "text")


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata file; a row that is not an object of strings is an error."""
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DiTInputError(f"{path} line {line_no} is not JSON ({exc.msg}); write one object per line with "
                                    f"'file_name' and 'text'") from None
            if not isinstance(row, dict):
                raise DiTInputError(f"{path} line {line_no} is a JSON {type(row).__name__}, not an object with "
                                    f"'file_name' and 'text'")
            rows.append((line_no, row))
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [name for name in FIELDS if name not in (reader.fieldnames or [])]
        if missing:
            raise DiTInputError(f"{path} has columns {reader.fieldnames}; it needs {list(FIELDS)}")
        return [(line_no, row) for line_no, row in enumerate(reader, start=2)]


def _square(image: Image.Image, size: int) -> np.ndarray:
    """Centre crop to a square, resize to size x size (Lanczos), as uint8 [3, size, size]."""
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    square = image.convert("RGB").crop(box).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)


@dataclass(frozen=True)
class ImageFolder:
    pixels: np.ndarray  # uint8 [n, 3, size, size]
    texts: list[str]

    @classmethod
    def open(cls, folder: Path, size: int) -> "ImageFolder":
        if not folder.is_dir():
            raise DiTInputError(f"image folder {folder} does not exist or is not a directory")
        found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
        if len(found) != 1:
            what = "neither" if not found else "both"
            raise DiTInputError(f"image folder {folder} has {what} of {' and '.join(METADATA_FILES)}; give exactly "
                                f"one, with a 'file_name' and a 'text' per image")
        meta = found[0]
        pixels, texts = [], []
        for line_no, row in _rows(meta):
            for name in FIELDS:
                if not isinstance(row.get(name), str) or not row[name].strip():
                    raise DiTInputError(f"{meta} line {line_no}: {name!r} must be a non-empty string, got "
                                        f"{row.get(name)!r}")
            image_path = folder / row["file_name"]
            if not image_path.is_file():
                raise DiTInputError(f"{meta} line {line_no} names {row['file_name']!r}, which is not a file in "
                                    f"{folder}")
            try:
                with Image.open(image_path) as image:
                    pixels.append(_square(image, size))
            except (UnidentifiedImageError, OSError) as exc:
                raise DiTInputError(f"{image_path} (from {meta.name} line {line_no}) cannot be read as an image: "
                                    f"{exc}") from None
            texts.append(row["text"].strip())
        if not pixels:
            raise DiTInputError(f"{meta} lists no images")
        return cls(np.stack(pixels), texts)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape[1:])

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
        """n images drawn uniformly with replacement, [n, 3, size, size] in [-1, 1], and their captions."""
        rows = rng.integers(0, len(self.texts), n)
        return self.pixels[rows].astype(np.float32) / 127.5 - 1.0, [self.texts[r] for r in rows.tolist()]

    def vocabulary(self) -> list[str]:
        return list(self.texts)
