"""Calibration of the predicted COVID-19 probabilities: reliability table and expected calibration error."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepcovid.evaluation.inputs import check_inputs, check_probabilities


def _bin_edges(prob: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    if strategy == "uniform":  # rounded: a score of exactly 0.3 belongs to [0.3, 0.4), as in the histograms
        return np.round(np.linspace(0.0, 1.0, int(n_bins) + 1), 12)
    if strategy == "quantile":
        edges = np.unique(np.quantile(prob, np.linspace(0.0, 1.0, int(n_bins) + 1)))
        if edges.size == 1:  # every probability identical
            edges = np.array([edges[0], edges[0]])
        return edges
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def reliability_table(y_true, prob, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability (calibration) table: one row per bin, empty bins included (count 0, NaN means).

    ``strategy="uniform"``: ``n_bins`` equal-width bins on ``[0, 1]``; ``"quantile"``: edges at the
    quantiles of ``prob`` (duplicates merged). Bins are ``[bin_low, bin_high)``, the last closed.
    A single class in ``y_true`` is allowed. Columns: ``bin_low, bin_high, count,
    mean_predicted, fraction_positive``.
    """
    y, p = check_inputs(y_true, prob, both_classes=False, name="prob")
    check_probabilities(p)
    edges = _bin_edges(p, n_bins, strategy)
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
    return pd.DataFrame({
        "bin_low": edges[:-1], "bin_high": edges[1:], "count": count.astype(np.int64),
        "mean_predicted": mean_p, "fraction_positive": frac,
    })


def expected_calibration_error(y_true, prob, n_bins: int = 10, strategy: str = "uniform") -> float:
    """``sum_b (n_b / N) |fraction_positive_b - mean_predicted_b|`` over the bins of :func:`reliability_table`."""
    table = reliability_table(y_true, prob, n_bins=n_bins, strategy=strategy)
    used = table[table["count"] > 0]
    weights = used["count"].to_numpy(dtype=np.float64) / used["count"].sum()
    gap = np.abs(used["fraction_positive"].to_numpy() - used["mean_predicted"].to_numpy())
    return float(np.sum(weights * gap))
