"""Evaluation metrics for a binary COVID / non-COVID classifier.

Pure functions on 1-D arrays, in the style of :mod:`sklearn.metrics`.

Conventions used throughout
---------------------------
- ``y_true`` holds labels in ``{0, 1}`` (``1`` = COVID-19). Booleans and the floats
  ``0.0`` / ``1.0`` are accepted.
- ``scores`` holds the predicted COVID score, normally a probability in ``[0, 1]``; any finite
  real score works wherever a probability is not required (calibration needs ``[0, 1]``).
- A sample is **predicted positive iff** ``score >= threshold``.
- sensitivity = TP / (TP + FN) = TP / n_pos; specificity = TN / (TN + FP) = TN / n_neg.

What comes from where
---------------------
- ROC, precision-recall, AUC and average precision: :mod:`sklearn.metrics`.
- Wilson, Clopper-Pearson and Jeffreys intervals:
  :func:`statsmodels.stats.proportion.proportion_confint`.
- The paper's interval (Minaee et al. 2020, Eq. 3): ``p +/- z * sqrt(p (1 - p) / N)`` with
  ``z = 1.96``; written here because the paper reports it unclipped (it can exceed 1).
- DeLong's variance of the AUC and the paired DeLong test: hand-written, using the fast
  midrank algorithm of Sun & Xu (2014), "Fast implementation of DeLong's algorithm for
  comparing the areas under correlated receiver operating characteristic curves",
  IEEE Signal Processing Letters 21(11).

Inputs are validated: mismatched lengths, labels outside ``{0, 1}``, a single class where two
are needed, and NaN / infinite scores raise :class:`ValueError` with a message saying which.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "PAPER_Z",
    "confusion_at_threshold",
    "sensitivity_specificity",
    "proportion_ci",
    "paper_radius",
    "threshold_table",
    "threshold_for_sensitivity",
    "roc_curve_finite",
    "pr_curve",
    "auc_delong",
    "delong_paired_test",
    "auc_bootstrap",
    "paired_bootstrap_auc",
    "average_precision",
    "reliability_table",
    "expected_calibration_error",
    "summarize",
]

#: Two-sided 95% standard-normal quantile, ``scipy.stats.norm.ppf(0.975)``. The paper writes
#: 1.96; both give a radius of 0.0274 (to 4 decimals) for p = 0.98, N = 100.
PAPER_Z = 1.959963984540054

_CI_METHODS = {
    "wilson": "wilson",
    "clopper-pearson": "beta",
    "exact": "beta",
    "beta": "beta",
    "jeffreys": "jeffreys",
}
_PAPER_METHODS = ("paper", "paper-clipped")


# --------------------------------------------------------------------------- validation


def _as_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def _check_labels(y_true) -> np.ndarray:
    y = _as_1d(y_true, "y_true")
    if y.size == 0:
        raise ValueError("y_true is empty")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"y_true must be numeric labels in {{0, 1}}, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise ValueError("y_true contains NaN")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        found = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"y_true must contain only labels 0 and 1 (1 = COVID); found {found}")
    return y.astype(np.int64)


def _check_scores(scores, name: str = "scores") -> np.ndarray:
    s = _as_1d(scores, name)
    if s.dtype == bool or not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"{name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(s).sum())} values)")
    if np.isinf(s).any():
        raise ValueError(f"{name} contains infinite values")
    return s


def _check_inputs(y_true, scores, *, both_classes: bool = True, name: str = "scores"):
    y = _check_labels(y_true)
    s = _check_scores(scores, name)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"y_true and {name} have different lengths ({y.shape[0]} != {s.shape[0]})")
    if both_classes:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.shape[0]:
            only = "1 (COVID)" if n_pos else "0 (non-COVID)"
            raise ValueError(f"only one class present in y_true (all labels are {only}); need both 0 and 1")
    return y, s


def _check_probabilities(prob, name: str = "prob") -> None:
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(f"{name} must be probabilities in [0, 1]; found range [{prob.min()}, {prob.max()}]")


def _check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a real number, got {threshold!r}") from None
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    return t


def _check_alpha(alpha) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return a


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


# --------------------------------------------------------------------------- counts


def confusion_at_threshold(y_true, scores, threshold) -> dict:
    """Confusion counts when predicting COVID iff ``score >= threshold``.

    A single class in ``y_true`` is allowed here (the missing cells are 0).

    Returns
    -------
    dict
        ``{"tp", "fn", "tn", "fp"}`` as Python ints.
    """
    y, s = _check_inputs(y_true, scores, both_classes=False)
    t = _check_threshold(threshold)
    pred = s >= t
    pos = y == 1
    return {
        "tp": int(np.sum(pred & pos)),
        "fn": int(np.sum(~pred & pos)),
        "tn": int(np.sum(~pred & ~pos)),
        "fp": int(np.sum(pred & ~pos)),
    }


def sensitivity_specificity(y_true, scores, threshold) -> tuple[float, float]:
    """``(sensitivity, specificity)`` at ``threshold`` (predicted positive iff score >= threshold)."""
    y, s = _check_inputs(y_true, scores)
    c = confusion_at_threshold(y, s, threshold)
    return c["tp"] / (c["tp"] + c["fn"]), c["tn"] / (c["tn"] + c["fp"])


def _counts_at(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vectorised (tp, fn, tn, fp) at many thresholds."""
    pos = np.sort(s[y == 1])
    neg = np.sort(s[y == 0])
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")  # count of pos >= t
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    return tp, pos.size - tp, neg.size - fp, fp


