"""The sweep's two figures, from ``surge.json``'s content: where the extra loss drop is largest, and the best learning
rate against batch size with Surge's fitted curve (eq. 2) and McCandlish's SGD curve (eq. 1).

A bare ``Figure`` renders with Agg and keeps no pyplot state (as ``scheduler/reports.py`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from seraphim.algorithms.lr_scaling import fit_eps_max, lr_curve

_PANEL = (4.6, 3.6)


def _panels(surge: dict[str, dict[str, Any]]) -> tuple[Figure, list[tuple[Axes, str, str, dict[str, Any]]]]:
    """One row per target (highest loss first), one column per arm; the (axes, arm, target, entry) of each entry."""
    arms = list(surge)
    targets = sorted({t for per_target in surge.values() for t in per_target}, key=float, reverse=True)
    fig = Figure(figsize=(_PANEL[0] * len(arms), _PANEL[1] * len(targets)))
    axes = fig.subplots(len(targets), len(arms), squeeze=False)
    panels = []
    for row, target in enumerate(targets):
        for col, arm in enumerate(arms):
            if target in surge[arm]:
                panels.append((axes[row, col], arm, target, surge[arm][target]))
            else:
                axes[row, col].set_visible(False)
    return fig, panels


def plot_heatmaps(surge: dict[str, dict[str, Any]], lrs: dict[str, list[float]], path: Path, extra_steps: int) -> None:
    """Mean extra loss drop over K steps on the (batch, lr) grid; white: some seed never reached the target; the
    circles mark each batch's best learning rate. Negative drops (the loss rose) show as zero."""
    fig, panels = _panels(surge)
    for ax, arm, target, s in panels:
        batches = sorted(s["extra_drop"], key=int)
        grid = np.array([[np.nan if d is None else d for d in s["extra_drop"][b]] for b in batches]).T  # [lr, B]
        image = ax.imshow(np.clip(grid, 0, None), origin="lower", aspect="auto", cmap="viridis",
                          norm=Normalize(0, np.nanmax(grid) if np.isfinite(grid).any() else 1))
        best = [lrs[arm].index(s["best_lr"][b]) if s["best_lr"][b] is not None else np.nan for b in batches]
        ax.plot(range(len(batches)), best, "o", mfc="none", mec="red", ms=7, label="best lr")
        ax.set_xticks(range(len(batches)), batches, rotation=90, fontsize=7)
        ax.set_yticks(range(len(lrs[arm])), [f"{lr:.3g}" for lr in lrs[arm]], fontsize=7)
        ax.set_xlabel("batch size")
        ax.set_ylabel("learning rate")
        ax.set_title(f"{arm}, target loss {target}", fontsize=9)
        fig.colorbar(image, ax=ax, label=f"loss drop in {extra_steps} more steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_best_lr(surge: dict[str, dict[str, Any]], kinds: dict[str, str], path: Path) -> None:
    """Best lr per batch (points; bars: the learning rates it does not beat by two standard errors), the arm's own
    law through them with the fitted B_noise and eq. 23's eps_max (solid), the other law with the same B_noise for
    contrast (dashed), and B_noise (dotted)."""
    fig, panels = _panels(surge)
    for ax, arm, target, s in panels:
        points = {int(b): lr for b, lr in s["best_lr"].items() if lr is not None}
        low, high = (np.array([s["best_lr_band"][str(b)][i] for b in points]) for i in (0, 1))
        best = np.array(list(points.values()))
        ax.errorbar(list(points), best, yerr=[best - low, high - best], fmt="o", color="C0", capsize=3,
                    label="best lr (largest drop), 2-s.e. band")
        title = f"{arm}, target loss {target}"
        if s.get("b_noise") is not None and points:
            b_noise = s["b_noise"]
            grid = np.geomspace(min(points), max(points), 200)
            own = kinds[arm]
            for kind, style in ((own, "-"), ("sgd" if own == "adam" else "adam", "--")):
                eps_max = fit_eps_max(list(points), list(points.values()), b_noise, kind)
                ax.plot(grid, lr_curve(kind, grid, b_noise, eps_max), style, color="C3" if kind == "adam" else "C2",
                        label=("Surge eq. 2" if kind == "adam" else "SGD eq. 1") + f" (eps_max {eps_max:.3g})")
            ax.axvline(b_noise, ls=":", color="0.4", label=f"B_noise {b_noise:.3g}")
            title += f": R² {s['r2']:.2f}"
        elif "fit_error" in s:
            title += ": no eq. 22 fit"
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("learning rate")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
