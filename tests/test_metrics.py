"""Tests of the metric modules of deepcovid.evaluation (proportions, ranking, delong, calibration) against
scikit-learn, statsmodels and hand-checked values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from statsmodels.stats.proportion import proportion_confint

from deepcovid.evaluation import calibration as C
from deepcovid.evaluation import delong as D
from deepcovid.evaluation import proportions as P
from deepcovid.evaluation import ranking as R


def sens_spec(y, s, t):
    """(sensitivity, specificity) at threshold t, from the confusion counts."""
    c = P.confusion_at_threshold(y, s, t)
    return c["tp"] / (c["tp"] + c["fn"]), c["tn"] / (c["tn"] + c["fp"])


def _synthetic(n=300, seed=0, shift=1.0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    logit = rng.normal(size=n) + shift * y
    s = 1.0 / (1.0 + np.exp(-logit))
    if ties:
        s = np.round(s, 1)
    return y, s


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_confusion_matches_sklearn(seed, ties):
    y, s = _synthetic(seed=seed, ties=ties)
    for t in [0.0, 0.2, 0.5, float(np.median(s)), 0.7, 1.0, float(s[3])]:
        c = P.confusion_at_threshold(y, s, t)
        tn, fp, fn, tp = skm.confusion_matrix(y, (s >= t).astype(int), labels=[0, 1]).ravel()
        assert c == {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
        assert all(type(v) is int for v in c.values())
        sens, spec = sens_spec(y, s, t)
        assert sens == pytest.approx(skm.recall_score(y, s >= t))
        assert spec == pytest.approx(skm.recall_score(1 - y, s < t))


def test_threshold_is_inclusive():
    y = np.array([0, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.7, 0.1])
    assert P.confusion_at_threshold(y, s, 0.5) == {"tp": 2, "fn": 0, "tn": 1, "fp": 1}


def test_confusion_allows_single_class():
    assert P.confusion_at_threshold([1, 1], [0.2, 0.9], 0.5) == {"tp": 1, "fn": 1, "tn": 0, "fp": 0}


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (50, 100), (98, 100), (100, 100), (17, 23)])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_intervals_match_statsmodels(k, n, alpha):
    for ours, theirs in [
        ("wilson", "wilson"),
        ("clopper-pearson", "beta"),
        ("exact", "beta"),
        ("jeffreys", "jeffreys"),
        ("paper-clipped", "normal"),
    ]:
        np.testing.assert_allclose(
            P.proportion_ci(k, n, method=ours, alpha=alpha),
            proportion_confint(k, n, alpha=alpha, method=theirs),
            atol=1e-12,
        )


def test_known_values_98_of_100():
    paper = P.paper_interval(98, 100)
    assert paper.radius == pytest.approx(0.0274, abs=5e-5)
    assert round(paper.radius, 4) == round(1.96 * math.sqrt(0.98 * 0.02 / 100), 4) == 0.0274
    assert paper.outside_unit and paper.high_clipped == 1.0 and paper.low_clipped == paper.low
    low, high = P.proportion_ci(98, 100, method="paper")
    assert low == pytest.approx(0.9526, abs=1e-4)
    assert high == pytest.approx(1.0074, abs=1e-4)
    assert high > 1.0
    low_c, high_c = P.proportion_ci(98, 100, method="paper-clipped")
    assert low_c == pytest.approx(low) and high_c == 1.0
    np.testing.assert_allclose(P.proportion_ci(98, 100, method="wilson"), (0.9300, 0.9945), atol=1e-4)
    np.testing.assert_allclose(P.proportion_ci(98, 100, method="clopper-pearson"), (0.9296, 0.9976), atol=1e-4)


def test_paper_interval_below_zero_unclipped():
    low, high = P.proportion_ci(1, 50, method="paper")
    assert low < 0.0 < high
    assert P.proportion_ci(1, 50, method="paper-clipped")[0] == 0.0


@pytest.mark.parametrize("args", [(5, 0), (11, 10), (-1, 10), (2.5, 10)])
def test_proportion_ci_rejects_bad_counts(args):
    with pytest.raises(ValueError):
        P.proportion_ci(*args)


def test_proportion_ci_rejects_unknown_method_and_alpha():
    with pytest.raises(ValueError, match="unknown interval method"):
        P.proportion_ci(5, 10, method="wald-ish")
    with pytest.raises(ValueError, match="alpha"):
        P.proportion_ci(5, 10, alpha=1.5)


def test_threshold_table_columns_and_values():
    # 100 positives, 98 above 0.5; 50 negatives, all below 0.5.
    y = np.r_[np.ones(100, int), np.zeros(50, int)]
    s = np.r_[np.full(98, 0.9), np.full(2, 0.3), np.linspace(0.0, 0.4, 50)]
    table = P.threshold_table(y, s, [0.5, 0.95], method="wilson")
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    for col in [
        "threshold",
        "tp",
        "fn",
        "tn",
        "fp",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "paper_sensitivity_radius",
        "paper_specificity_radius",
        "paper_interval_outside_unit",
    ]:
        assert col in table.columns
    row = table.iloc[0]
    assert (row.tp, row.fn, row.tn, row.fp) == (98, 2, 50, 0)
    assert row.sensitivity == pytest.approx(0.98)
    assert row.paper_sensitivity_radius == pytest.approx(0.0274, abs=5e-5)
    assert row.sensitivity_low == pytest.approx(0.9300, abs=1e-4)
    assert bool(row.paper_sensitivity_outside_unit) and bool(row.paper_interval_outside_unit)
    assert row.specificity == 1.0 and row.paper_specificity_radius == 0.0
    assert not bool(row.paper_specificity_outside_unit)
    row = table.iloc[1]
    assert (row.tp, row.fp) == (0, 0) and row.sensitivity == 0.0
    # agrees with the scalar functions at every threshold
    for _, r in table.iterrows():
        c = P.confusion_at_threshold(y, s, r.threshold)
        assert c == {"tp": r.tp, "fn": r.fn, "tn": r.tn, "fp": r.fp}


def test_threshold_table_middle_values_not_flagged():
    y, s = _synthetic(seed=4)
    table = P.threshold_table(y, s, np.linspace(0.3, 0.7, 5), method="clopper-pearson")
    assert not table["paper_interval_outside_unit"].any()
    assert (table["sensitivity_low"] <= table["sensitivity"]).all()
    assert (table["sensitivity"] <= table["sensitivity_high"]).all()


# --------------------------------------------------------------------------- operating point


def test_planted_operating_point():
    # 100 positives with distinct scores 0.01..1.00 and negatives in between:
    # the 98th highest positive score is 0.03 => the highest threshold with sensitivity >= 0.98.
    pos = np.arange(1, 101) / 100.0
    neg = np.array([0.005, 0.025, 0.031, 0.5])
    y = np.r_[np.ones(100, int), np.zeros(neg.size, int)]
    s = np.r_[pos, neg]
    t = P.threshold_for_sensitivity(y, s, 0.98)
    assert t == 0.03
    assert t in s
    assert sens_spec(y, s, t)[0] >= 0.98
    higher = np.sort(s[s > t])[0]  # next higher observed score (a negative, 0.031)
    assert higher == 0.031
    assert sens_spec(y, s, higher)[0] < 0.98


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 0.98, 0.07, 0.29])
def test_threshold_for_sensitivity_is_highest(seed, target):
    y, s = _synthetic(n=137, seed=seed, ties=seed % 2 == 1)
    t = P.threshold_for_sensitivity(y, s, target)
    assert t in s
    assert sens_spec(y, s, t)[0] >= target
    higher = s[s > t]
    if higher.size:
        assert sens_spec(y, s, higher.min())[0] < target


def test_threshold_for_sensitivity_target_one_and_zero():
    y, s = _synthetic(seed=3)
    assert P.threshold_for_sensitivity(y, s, 1.0) == s[y == 1].min()
    assert sens_spec(y, s, s[y == 1].min())[0] == 1.0
    assert P.threshold_for_sensitivity(y, s, 0.0) == s.max()


def test_threshold_for_sensitivity_ties():
    # Positives tied at 0.5 cannot be split: sensitivity jumps from 0.5 to 1.0 at t = 0.5.
    y = np.array([1, 1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.5, 0.5, 0.5, 0.1])
    t = P.threshold_for_sensitivity(y, s, 0.75)
    assert t == 0.5
    assert sens_spec(y, s, t) == (1.0, 0.5)  # tied negative is a false positive
    assert sens_spec(y, s, 0.8)[0] == 0.5


def test_threshold_for_sensitivity_rejects_bad_target():
    with pytest.raises(ValueError, match="target"):
        P.threshold_for_sensitivity([0, 1], [0.1, 0.9], 1.2)


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_match_sklearn(seed, ties):
    y, s = _synthetic(seed=seed, ties=ties)
    fpr, tpr, thr = R.roc_curve_finite(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert np.isfinite(thr).all() and np.isfinite(fpr).all() and np.isfinite(tpr).all()
    assert np.all(np.diff(thr) < 0)
    assert (s >= thr[0]).sum() == 0  # the first point still predicts nothing positive
    assert thr[0] == 1.0 or (ties and thr[0] == np.nextafter(1.0, 2.0))
    assert skm.auc(fpr, tpr) == pytest.approx(skm.roc_auc_score(y, s))
    assert D.auc_delong(y, s)["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert R.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))


def test_roc_curve_finite_with_logits_and_probability_one():
    y = np.array([0, 0, 1, 1, 1])
    logits = np.array([-3.0, 0.5, 2.0, 7.5, 7.5])
    thr = R.roc_curve_finite(y, logits)[2]
    assert np.isfinite(thr).all() and thr[0] == 8.5
    prob = np.array([0.1, 0.4, 0.6, 1.0, 1.0])
    thr = R.roc_curve_finite(y, prob)[2]
    assert np.isfinite(thr).all() and thr[0] > 1.0 and (prob >= thr[0]).sum() == 0
    assert R.roc_curve_finite(y, np.array([0.1, 0.4, 0.6, 0.8, 0.9]))[2][0] == 1.0


def test_pr_curve_matches_sklearn():
    y, s = _synthetic(seed=5)
    precision, recall, thr = R.pr_curve(y, s)
    sp, sr, st = skm.precision_recall_curve(y, s)
    np.testing.assert_array_equal(precision, sp)
    np.testing.assert_array_equal(recall, sr)
    np.testing.assert_array_equal(thr, st)
    assert np.isfinite(precision).all() and np.isfinite(recall).all() and np.isfinite(thr).all()


# --------------------------------------------------------------------------- DeLong


def _slow_delong_variance(y, s):
    """DeLong's variance from the structural components, by direct O(m n) comparison."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10 = psi.mean(axis=1)
    v01 = psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / x.size + v01.var(ddof=1) / z.size, v10, v01


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_delong_variance_matches_direct(seed, ties):
    y, s = _synthetic(n=211, seed=seed, ties=ties)
    auc, var, v10, v01 = _slow_delong_variance(y, s)
    res = D.auc_delong(y, s)
    assert res["auc"] == pytest.approx(auc, abs=1e-12)
    assert res["variance"] == pytest.approx(var, abs=1e-10)
    assert res["low"] <= skm.roc_auc_score(y, s) <= res["high"]
    z = 1.959963984540054
    assert res["low"] == pytest.approx(max(0.0, auc - z * math.sqrt(var)), abs=1e-10)


