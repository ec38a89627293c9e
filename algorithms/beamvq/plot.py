"""Forecasts drawn against the truth: one figure per run, rows truth / forecast / error, columns lead frames.

    plot_forecast(truth, forecast, "velocity", run_dir / "forecast.png", title="simvp + BeamVQ")

The field shown is the one a reader of the layout looks at: the vorticity of a velocity field, the height of a
shallow-water state, the vorticity channel itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from seraphim.algorithms.beamvq.physics import velocity, vorticity
from seraphim.proto.atomic_file import atomic_write

SHOWN = {"velocity": "vorticity", "vorticity": "vorticity", "shallow_water": "height h"}


def shown_field(fields: torch.Tensor, layout: str) -> np.ndarray:
    """``[T, C, H, W]`` -> ``[T, H, W]``: the field :data:`SHOWN` names."""
    if layout == "shallow_water":
        return fields[:, 0].numpy()
    return vorticity(*velocity(fields.to(torch.float64), layout)).numpy()


def plot_forecast(truth: torch.Tensor, forecast: torch.Tensor, layout: str, path: Path, title: str = "",
                  max_frames: int = 8) -> Path:
    """Truth and forecast ``[T, C, H, W]`` (physical units) of one test window, side by side per lead frame."""
    true, pred = shown_field(truth, layout), shown_field(forecast, layout)
    frames = min(len(true), max_frames)
    lo, hi = float(np.min(true)), float(np.max(true))
    err = float(np.max(np.abs(pred - true)))
    fig = Figure(figsize=(1.6 * frames + 0.8, 5.2))
    axes = fig.subplots(3, frames, squeeze=False)
    for t in range(frames):
        for row, (image, cmap, vmin, vmax) in enumerate(((true[t], "RdBu_r", lo, hi), (pred[t], "RdBu_r", lo, hi),
                                                         (pred[t] - true[t], "PuOr", -err, err))):
            ax = axes[row, t]
            ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, t].set_title(f"lead {t + 1}", fontsize=8)
    for row, name in enumerate(("truth", "forecast", "error")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"{title}  ({SHOWN[layout]})".strip(), fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
