"""Sensitivity, specificity and their confidence intervals at a threshold; the operating point.

A sample is predicted COVID-19 iff ``score >= threshold``; sensitivity = TP / n_pos, specificity
= TN / n_neg. Counts come from :func:`sklearn.metrics.confusion_matrix`, the Wilson, Clopper-Pearson
and Jeffreys intervals from statsmodels; the paper's Eq. 3 interval is :func:`paper_interval`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix
from statsmodels.stats.proportion import proportion_confint

from deepcovid.errors import InputError
from deepcovid.evaluation.inputs import check_alpha, check_inputs, check_threshold, two_sided_z

_CI_METHODS = {
    "wilson": "wilson",
    "clopper-pearson": "beta",
    "exact": "beta",
    "beta": "beta",
    "jeffreys": "jeffreys",
}
_PAPER_METHODS = ("paper", "paper-clipped")


def confusion_at_threshold(y_true, scores, threshold) -> dict:
    """``{"tp", "fn", "tn", "fp"}`` (Python ints) when predicting COVID-19 iff ``score >= threshold``.

    A single class in ``y_true`` is allowed here (the missing cells are 0).
    """
    y, s = check_inputs(y_true, scores, both_classes=False)
    t = check_threshold(threshold)
    tn, fp, fn, tp = confusion_matrix(y, (s >= t).astype(np.int64), labels=[0, 1]).ravel()
    return {"tp": int(tp), "fn": int(fn), "tn": int(tn), "fp": int(fp)}


def _check_counts(successes, n) -> tuple[int, int]:
    if int(successes) != successes or int(n) != n:
        raise InputError(f"successes and n must be integers, got {successes!r} and {n!r}")
    successes, n = int(successes), int(n)
    if n <= 0:
        raise InputError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise InputError(f"successes must be in [0, n]; got {successes} of {n}")
    return successes, n


class PaperInterval(NamedTuple):
    p: float
    radius: float
    low: float
    high: float

    @property
    def low_clipped(self) -> float:
        return max(0.0, self.low)

    @property
    def high_clipped(self) -> float:
        return min(1.0, self.high)

    @property
    def outside_unit(self) -> bool:
        return self.low < 0.0 or self.high > 1.0


def paper_interval(successes: int, n: int, alpha: float = 0.05) -> PaperInterval:
    """The paper's interval (Minaee et al. 2020, Eq. 3) for ``p = successes / n``: ``p +/- r``,

    ``r = z sqrt(p (1 - p) / n)`` with ``z = norm.ppf(1 - alpha / 2)`` (1.95996 at alpha = 0.05;
    the paper writes 1.96, the same radius to 4 decimals: 0.0274 for p = 0.98, n = 100).
    Not clipped, as the paper reports it: it may leave [0, 1] (``outside_unit``).
    """
    successes, n = _check_counts(successes, n)
    p = successes / n
    r = two_sided_z(alpha) * math.sqrt(p * (1.0 - p) / n)
    return PaperInterval(p, r, p - r, p + r)


def proportion_ci(successes: int, n: int, method: str = "wilson", alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` confidence interval for a binomial proportion ``successes / n``.

    ``method``: ``"wilson"``, ``"clopper-pearson"`` (aliases ``"exact"``, ``"beta"``) or
    ``"jeffreys"`` (statsmodels); ``"paper"``: :func:`paper_interval`, unclipped;
    ``"paper-clipped"``: the same clipped to [0, 1] (equals statsmodels ``"normal"``).
    """
    successes, n = _check_counts(successes, n)
    alpha = check_alpha(alpha)
    key = str(method).lower()
    if key in _PAPER_METHODS:
        iv = paper_interval(successes, n, alpha)
        return (iv.low_clipped, iv.high_clipped) if key == "paper-clipped" else (iv.low, iv.high)
    if key not in _CI_METHODS:
        known = sorted(set(_CI_METHODS) | set(_PAPER_METHODS))
        raise InputError(f"unknown interval method {method!r}; choose one of {known}")
    low, high = proportion_confint(successes, n, alpha=alpha, method=_CI_METHODS[key])
    return float(low), float(high)