def test_delong_paired_covariance_matches_direct():
    y, a = _synthetic(n=150, seed=7)
    rng = np.random.default_rng(8)
    b = a + rng.normal(scale=0.3, size=a.size)
    _, var_a, v10a, v01a = _slow_delong_variance(y, a)
    _, var_b, v10b, v01b = _slow_delong_variance(y, b)
    cov = np.cov(v10a, v10b)[0, 1] / v10a.size + np.cov(v01a, v01b)[0, 1] / v01a.size
    res = D.delong_paired_test(y, a, b)
    assert res["covariance"] == pytest.approx(cov, abs=1e-10)
    assert res["variance_a"] == pytest.approx(var_a, abs=1e-10)
    z = (res["auc_a"] - res["auc_b"]) / math.sqrt(var_a + var_b - 2 * cov)
    assert res["z"] == pytest.approx(z, rel=1e-8)


def test_delong_paired_identical_and_different():
    y, s = _synthetic(n=300, seed=11, shift=2.0)
    same = D.delong_paired_test(y, s, s)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    rng = np.random.default_rng(12)
    noise = rng.uniform(size=s.size)  # an uninformative model
    diff = D.delong_paired_test(y, s, noise)
    assert diff["difference"] > 0.2 and diff["p_value"] < 1e-6
    assert set(diff) >= {"auc_a", "auc_b", "difference", "z", "p_value", "covariance"}