# --------------------------------------------------------------------------- intervals


def paper_radius(p: float, n: int, z: float = PAPER_Z) -> float:
    """Radius of the paper's normal-approximation interval (Minaee et al. 2020, Eq. 3).

    ``r = z * sqrt(p (1 - p) / n)``. The paper writes ``z = 1.96``; the default here is the
    exact 97.5% normal quantile 1.959963984540054 (``scipy.stats.norm.ppf(0.975)``). Both give
    ``r = 0.0274`` (to 4 decimals) for ``p = 0.98, n = 100``; pass ``z=1.96`` for the paper's
    literal constant.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a proportion in [0, 1], got {p}")
    if int(n) != n or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n}")
    return float(z) * math.sqrt(p * (1.0 - p) / int(n))


def proportion_ci(successes: int, n: int, method: str = "wilson", alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` confidence interval for a binomial proportion ``successes / n``.

    Parameters
    ----------
    method
        - ``"wilson"``: Wilson score interval (statsmodels).
        - ``"clopper-pearson"`` (aliases ``"exact"``, ``"beta"``): exact interval (statsmodels).
        - ``"jeffreys"``: Jeffreys interval (statsmodels).
        - ``"paper"``: the paper's ``p +/- z sqrt(p (1 - p) / n)`` with ``z = norm.ppf(1 - alpha/2)``
          (1.95996 at alpha = 0.05), **not clipped**: it may go below 0 or above 1, exactly as
          the paper reports it. It has zero width at p = 0 or p = 1.
        - ``"paper-clipped"``: the same, clipped to ``[0, 1]`` (equals statsmodels ``"normal"``).
    """
    if int(successes) != successes or int(n) != n:
        raise ValueError(f"successes and n must be integers, got {successes!r} and {n!r}")
    successes, n = int(successes), int(n)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n]; got {successes} of {n}")
    alpha = _check_alpha(alpha)
    key = str(method).lower()
    if key in _PAPER_METHODS:
        p = successes / n
        r = paper_radius(p, n, z=_z(alpha))
        low, high = p - r, p + r
        if key == "paper-clipped":
            low, high = max(0.0, low), min(1.0, high)
        return float(low), float(high)
    if key not in _CI_METHODS:
        known = sorted(set(_CI_METHODS) | set(_PAPER_METHODS))
        raise ValueError(f"unknown interval method {method!r}; choose one of {known}")
    low, high = proportion_confint(successes, n, alpha=alpha, method=_CI_METHODS[key])
    return float(low), float(high)


# --------------------------------------------------------------------------- operating points