def threshold_table(y_true, scores, thresholds, method: str = "wilson", alpha: float = 0.05) -> pd.DataFrame:
    """Sensitivity and specificity with confidence intervals at each threshold (rows in the order given).

    Columns: ``threshold, tp, fn, tn, fp``, each rate with ``_low`` / ``_high`` by ``method``
    (:func:`proportion_ci`), the paper's radii ``paper_{rate}_radius``, flags
    ``paper_{rate}_outside_unit`` and ``paper_interval_outside_unit`` (either), then the paper's
    bounds ``paper_{rate}_low/high`` and ``paper_{rate}_low/high_clipped`` (:func:`paper_interval`).
    """
    y, s = check_inputs(y_true, scores)
    try:
        th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError("thresholds must be a 1-D sequence of numbers") from None
    if th.ndim != 1:
        raise InputError("thresholds must be a 1-D sequence of numbers")
    if np.isnan(th).any():
        raise InputError("thresholds contain NaN")
    alpha = check_alpha(alpha)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    rows = []
    for t in th:
        c = confusion_at_threshold(y, s, t)
        row = {"threshold": float(t), **c}
        paper = {}
        for rate, k, n in (("sensitivity", c["tp"], n_pos), ("specificity", c["tn"], n_neg)):
            low, high = proportion_ci(k, n, method=method, alpha=alpha)
            row.update({rate: k / n, f"{rate}_low": low, f"{rate}_high": high})
            paper[rate] = paper_interval(k, n, alpha)
        sens, spec = paper["sensitivity"], paper["specificity"]
        row.update(
            {
                "paper_sensitivity_radius": sens.radius,
                "paper_specificity_radius": spec.radius,
                "paper_sensitivity_outside_unit": sens.outside_unit,
                "paper_specificity_outside_unit": spec.outside_unit,
                "paper_interval_outside_unit": sens.outside_unit or spec.outside_unit,
            }
        )
        for rate, iv in paper.items():
            row.update(
                {
                    f"paper_{rate}_low": iv.low,
                    f"paper_{rate}_high": iv.high,
                    f"paper_{rate}_low_clipped": iv.low_clipped,
                    f"paper_{rate}_high_clipped": iv.high_clipped,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_for_sensitivity(y_true, scores, target: float = 0.98) -> float:
    """Highest threshold ``t`` with ``sensitivity(t) >= target`` (predicted positive iff score >= t).

    Sensitivity only changes at positive-class scores, so the answer is the ``k``-th largest
    positive score, ``k`` the smallest count with ``k / n_pos >= target`` (in floating point, as
    the sensitivity itself is computed). Every observed score above it gives sensitivity below
    ``target``. Ties: all samples scoring ``t`` are predicted positive, so the sensitivity at ``t``
    can exceed ``target`` and tied negatives count as false positives. ``target = 0``: the
    largest observed score.
    """
    y, s = check_inputs(y_true, scores)
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise InputError(f"target sensitivity must be in [0, 1], got {target}")
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


def summarize(y_true, scores, threshold, method: str = "wilson", alpha: float = 0.05) -> dict:
    """JSON-friendly summary at one threshold: counts, sensitivity and specificity with intervals.

    Keys: ``threshold, n, n_pos, n_neg, tp, fn, tn, fp, sensitivity, sensitivity_low,
    sensitivity_high, specificity, specificity_low, specificity_high, ci_method, alpha``;
    all values plain Python ``int`` / ``float`` / ``str``.
    """
    y, s = check_inputs(y_true, scores)
    t = check_threshold(threshold)
    c = confusion_at_threshold(y, s, t)
    n_pos, n_neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    sl, sh = proportion_ci(c["tp"], n_pos, method=method, alpha=alpha)
    pl, ph = proportion_ci(c["tn"], n_neg, method=method, alpha=alpha)
    return {
        "threshold": t,
        "n": int(y.size),
        "n_pos": int(n_pos),
        "n_neg": int(n_neg),
        "tp": c["tp"],
        "fn": c["fn"],
        "tn": c["tn"],
        "fp": c["fp"],
        "sensitivity": c["tp"] / n_pos,
        "sensitivity_low": sl,
        "sensitivity_high": sh,
        "specificity": c["tn"] / n_neg,
        "specificity_low": pl,
        "specificity_high": ph,
        "ci_method": str(method),
        "alpha": float(alpha),
    }