def test_delong_needs_two_of_each_class():
    with pytest.raises(ValueError, match="at least 2"):
        D.auc_delong([0, 1, 1], [0.1, 0.5, 0.9])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_reproducible_and_agrees_with_delong():
    y, s = _synthetic(n=200, seed=13)
    a = R.auc_bootstrap(y, s, n_resamples=1000, seed=42)
    b = R.auc_bootstrap(y, s, n_resamples=1000, seed=42)
    c = R.auc_bootstrap(y, s, n_resamples=1000, seed=43)
    assert a == b and a != c
    d = D.auc_delong(y, s)
    assert a["auc"] == pytest.approx(d["auc"])
    assert a["low"] < a["auc"] < a["high"]
    assert abs(a["low"] - d["low"]) < 0.03 and abs(a["high"] - d["high"]) < 0.03
    assert a["std"] == pytest.approx(math.sqrt(d["variance"]), rel=0.2)


def test_bootstrap_internal_auc_matches_sklearn():
    y, s = _synthetic(n=80, seed=14, ties=True)
    rng = np.random.default_rng(0)
    pos, neg = s[y == 1], s[y == 0]
    i = rng.integers(0, pos.size, size=(20, pos.size))
    j = rng.integers(0, neg.size, size=(20, neg.size))
    ours = R._auc(pos[i], neg[j])  # one AUC per row, as the vectorised bootstrap statistic
    for a, b, value in zip(pos[i], neg[j], ours):
        labels = np.r_[np.ones(a.size, int), np.zeros(b.size, int)]
        assert value == pytest.approx(skm.roc_auc_score(labels, np.r_[a, b]), abs=1e-12)