def threshold_table(y_true, scores, thresholds, method: str = "wilson", alpha: float = 0.05) -> pd.DataFrame:
    """Sensitivity and specificity with confidence intervals at each threshold.

    One row per threshold (in the order given) with columns ``threshold, tp, fn, tn, fp,
    sensitivity, sensitivity_low, sensitivity_high, specificity, specificity_low,
    specificity_high`` (intervals by ``method``, see :func:`proportion_ci`), then the paper's
    radii ``paper_sensitivity_radius, paper_specificity_radius`` (``z = norm.ppf(1 - alpha/2)``)
    and boolean flags ``paper_sensitivity_outside_unit``, ``paper_specificity_outside_unit`` and
    ``paper_interval_outside_unit`` (either one), true when ``value +/- radius`` leaves ``[0, 1]``.
    """
    y, s = _check_inputs(y_true, scores)
    try:
        th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError("thresholds must be a 1-D sequence of numbers") from None
    if th.ndim != 1:
        raise ValueError("thresholds must be a 1-D sequence of numbers")
    if np.isnan(th).any():
        raise ValueError("thresholds contain NaN")
    alpha = _check_alpha(alpha)
    z = _z(alpha)
    tp, fn, tn, fp = _counts_at(y, s, th)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    rows = []
    for t, a, b, c, d in zip(th, tp, fn, tn, fp):
        a, b, c, d = int(a), int(b), int(c), int(d)
        sens, spec = a / n_pos, c / n_neg
        sl, sh = proportion_ci(a, n_pos, method=method, alpha=alpha)
        pl, ph = proportion_ci(c, n_neg, method=method, alpha=alpha)
        rs, rp = paper_radius(sens, n_pos, z=z), paper_radius(spec, n_neg, z=z)
        out_s = (sens - rs < 0.0) or (sens + rs > 1.0)
        out_p = (spec - rp < 0.0) or (spec + rp > 1.0)
        rows.append({
            "threshold": float(t), "tp": a, "fn": b, "tn": c, "fp": d,
            "sensitivity": sens, "sensitivity_low": sl, "sensitivity_high": sh,
            "specificity": spec, "specificity_low": pl, "specificity_high": ph,
            "paper_sensitivity_radius": rs, "paper_specificity_radius": rp,
            "paper_sensitivity_outside_unit": bool(out_s),
            "paper_specificity_outside_unit": bool(out_p),
            "paper_interval_outside_unit": bool(out_s or out_p),
        })
    columns = [
        "threshold", "tp", "fn", "tn", "fp",
        "sensitivity", "sensitivity_low", "sensitivity_high",
        "specificity", "specificity_low", "specificity_high",
        "paper_sensitivity_radius", "paper_specificity_radius",
        "paper_sensitivity_outside_unit", "paper_specificity_outside_unit", "paper_interval_outside_unit",
    ]
    return pd.DataFrame(rows, columns=columns)


def threshold_for_sensitivity(y_true, scores, target: float = 0.98) -> float:
    """Highest threshold ``t`` with ``sensitivity(t) >= target`` (predicted positive iff score >= t).

    Sensitivity only changes at positive-class scores, so the answer is the ``k``-th largest
    positive score, where ``k`` is the smallest count with ``k / n_pos >= target`` (evaluated in
    floating point exactly as :func:`sensitivity_specificity` does, so the two always agree).
    The returned value is one of the observed scores; every observed score above it gives
    sensitivity below ``target``.

    Ties: all samples whose score equals ``t`` are predicted positive. If several positives
    share the score ``t``, the sensitivity at ``t`` can exceed ``target`` (no threshold can
    separate tied samples); negatives tied at ``t`` count as false positives. With
    ``target = 0`` every threshold qualifies and the largest observed score is returned.
    """
    y, s = _check_inputs(y_true, scores)
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target sensitivity must be in [0, 1], got {target}")
    pos = np.sort(s[y == 1])[::-1]
    n_pos = pos.size
    k = min(n_pos, max(0, math.ceil(target * n_pos)))
    while k > 0 and (k - 1) / n_pos >= target:  # guard against rounding in target * n_pos
        k -= 1
    while k < n_pos and k / n_pos < target:
        k += 1
    if k == 0:
        return float(s.max())
    return float(pos[k - 1])


