"""The segment stage's figure: held-out images with the reference and the predicted lung outline."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mask_figure(images, masks, refs: dict, scores, judged, path: Path, count: int = 8) -> None:
    """Up to ``count`` held-out images spread over the range of their Dice (worst to best), the
    reference outline in green, the predicted one in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = judged[np.argsort(scores[judged], kind="stable")]
    chosen = (
        order[np.unique(np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int))]
        if len(order)
        else []
    )
    cols = max(1, min(4, len(chosen)))
    rows = max(1, -(-len(chosen) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), chosen):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.contour(refs[int(i)], levels=[0.5], colors="lime", linewidths=0.8)
        ax.contour(masks[i], levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"Dice {scores[i]:.3f}", fontsize=8)
    if not len(chosen):
        axes[0, 0].text(0.5, 0.5, "no held-out image with a reference mask", ha="center", va="center")
    fig.suptitle("Lung masks on held-out patients: reference (green), segmenter (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