def test_paired_bootstrap():
    y, s = _synthetic(n=200, seed=15, shift=2.0)
    same = R.paired_bootstrap_auc(y, s, s, n_resamples=300, seed=0)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    assert same["low"] == same["high"] == 0.0
    noise = np.random.default_rng(16).uniform(size=s.size)
    res = R.paired_bootstrap_auc(y, s, noise, n_resamples=500, seed=0)
    assert res == R.paired_bootstrap_auc(y, s, noise, n_resamples=500, seed=0)
    assert res["low"] < res["difference"] < res["high"] and res["low"] > 0
    assert res["p_value"] < 0.01
    delong = D.delong_paired_test(y, s, noise)
    assert res["difference"] == pytest.approx(delong["difference"])


# --------------------------------------------------------------------------- calibration


def test_ece_calibrated_is_small():
    rng = np.random.default_rng(17)
    p = rng.uniform(size=50_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert C.expected_calibration_error(y, p) < 0.02


def test_ece_overconfident_constant():
    y = np.r_[np.ones(500, int), np.zeros(500, int)]
    p = np.full(y.size, 0.9)
    assert C.expected_calibration_error(y, p) == pytest.approx(0.4)


def test_reliability_table():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 1.0, 0.5, 0.1])
    table = C.reliability_table(y, p, n_bins=10)
    assert list(table.columns) == ["bin_low", "bin_high", "count", "mean_predicted", "fraction_positive"]
    assert len(table) == 10 and table["count"].sum() == 6
    assert table.loc[1, "count"] == 2  # 0.1 goes to [0.1, 0.2)
    assert table.loc[9, "count"] == 2  # 1.0 is in the last, closed bin
    assert table.loc[9, "fraction_positive"] == 1.0
    assert np.isnan(table.loc[3, "mean_predicted"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.reliability_table(y, p + 0.5)


# --------------------------------------------------------------------------- summary, validation


def test_summarize_is_json_friendly():
    y, s = _synthetic(seed=18)
    out = P.summarize(y, s, 0.5, method="clopper-pearson")
    json.dumps(out)
    assert all(type(v) in (int, float, str) for v in out.values())
    assert out["n_pos"] + out["n_neg"] == out["n"] == y.size
    assert out["tp"] + out["fn"] == out["n_pos"]
    assert out["sensitivity_low"] <= out["sensitivity"] <= out["sensitivity_high"]
    assert out["specificity"] == sens_spec(y, s, 0.5)[1]


@pytest.mark.parametrize(
    "func",
    [
        lambda y, s: R.roc_curve_finite(y, s),
        lambda y, s: R.pr_curve(y, s),
        lambda y, s: D.auc_delong(y, s),
        lambda y, s: R.average_precision(y, s),
        lambda y, s: P.threshold_for_sensitivity(y, s),
        lambda y, s: P.summarize(y, s, 0.5),
        lambda y, s: P.threshold_table(y, s, [0.5]),
        lambda y, s: R.auc_bootstrap(y, s, n_resamples=10),
    ],
)
def test_input_validation(func):
    with pytest.raises(ValueError, match="different lengths"):
        func([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="only labels 0 and 1"):
        func([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class"):
        func([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        func([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="1-D"):
        func([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]])


def test_validation_misc():
    with pytest.raises(ValueError, match="NaN"):
        P.confusion_at_threshold([0, 1], [0.2, 0.3], float("nan"))
    with pytest.raises(ValueError, match="infinite"):
        P.confusion_at_threshold([0, 1], [0.2, np.inf], 0.5)
    with pytest.raises(ValueError, match="empty"):
        P.confusion_at_threshold([], [], 0.5)
    with pytest.raises(ValueError, match="scores_b"):
        D.delong_paired_test([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2])
    with pytest.raises(ValueError, match="labels in"):
        P.confusion_at_threshold(["a", "b"], [0.1, 0.2], 0.5)
    # booleans and float labels are fine
    assert sens_spec(np.array([True, False]), [0.9, 0.1], 0.5) == (1.0, 1.0)
    assert sens_spec(np.array([1.0, 0.0]), [0.9, 0.1], 0.5) == (1.0, 1.0)
