"""Threshold-free metrics: ROC and precision-recall curves, average precision, bootstrap AUC intervals.

Curves and average precision come from :mod:`sklearn.metrics`, the resampling from
:func:`scipy.stats.bootstrap` (percentile intervals). DeLong's interval and test: :mod:`.delong`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from deepcovid.errors import InputError
from deepcovid.evaluation.inputs import check_alpha, check_inputs


def roc_curve_finite(y_true, scores, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sklearn.metrics.roc_curve` with a finite first threshold.

    scikit-learn's first threshold is ``+inf`` (nothing predicted positive). It becomes ``1.0``
    for probabilities below 1, the next float above 1 when some score is exactly 1.0, and
    ``max(scores) + 1`` for other scores (logits), so ``score >= threshold`` still selects nobody.
    Returns ``(fpr, tpr, thresholds)``, thresholds decreasing, all finite.
    """
    y, s = check_inputs(y_true, scores)
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
    """:func:`sklearn.metrics.precision_recall_curve` for COVID-19 as the positive class.

    ``(precision, recall, thresholds)``; thresholds increasing, one shorter than the others, whose
    last point is ``precision = 1, recall = 0``.
    """
    y, s = check_inputs(y_true, scores)
    return skm.precision_recall_curve(y, s, pos_label=1, drop_intermediate=drop_intermediate)


def average_precision(y_true, scores) -> float:
    """Average precision (area under the step PR curve), :func:`sklearn.metrics.average_precision_score`."""
    y, s = check_inputs(y_true, scores)
    return float(skm.average_precision_score(y, s, pos_label=1))


def _auc(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC = Mann-Whitney U / (m n) of positives' against negatives' scores (ties count 1/2)."""
    u = stats.mannwhitneyu(pos, neg, axis=axis, method="asymptotic").statistic
    return u / (pos.shape[axis] * neg.shape[axis])


def _check_resamples(n_resamples) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise InputError(f"n_resamples must be a positive integer, got {n_resamples}")
    return int(n_resamples)


def _bootstrap(data: tuple, statistic, n_resamples: int, seed: int, alpha: float):
    """Stratified percentile bootstrap: the positives and the negatives are resampled separately.

    A class of one image resamples to itself, so it is held fixed (scipy needs two observations
    to resample a sample); with one image in every class there is nothing to resample.
    """
    free = [k for k, d in enumerate(data) if len(d) > 1]
    if not free:
        raise InputError("a bootstrap interval needs at least 2 images of one class")

    def fixed_aside(*resampled, axis=-1):
        it = iter(resampled)
        return statistic(*(next(it) if k in free else d for k, d in enumerate(data)), axis=axis)

    return stats.bootstrap(
        tuple(data[k] for k in free),
        fixed_aside,
        n_resamples=_check_resamples(n_resamples),
        vectorized=True,
        axis=-1,
        confidence_level=1.0 - check_alpha(alpha),
        method="percentile",
        rng=np.random.default_rng(seed),
    )


def auc_bootstrap(y_true, scores, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap interval for the AUC, class counts fixed (stratified), reproducible by ``seed``.

    Returns ``{"auc", "low", "high", "std", "n_resamples", "seed"}``; ``auc`` is the AUC of the sample.
    """
    y, s = check_inputs(y_true, scores)
    res = _bootstrap((s[y == 1], s[y == 0]), _auc, n_resamples, seed, alpha)
    return {
        "auc": float(skm.roc_auc_score(y, s)),
        "low": float(res.confidence_interval.low),
        "high": float(res.confidence_interval.high),
        "std": float(res.standard_error),
        "n_resamples": int(n_resamples),
        "seed": seed,
    }


def paired_bootstrap_auc(
    y_true, scores_a, scores_b, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Stratified paired bootstrap of ``AUC(a) - AUC(b)``: both models scored on the same resamples.

    Percentile interval of the resampled differences ``d``; two-sided p-value
    ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))``, each proportion ``(1 + count) / (1 + B)`` (never 0).
    Returns ``{"auc_a", "auc_b", "difference", "low", "high", "p_value", "n_resamples", "seed"}``.
    """
    y, a = check_inputs(y_true, scores_a, name="scores_a")
    _, b = check_inputs(y, scores_b, name="scores_b")
    pos_a, neg_a, pos_b, neg_b = a[y == 1], a[y == 0], b[y == 1], b[y == 0]

    def difference(i, j, axis=-1):  # i, j: resampled indices of the positives and the negatives
        return _auc(pos_a[i], neg_a[j]) - _auc(pos_b[i], neg_b[j])

    res = _bootstrap((np.arange(pos_a.size), np.arange(neg_a.size)), difference, n_resamples, seed, alpha)
    d = res.bootstrap_distribution
    p_le = (1 + np.sum(d <= 0)) / (1 + d.size)
    p_ge = (1 + np.sum(d >= 0)) / (1 + d.size)
    auc_a, auc_b = float(skm.roc_auc_score(y, a)), float(skm.roc_auc_score(y, b))
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": auc_a - auc_b,
        "low": float(res.confidence_interval.low),
        "high": float(res.confidence_interval.high),
        "p_value": float(min(1.0, 2.0 * min(p_le, p_ge))),
        "n_resamples": int(n_resamples),
        "seed": seed,
    }
