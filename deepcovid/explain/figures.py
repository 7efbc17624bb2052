"""The paper's Fig. 14 for one image: the input, the occlusion heatmap, the heatmap over the
image with the lung (and lesion) outline where known, and where hiding a region flips the label.
Deterministic PNG (Agg canvas, no pyplot, no ``Software`` field), as the evaluation figures."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepcovid import files


def grayscale(image: np.ndarray) -> np.ndarray:
    """(C, H, W) normalised input -> (H, W) in 0..1 for display."""
    gray = image.mean(axis=0)
    lo, hi = float(gray.min()), float(gray.max())
    return (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)


def occlusion_figure(
    path: str | os.PathLike,
    image: np.ndarray,
    heatmap: np.ndarray,
    flips: np.ndarray,
    title: str,
    lung: np.ndarray | None = None,
    lesion: np.ndarray | None = None,
    centres: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write the four-panel PNG. ``heatmap``: (H, W) probability drop; ``flips``: the window grid,
    drawn at the window centres ``centres`` (rows, columns) over the image."""
    gray = grayscale(image)
    limit = float(np.abs(heatmap).max()) or 1.0
    fig = Figure(figsize=(13, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input")
    shown = axes[1].imshow(heatmap, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[1].set_title("probability drop when hidden")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(gray, cmap="gray", vmin=0, vmax=1)
    axes[2].imshow(np.clip(heatmap, 0, None), cmap="jet", alpha=0.45, vmin=0, vmax=limit)
    for mask, colour, name in ((lung, "lime", "lungs"), (lesion, "magenta", "lesions")):
        if mask is not None and mask.any():
            axes[2].contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
            axes[2].plot([], [], color=colour, label=name)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(loc="lower right", fontsize=7)
    axes[2].set_title("overlay (positive drop)")
    axes[3].imshow(gray, cmap="gray", vmin=0, vmax=1)
    if centres is not None and flips.any():
        rows, cols = np.meshgrid(*centres, indexing="ij")
        axes[3].scatter(cols[flips], rows[flips], s=6, c="red", marker="s", linewidths=0)
    axes[3].set_title(f"label flips: {int(flips.sum())} of {flips.size} windows")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