# --------------------------------------------------------------------------- curves


def roc_curve_finite(y_true, scores, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sklearn.metrics.roc_curve` with a finite first threshold.

    scikit-learn puts ``+inf`` as the first threshold (the point ``fpr = tpr = 0``, nothing
    predicted positive). It is replaced by a finite value that still predicts nothing positive:

    - scores are probabilities (all in ``[0, 1]``) with maximum below 1: ``1.0``;
    - probabilities with some score exactly 1.0: the next float above 1 (``1.0000000000000002``),
      so that ``score >= threshold`` still selects nobody and thresholds stay strictly decreasing;
    - other scores (logits, margins): ``max(scores) + 1``.

    Returns ``(fpr, tpr, thresholds)``, thresholds decreasing, all finite.
    """
    y, s = _check_inputs(y_true, scores)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=drop_intermediate)
    thr = thr.astype(np.float64, copy=True)
    top = float(s.max())
    if not np.isfinite(thr[0]) or thr[0] > top:
        if s.min() >= 0.0 and top <= 1.0:
            thr[0] = 1.0 if top < 1.0 else float(np.nextafter(1.0, 2.0))
        else:
            first = top + 1.0
            thr[0] = first if first > top else float(np.nextafter(top, np.inf))
    return fpr, tpr, thr


def pr_curve(y_true, scores, drop_intermediate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sklearn.metrics.precision_recall_curve` for COVID as the positive class.

    Returns ``(precision, recall, thresholds)`` as scikit-learn does: ``thresholds`` are the
    observed scores (finite), increasing, one shorter than ``precision`` and ``recall``, whose last
    entries are ``precision = 1, recall = 0`` (no threshold).
    """
    y, s = _check_inputs(y_true, scores)
    precision, recall, thr = skm.precision_recall_curve(y, s, pos_label=1, drop_intermediate=drop_intermediate)
    return precision, recall, thr


def average_precision(y_true, scores) -> float:
    """Average precision (area under the step PR curve), :func:`sklearn.metrics.average_precision_score`."""
    y, s = _check_inputs(y_true, scores)
    return float(skm.average_precision_score(y, s, pos_label=1))


# --------------------------------------------------------------------------- DeLong


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
    if y_pos < 2 or y_neg < 2:
        raise ValueError(
            f"DeLong's variance needs at least 2 samples of each class; got {y_pos} positive, {y_neg} negative"
        )
    aucs, v10, v01 = _delong_components(y, score_matrix)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / y_pos + s01 / y_neg


def auc_delong(y_true, scores, alpha: float = 0.05, transform: str = "none") -> dict:
    """AUC with DeLong's variance and a normal-approximation ``1 - alpha`` interval.

    The variance is DeLong et al. (1988) computed by the midrank algorithm of Sun & Xu (2014)
    in ``O(N log N)``. The interval is ``auc +/- z sqrt(variance)`` clipped to ``[0, 1]``
    (``transform="none"``) or built on the logit scale and mapped back (``transform="logit"``,
    always inside ``(0, 1)``; degenerate ``(auc, auc)`` when the AUC is exactly 0 or 1).

    Returns ``{"auc", "variance", "std", "low", "high"}`` as floats.
    """
    y, s = _check_inputs(y_true, scores)
    alpha = _check_alpha(alpha)
    if transform not in ("none", "logit"):
        raise ValueError(f"transform must be 'none' or 'logit', got {transform!r}")
    aucs, cov = _delong_covariance(y, s[np.newaxis, :])
    auc, var = float(aucs[0]), float(max(cov[0, 0], 0.0))
    se = math.sqrt(var)
    z = _z(alpha)
    if transform == "logit":
        if 0.0 < auc < 1.0:
            centre = math.log(auc / (1.0 - auc))
            se_logit = se / (auc * (1.0 - auc))
            low = 1.0 / (1.0 + math.exp(-(centre - z * se_logit)))
            high = 1.0 / (1.0 + math.exp(-(centre + z * se_logit)))
        else:
            low = high = auc
    else:
        low, high = max(0.0, auc - z * se), min(1.0, auc + z * se)
    return {"auc": auc, "variance": var, "std": se, "low": float(low), "high": float(high)}


def delong_paired_test(y_true, scores_a, scores_b) -> dict:
    """DeLong's two-sided test that two models scored on the same samples have equal AUC.

    ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``. When that variance is 0 (for
    instance identical score vectors) ``z = 0, p = 1`` if the AUCs are equal, otherwise
    ``z = +/-inf, p = 0``.

    Returns ``{"auc_a", "auc_b", "difference", "z", "p_value", "covariance", "variance_a",
    "variance_b"}``; ``covariance`` is DeLong's covariance of the two AUC estimates.
    """
    y, a = _check_inputs(y_true, scores_a, name="scores_a")
    _, b = _check_inputs(y, scores_b, name="scores_b")
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
    return {
        "auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff,
        "z": float(z), "p_value": float(min(1.0, p)), "covariance": float(cov[0, 1]),
        "variance_a": float(cov[0, 0]), "variance_b": float(cov[1, 1]),
    }


# --------------------------------------------------------------------------- bootstrap


def _auc_rows(y_rows: np.ndarray, s_rows: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row (equal to sklearn's roc_auc_score); NaN for one-class rows."""
    ranks = stats.rankdata(s_rows, method="average", axis=1)
    n_pos = y_rows.sum(axis=1).astype(np.float64)
    n_neg = y_rows.shape[1] - n_pos
    rank_sum = np.where(y_rows == 1, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _resample_indices(y: np.ndarray, n_resamples: int, rng: np.random.Generator, stratified: bool) -> np.ndarray:
    if stratified:
        pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        return np.hstack([
            rng.choice(pos_idx, size=(n_resamples, pos_idx.size), replace=True),
            rng.choice(neg_idx, size=(n_resamples, neg_idx.size), replace=True),
        ])
    return rng.integers(0, y.size, size=(n_resamples, y.size))


def _check_resamples(n_resamples) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}")
    return int(n_resamples)


def auc_bootstrap(y_true, scores, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
                  stratified: bool = True) -> dict:
    """Percentile bootstrap interval for the AUC.

    ``stratified=True`` resamples positives and negatives separately (class counts fixed);
    otherwise whole samples are resampled and draws holding a single class are discarded
    (``n_valid`` reports how many were kept). Reproducible for a given ``seed``
    (:func:`numpy.random.default_rng`).

    Returns ``{"auc", "low", "high", "std", "n_resamples", "n_valid", "seed", "stratified"}``;
    ``auc`` is the AUC of the original sample.
    """
    y, s = _check_inputs(y_true, scores)
    alpha = _check_alpha(alpha)
    n_resamples = _check_resamples(n_resamples)
    rng = np.random.default_rng(seed)
    idx = _resample_indices(y, n_resamples, rng, stratified)
    boot = _auc_rows(y[idx], s[idx])
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        raise ValueError("every bootstrap resample held a single class; use stratified=True")
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {
        "auc": float(skm.roc_auc_score(y, s)), "low": float(low), "high": float(high),
        "std": float(boot.std(ddof=1)) if boot.size > 1 else 0.0,
        "n_resamples": n_resamples, "n_valid": int(boot.size), "seed": seed, "stratified": bool(stratified),
    }


def paired_bootstrap_auc(y_true, scores_a, scores_b, n_resamples: int = 1000, seed: int = 0,
                         alpha: float = 0.05, stratified: bool = True) -> dict:
    """Paired bootstrap of ``AUC(a) - AUC(b)`` (both models scored on the same resamples).

    The interval is the percentile interval of the resampled differences. The two-sided p-value
    is ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))`` over the resampled differences ``d``, each
    proportion with the add-one correction ``(1 + count) / (1 + B)`` so that it is never 0.
    Identical score vectors give difference 0 and p = 1.

    Returns ``{"auc_a", "auc_b", "difference", "low", "high", "p_value", "n_resamples",
    "n_valid", "seed", "stratified"}``.
    """
    y, a = _check_inputs(y_true, scores_a, name="scores_a")
    _, b = _check_inputs(y, scores_b, name="scores_b")
    alpha = _check_alpha(alpha)
    n_resamples = _check_resamples(n_resamples)
    rng = np.random.default_rng(seed)
    idx = _resample_indices(y, n_resamples, rng, stratified)
    yi = y[idx]
    d = _auc_rows(yi, a[idx]) - _auc_rows(yi, b[idx])
    d = d[~np.isnan(d)]
    if d.size == 0:
        raise ValueError("every bootstrap resample held a single class; use stratified=True")
    low, high = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    p_le = (1 + np.sum(d <= 0)) / (1 + d.size)
    p_ge = (1 + np.sum(d >= 0)) / (1 + d.size)
    auc_a, auc_b = float(skm.roc_auc_score(y, a)), float(skm.roc_auc_score(y, b))
    return {
        "auc_a": auc_a, "auc_b": auc_b, "difference": auc_a - auc_b,
        "low": float(low), "high": float(high), "p_value": float(min(1.0, 2.0 * min(p_le, p_ge))),
        "n_resamples": n_resamples, "n_valid": int(d.size), "seed": seed, "stratified": bool(stratified),
    }


# --------------------------------------------------------------------------- calibration


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
    """Reliability (calibration) table of predicted COVID probabilities.

    ``strategy="uniform"``: ``n_bins`` equal-width bins on ``[0, 1]``; ``"quantile"``: edges at
    the quantiles of ``prob`` (duplicate edges merged, so there may be fewer bins). Bins are
    ``[bin_low, bin_high)``, the last one closed. Every bin is listed; empty bins have
    ``count = 0`` and NaN means. A single class in ``y_true`` is allowed.

    Columns: ``bin_low, bin_high, count, mean_predicted, fraction_positive``.
    """
    y, p = _check_inputs(y_true, prob, both_classes=False, name="prob")
    _check_probabilities(p)
    edges = _bin_edges(p, n_bins, strategy)
    nb = edges.size - 1
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
    """Expected calibration error: ``sum_b (n_b / N) |fraction_positive_b - mean_predicted_b|``.

    Binning as in :func:`reliability_table` (empty bins contribute nothing).
    """
    table = reliability_table(y_true, prob, n_bins=n_bins, strategy=strategy)
    used = table[table["count"] > 0]
    weights = used["count"].to_numpy(dtype=np.float64) / used["count"].sum()
    gap = np.abs(used["fraction_positive"].to_numpy() - used["mean_predicted"].to_numpy())
    return float(np.sum(weights * gap))


# --------------------------------------------------------------------------- summary


def summarize(y_true, scores, threshold, method: str = "wilson", alpha: float = 0.05) -> dict:
    """JSON-friendly summary at one threshold: counts, sensitivity and specificity with intervals.

    Keys: ``threshold, n, n_pos, n_neg, tp, fn, tn, fp, sensitivity, sensitivity_low,
    sensitivity_high, specificity, specificity_low, specificity_high, ci_method, alpha``;
    all values plain Python ``int`` / ``float`` / ``str``.
    """
    y, s = _check_inputs(y_true, scores)
    t = _check_threshold(threshold)
    c = confusion_at_threshold(y, s, t)
    n_pos, n_neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    sl, sh = proportion_ci(c["tp"], n_pos, method=method, alpha=alpha)
    pl, ph = proportion_ci(c["tn"], n_neg, method=method, alpha=alpha)
    return {
        "threshold": t, "n": int(y.size), "n_pos": int(n_pos), "n_neg": int(n_neg),
        "tp": c["tp"], "fn": c["fn"], "tn": c["tn"], "fp": c["fp"],
        "sensitivity": c["tp"] / n_pos, "sensitivity_low": sl, "sensitivity_high": sh,
        "specificity": c["tn"] / n_neg, "specificity_low": pl, "specificity_high": ph,
        "ci_method": str(method), "alpha": float(alpha),
    }
