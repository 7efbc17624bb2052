"""The tables written to plots/*.csv (rendered by ``dvc plots show``): ROC, PR, confusion rows,
score histograms per group, calibration bins. Every value finite."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepcovid.evaluation.calibration import reliability_table
from deepcovid.evaluation.labels import CLASS_NAMES, column_name, group_order
from deepcovid.evaluation.ranking import pr_curve, roc_curve_finite


def roc_frame(y, s) -> pd.DataFrame:
    fpr, tpr, thr = roc_curve_finite(y, s)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def pr_frame(y, s) -> pd.DataFrame:
    """Precision-recall points; the last point (recall 0, precision 1) gets a threshold above every score."""
    precision, recall, thr = pr_curve(y, s)
    top = float(np.max(s))
    last = 1.0 if top < 1.0 else float(np.nextafter(1.0, 2.0))
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": np.append(thr, last)})


def confusion_frame(y, s, threshold: float, image_ids) -> pd.DataFrame:
    """One row per image: actual and predicted class names (DVC's ``confusion`` template)."""
    y = np.asarray(y)
    pred = (np.asarray(s) >= threshold).astype(int)
    return pd.DataFrame(
        {
            "image_id": list(image_ids),
            "actual": [CLASS_NAMES[int(v)] for v in y],
            "predicted": [CLASS_NAMES[int(v)] for v in pred],
        }
    )


def score_histogram(scores, groups, bins: int) -> pd.DataFrame:
    """Counts of scores per group in ``bins`` equal bins on [0, 1] (last bin closed), wide format.

    Columns: ``bin_low, bin_high, score`` (the bin centre) and one count column per group
    (``covid, normal, other_disease`` always present, zero when a group is absent).
    """
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)  # 0.15, not 0.15000000000000002
    s, g = np.asarray(scores, dtype=float), np.asarray(groups)
    centre = np.round((edges[:-1] + edges[1:]) / 2.0, 12)
    frame = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "score": centre})
    for group in group_order(g):
        counts, _ = np.histogram(s[g == group], bins=edges)
        frame[column_name(group)] = counts.astype(np.int64)
    return frame


def calibration_frame(y, s, bins: int) -> pd.DataFrame:
    """Non-empty bins of the reliability table, plus ``perfect`` (= mean_predicted, the diagonal)."""
    table = reliability_table(y, s, n_bins=bins)
    table = table[table["count"] > 0].reset_index(drop=True)
    table["perfect"] = table["mean_predicted"]
    return table
