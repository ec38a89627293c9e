"""Whole-file writes that readers (and crashes) never see half done: write a temporary name, then rename it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], *, text: bool = False,
                 mode: int = 0o666) -> Path:
    """Call ``write(f)`` on ``<path>.tmp`` (binary, or text with ``newline=""`` when ``text``), then rename it over
    ``path``; ``mode`` is the new file's permission before the umask (``0o600``: readable by its owner only)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with (os.fdopen(fd, "w", newline="") if text else os.fdopen(fd, "wb")) as f:
        write(f)
    tmp.replace(path)
    return path
