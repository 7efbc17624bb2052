"""Calibration of the predicted COVID-19 probabilities: reliability table and expected calibration error."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepcovid.errors import InputError
from deepcovid.evaluation.inputs import check_inputs, check_probabilities


def _bin_edges(n_bins: int) -> np.ndarray:
    """``n_bins`` equal-width bins on [0, 1], edges rounded: a score of exactly 0.3 belongs to
    [0.3, 0.4), as in the score histograms."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise InputError(f"n_bins must be a positive integer, got {n_bins}")
    return np.round(np.linspace(0.0, 1.0, int(n_bins) + 1), 12)


def reliability_table(y_true, prob, n_bins: int = 10) -> pd.DataFrame:
    """Reliability (calibration) table: one row per bin, empty bins included (count 0, NaN means).

    ``n_bins`` equal-width bins on ``[0, 1]``, each ``[bin_low, bin_high)``, the last closed.
    A single class in ``y_true`` is allowed. Columns: ``bin_low, bin_high, count,
    mean_predicted, fraction_positive``.
    """
    y, p = check_inputs(y_true, prob, both_classes=False, name="prob")
    check_probabilities(p)
    edges = _bin_edges(n_bins)
    nb = edges.size - 1
    # Not sklearn's calibration_curve: it puts a score on an edge in the lower bin (ours: upper, as the
    # score histograms) and returns neither the counts nor the empty bins that the ECE and calibration.csv need.
    ids = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, nb - 1)
    count = np.bincount(ids, minlength=nb)
    sum_p = np.bincount(ids, weights=p, minlength=nb)
    sum_y = np.bincount(ids, weights=y.astype(np.float64), minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": count.astype(np.int64),
            "mean_predicted": mean_p,
            "fraction_positive": frac,
        }
    )


def expected_calibration_error(y_true, prob, n_bins: int = 10) -> float:
    """``sum_b (n_b / N) |fraction_positive_b - mean_predicted_b|`` over the bins of :func:`reliability_table`."""
    table = reliability_table(y_true, prob, n_bins=n_bins)
    used = table[table["count"] > 0]
    weights = used["count"].to_numpy(dtype=np.float64) / used["count"].sum()
    gap = np.abs(used["fraction_positive"].to_numpy() - used["mean_predicted"].to_numpy())
    return float(np.sum(weights * gap))
