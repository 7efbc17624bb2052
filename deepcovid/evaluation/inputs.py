"""Checks of the arrays passed to the metric functions, shared by all of them.

``y_true``: labels in ``{0, 1}`` (1 = COVID-19; booleans and 0.0 / 1.0 accepted); ``scores``:
finite reals. Mismatched lengths, other labels, a single class where two are needed and NaN /
infinite scores raise :class:`ValueError` saying which.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from deepcovid.errors import InputError


def _as_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def check_labels(y_true) -> np.ndarray:
    y = _as_1d(y_true, "y_true")
    if y.size == 0:
        raise InputError("y_true is empty")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise InputError(f"y_true must be numeric labels in {{0, 1}}, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise InputError("y_true contains NaN")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        found = np.unique(y[bad])[:5].tolist()
        raise InputError(f"y_true must contain only labels 0 and 1 (1 = COVID); found {found}")
    return y.astype(np.int64)


def check_scores(scores, name: str = "scores") -> np.ndarray:
    s = _as_1d(scores, name)
    if s.dtype == bool or not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise InputError(f"{name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise InputError(f"{name} contains NaN ({int(np.isnan(s).sum())} values)")
    if np.isinf(s).any():
        raise InputError(f"{name} contains infinite values")
    return s


def check_inputs(y_true, scores, *, both_classes: bool = True, name: str = "scores"):
    """``(y, s)`` as int64 / float64 arrays of equal length, checked."""
    y = check_labels(y_true)
    s = check_scores(scores, name)
    if y.shape[0] != s.shape[0]:
        raise InputError(f"y_true and {name} have different lengths ({y.shape[0]} != {s.shape[0]})")
    if both_classes:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.shape[0]:
            only = "1 (COVID)" if n_pos else "0 (non-COVID)"
            raise InputError(f"only one class present in y_true (all labels are {only}); need both 0 and 1")
    return y, s


def check_probabilities(prob, name: str = "prob") -> None:
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise InputError(f"{name} must be probabilities in [0, 1]; found range [{prob.min()}, {prob.max()}]")


def check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a real number, got {threshold!r}") from None
    if math.isnan(t):
        raise InputError("threshold is NaN")
    return t


def check_alpha(alpha) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    return a


def two_sided_z(alpha: float) -> float:
    """Standard-normal quantile ``1 - alpha / 2`` (1.959963984540054 at alpha = 0.05)."""
    return float(stats.norm.ppf(1.0 - check_alpha(alpha) / 2.0))
