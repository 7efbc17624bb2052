"""DeLong's variance of the AUC and DeLong's paired test of two AUCs (hand-written: no library has them).

DeLong, DeLong & Clarke-Pearson (1988), computed with the midrank algorithm of Sun & Xu (2014),
"Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves", IEEE Signal Processing Letters 21(11), in O(N log N).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from deepcovid.errors import InputError
from deepcovid.evaluation.inputs import check_inputs, two_sided_z

#: DeLong's variance estimates a covariance within each class: it needs this many samples of each.
MIN_PER_CLASS = 2


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span (Sun & Xu's midranks)."""
    return stats.rankdata(x, method="average")


def _delong_components(y: np.ndarray, score_matrix: np.ndarray):
    """Fast DeLong (Sun & Xu 2014) for ``k`` score vectors (rows of ``score_matrix``).

    Returns ``(aucs, v10, v01)``: AUCs (k,), structural components of the positives (k, m)
    and of the negatives (k, n). ``v10[r, i]`` is the fraction of negatives ranked below positive
    ``i`` (ties count 1/2); ``v01[r, j]`` the fraction of positives ranked above negative ``j``.
    """
    pos = score_matrix[:, y == 1]
    neg = score_matrix[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.vstack([_midrank(row) for row in pos])
    ty = np.vstack([_midrank(row) for row in neg])
    tz = np.vstack([_midrank(row) for row in np.hstack([pos, neg])])
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def _delong_covariance(y: np.ndarray, score_matrix: np.ndarray):
    y_pos = int(y.sum())
    y_neg = y.size - y_pos
    if y_pos < MIN_PER_CLASS or y_neg < MIN_PER_CLASS:
        raise InputError(
            f"DeLong's variance needs at least {MIN_PER_CLASS} samples of each class; got {y_pos} positive, "
            f"{y_neg} negative"
        )
    aucs, v10, v01 = _delong_components(y, score_matrix)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / y_pos + s01 / y_neg


def auc_delong(y_true, scores, alpha: float = 0.05) -> dict:
    """AUC with DeLong's variance and the normal ``1 - alpha`` interval ``auc +/- z sqrt(variance)``,
    clipped to ``[0, 1]``.

    Returns ``{"auc", "variance", "std", "low", "high"}`` as floats.
    """
    y, s = check_inputs(y_true, scores)
    z = two_sided_z(alpha)
    aucs, cov = _delong_covariance(y, s[np.newaxis, :])
    auc, var = float(aucs[0]), float(max(cov[0, 0], 0.0))
    se = math.sqrt(var)
    low, high = max(0.0, auc - z * se), min(1.0, auc + z * se)
    return {"auc": auc, "variance": var, "std": se, "low": float(low), "high": float(high)}


def delong_paired_test(y_true, scores_a, scores_b, alpha: float = 0.05) -> dict:
    """DeLong's two-sided test that two models scored on the same samples have equal AUC.

    ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``. When that variance is 0 (for
    instance identical score vectors) ``z = 0, p = 1`` if the AUCs are equal, otherwise
    ``z = +/-inf, p = 0``. ``low`` / ``high``: the ``1 - alpha`` normal interval of the difference.

    Returns ``{"auc_a", "auc_b", "difference", "low", "high", "z", "p_value", "covariance",
    "variance_a", "variance_b"}``; ``covariance`` is DeLong's covariance of the two AUC estimates.
    """
    y, a = check_inputs(y_true, scores_a, name="scores_a")
    _, b = check_inputs(y, scores_b, name="scores_b")
    half_width_z = two_sided_z(alpha)
    aucs, cov = _delong_covariance(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    scale = max(float(cov[0, 0] + cov[1, 1]), 1e-300)
    if var <= 1e-12 * scale:  # zero up to rounding
        if abs(diff) <= 1e-12:
            z, p = 0.0, 1.0
        else:
            z, p = math.copysign(math.inf, diff), 0.0
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * stats.norm.sf(abs(z)))
    half = half_width_z * math.sqrt(max(var, 0.0))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "low": diff - half,
        "high": diff + half,
        "z": float(z),
        "p_value": float(min(1.0, p)),
        "covariance": float(cov[0, 1]),
        "variance_a": float(cov[0, 0]),
        "variance_b": float(cov[1, 1]),
    }
