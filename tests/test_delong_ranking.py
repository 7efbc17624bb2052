"""DeLong (deepcovid/evaluation/delong.py) and the threshold-free metrics and bootstraps
(deepcovid/evaluation/ranking.py): values against brute force, sklearn and an independent run of
scipy's bootstrap whose statistic is sklearn's AUC, at the boundaries the code branches on.

Written to kill the surviving mutants of mutation testing (bench/mutation.sh).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats import norm
from sklearn import metrics as skm

from deepcovid.evaluation import delong as D
from deepcovid.evaluation import ranking as R

Z95 = float(norm.ppf(0.975))
Z90 = float(norm.ppf(0.95))


def psi_matrix(y, s):
    y, s = np.asarray(y), np.asarray(s, float)
    x, z = s[y == 1], s[y == 0]
    return (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])


def brute(y, *scores):
    """AUCs, placements and DeLong's covariance by the O(m n) definition."""
    psis = [psi_matrix(y, s) for s in scores]
    v10 = np.vstack([p.mean(axis=1) for p in psis])
    v01 = np.vstack([p.mean(axis=0) for p in psis])
    cov = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return np.array([p.mean() for p in psis]), v10, v01, cov


# --------------------------------------------------------------------------- DeLong components


def test_delong_components_against_brute_force():
    """Bugs: midranks, AUC or placement formulas (Sun & Xu) wrong, rows or classes mixed up. Unequal
    class sizes (5 positives, 7 negatives), ties within and across classes, two score rows."""
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0])
    a = np.array([0.9, 0.3, 0.6, 0.6, 0.2, 0.6, 0.1, 0.4, 0.4, 0.8, 0.5, 0.3])
    b = np.array([0.2, 0.7, 0.5, 0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.5, 0.6, 0.4])
    aucs, v10, v01 = D._delong_components(y, np.vstack([a, b]))
    want_auc, want10, want01, want_cov = brute(y, a, b)
    np.testing.assert_allclose(aucs, want_auc, atol=1e-14)
    np.testing.assert_allclose(v10, want10, atol=1e-14)
    np.testing.assert_allclose(v01, want01, atol=1e-14)
    np.testing.assert_allclose(aucs, [skm.roc_auc_score(y, a), skm.roc_auc_score(y, b)], atol=1e-14)
    got_aucs, cov = D._delong_covariance(y, np.vstack([a, b]))
    np.testing.assert_allclose(cov, want_cov, atol=1e-14)
    np.testing.assert_array_equal(D._midrank(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])


@pytest.mark.parametrize("y", [[1, 1, 0, 0], [0, 1, 0, 1, 0, 0, 0], [1, 0, 1, 1, 1, 0]])
def test_delong_two_of_each_class_is_enough(y):
    """Bug: the class-size check off by one (exactly 2 positives or 2 negatives must work)."""
    y = np.array(y)
    s = np.linspace(0.1, 0.9, y.size)
    res = D.auc_delong(y, s)
    auc, _, _, cov = brute(y, s)
    assert res["auc"] == pytest.approx(auc[0], abs=1e-14) and res["variance"] == pytest.approx(cov[0, 0], abs=1e-14)


@pytest.mark.parametrize(
    "y, counts", [([1, 0, 0, 0, 0], "1 positive, 4 negative"), ([0, 1, 1, 1], "3 positive, 1 negative")]
)
def test_delong_one_of_a_class_rejected(y, counts):
    """Bug: a single sample of one class accepted (its variance is undefined); the message gives the counts."""
    with pytest.raises(ValueError, match=counts):
        D.auc_delong(y, np.linspace(0, 1, len(y)))
    with pytest.raises(ValueError, match=counts):
        D.delong_paired_test(y, np.linspace(0, 1, len(y)), np.linspace(1, 0, len(y)))


# --------------------------------------------------------------------------- auc_delong intervals


def test_auc_delong_clips_low_at_zero_and_handles_auc_zero():
    """Bugs: the interval not clipped at 0; a zero-variance AUC of 0 not giving (0, 0)."""
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = 1.0 - np.array([0.9, 0.6, 0.4, 0.6, 0.3, 0.2, 0.1])  # AUC 1/8, variance 1/48
    res = D.auc_delong(y, s)
    assert res["auc"] == pytest.approx(1 / 8, abs=1e-15)
    assert res["low"] == 0.0 and res["high"] == pytest.approx(1 / 8 + Z95 * math.sqrt(1 / 48), abs=1e-13)
    worst = D.auc_delong([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])
    assert worst["auc"] == 0.0 and worst["low"] == worst["high"] == 0.0 and worst["variance"] == 0.0


# --------------------------------------------------------------------------- delong_paired_test


def test_paired_zero_variance_different_aucs():
    """Bugs: a zero-variance difference with unequal AUCs not given z = +/-inf, p = 0 (sign from the
    difference). A perfect model against a constant: every placement constant, AUC 1 vs 1/2."""
    y = np.array([1, 1, 1, 0, 0, 0])
    perfect, flat = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), np.full(6, 0.5)
    up = D.delong_paired_test(y, perfect, flat)
    assert up["z"] == math.inf and up["p_value"] == 0.0 and up["difference"] == 0.5
    assert up["low"] == up["high"] == 0.5 and up["variance_a"] == up["variance_b"] == up["covariance"] == 0.0
    down = D.delong_paired_test(y, flat, perfect)
    assert down["z"] == -math.inf and down["p_value"] == 0.0 and down["difference"] == -0.5
    same = D.delong_paired_test(y, flat, np.full(6, 0.2))
    assert same["z"] == 0.0 and same["p_value"] == 1.0 and same["difference"] == 0.0


def test_paired_values_and_alpha():
    """Bugs: the difference interval's half-width (z_{1-alpha/2} sqrt(var)), alpha ignored, variances and
    covariance swapped or mis-signed; a tiny but real variance treated as zero."""
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0])
    a = np.array([0.9, 0.3, 0.6, 0.6, 0.2, 0.6, 0.1, 0.4, 0.4, 0.8, 0.5, 0.3])
    b = np.array([0.2, 0.7, 0.5, 0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.5, 0.6, 0.4])
    aucs, _, _, cov = brute(y, a, b)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    for alpha, z in ((0.05, Z95), (0.1, Z90)):
        r = D.delong_paired_test(y, a, b, alpha=alpha)
        assert r["auc_a"] == pytest.approx(aucs[0], abs=1e-14) and r["auc_b"] == pytest.approx(aucs[1], abs=1e-14)
        assert r["variance_a"] == pytest.approx(cov[0, 0], abs=1e-14)
        assert r["variance_b"] == pytest.approx(cov[1, 1], abs=1e-14)
        assert r["covariance"] == pytest.approx(cov[0, 1], abs=1e-14) and cov[0, 1] < 0
        assert r["low"] == pytest.approx(diff - z * math.sqrt(var), abs=1e-13)
        assert r["high"] == pytest.approx(diff + z * math.sqrt(var), abs=1e-13)
        assert r["z"] == pytest.approx(diff / math.sqrt(var), rel=1e-12)
        assert r["p_value"] == pytest.approx(2 * norm.sf(abs(diff) / math.sqrt(var)), rel=1e-12)
    # a tiny difference between two models: variance ~1e-6 of the single-model variance, still tested
    y2 = np.r_[np.ones(20, int), np.zeros(20, int)]
    base = np.linspace(0.0, 1.0, 40)[np.random.default_rng(1).permutation(40)]
    other = base.copy()
    i, j = np.flatnonzero(y2 == 1)[0], np.flatnonzero(y2 == 0)[0]
    other[i], other[j] = base[j], base[i]  # one positive and one negative swapped
    r = D.delong_paired_test(y2, base, other)
    aucs2, _, _, cov2 = brute(y2, base, other)
    var2 = cov2[0, 0] + cov2[1, 1] - 2 * cov2[0, 1]
    assert r["difference"] != 0 and math.isfinite(r["z"])
    assert r["z"] == pytest.approx((aucs2[0] - aucs2[1]) / math.sqrt(var2), rel=1e-9)


# --------------------------------------------------------------------------- ROC / PR


def test_roc_curve_finite_first_threshold():
    """Bugs: the first (nobody positive) threshold wrong for probabilities with a 0 score, a score of
    exactly 1, logits, and scores so large that max + 1 rounds back to max; the rest of the curve changed."""
    y = np.array([1, 0, 1, 0, 1, 0])
    cases = [
        (np.array([0.0, 0.0, 0.4, 0.2, 0.9, 0.5]), 1.0),
        (np.array([1.0, 0.0, 0.4, 0.2, 0.9, 0.5]), float(np.nextafter(1.0, 2.0))),
        (np.array([2.5, -1.0, 0.4, 0.2, 0.9, 0.5]), 3.5),
        (np.array([0.5, -1.0, 0.4, 0.2, 0.9, 0.1]), 1.9),
        (np.array([0.0, 0.3, 1.5, 0.2, 0.9, 0.1]), 2.5),
        (np.array([1e17, 0.0, 5.0, 1.0, 7.0, 2.0]), float(np.nextafter(1e17, np.inf))),
    ]
    for s, first in cases:
        fpr, tpr, thr = R.roc_curve_finite(y, s)
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s)
        assert thr[0] == first, (s, thr[0])
        assert thr.dtype == np.float64 and np.isfinite(thr).all()
        np.testing.assert_array_equal(thr[1:], sk_thr[1:])
        np.testing.assert_array_equal(fpr, sk_fpr)
        np.testing.assert_array_equal(tpr, sk_tpr)
        assert not (s >= thr[0]).any()


def test_roc_and_pr_drop_intermediate():
    """Bugs: drop_intermediate not passed through (defaults: ROC drops, PR keeps every threshold)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    s = np.round(rng.uniform(size=60), 2)
    for drop in (True, False):
        _, _, thr = R.roc_curve_finite(y, s, drop_intermediate=drop)
        assert thr.size == skm.roc_curve(y, s, drop_intermediate=drop)[2].size
    assert R.roc_curve_finite(y, s)[2].size == skm.roc_curve(y, s, drop_intermediate=True)[2].size
    assert R.roc_curve_finite(y, s)[2].size < skm.roc_curve(y, s, drop_intermediate=False)[2].size
    p, r, t = R.pr_curve(y, s)
    sp, sr, st = skm.precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(p, sp)
    np.testing.assert_array_equal(r, sr)
    np.testing.assert_array_equal(t, st)
    assert t.size == np.unique(s).size
    assert (
        R.pr_curve(y, s, drop_intermediate=True)[2].size
        == skm.precision_recall_curve(y, s, drop_intermediate=True)[2].size
        < t.size
    )
    assert R.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-15)


# --------------------------------------------------------------------------- bootstraps


def _sk_auc_diff(pos_a, neg_a, pos_b, neg_b):
    def statistic(i, j):
        labels = np.r_[np.ones(i.size), np.zeros(j.size)]
        return skm.roc_auc_score(labels, np.r_[pos_a[i], neg_a[j]]) - skm.roc_auc_score(
            labels, np.r_[pos_b[i], neg_b[j]]
        )

    return statistic


@pytest.mark.parametrize("seed, alpha, n", [(0, 0.05, 199), (5, 0.1, 150)])
def test_auc_bootstrap_against_independent_bootstrap(seed, alpha, n):
    """Bugs: the bootstrap interval not stratified, its level, seed, resample count or statistic wrong.
    The same resamples (scipy, same seed) with sklearn's AUC as the statistic, one resample at a time."""
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(9, int), np.zeros(14, int)]
    s = np.round(np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(scale=0.25, size=y.size), 0, 1), 1)  # ties
    pos, neg = s[y == 1], s[y == 0]

    def statistic(p, q):
        return skm.roc_auc_score(np.r_[np.ones(p.size), np.zeros(q.size)], np.r_[p, q])

    ref = stats.bootstrap(
        (pos, neg),
        statistic,
        n_resamples=n,
        vectorized=False,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    dist = ref.bootstrap_distribution
    res = R.auc_bootstrap(y, s, n_resamples=n, seed=seed, alpha=alpha)
    assert res["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-15)
    assert res["low"] == pytest.approx(np.percentile(dist, 100 * alpha / 2), abs=1e-12)
    assert res["high"] == pytest.approx(np.percentile(dist, 100 * (1 - alpha / 2)), abs=1e-12)
    assert res["std"] == pytest.approx(np.std(dist, ddof=1), abs=1e-12)
    assert res["n_resamples"] == n and res["seed"] == seed
    assert type(res["n_resamples"]) is int and all(type(res[k]) is float for k in ("auc", "low", "high", "std"))


def test_paired_bootstrap_against_independent_bootstrap():
    """Bugs: the paired bootstrap's interval, its p-value counting (ties d = 0 count on both sides,
    (1 + count) / (1 + B)) or its resampling wrong. Small classes make d = 0 frequent."""
    y = np.r_[np.ones(5, int), np.zeros(6, int)]
    a = np.array([0.9, 0.7, 0.6, 0.4, 0.35, 0.5, 0.3, 0.45, 0.2, 0.1, 0.05])
    b = np.array([0.9, 0.7, 0.6, 0.4, 0.25, 0.5, 0.3, 0.45, 0.2, 0.1, 0.05])  # differs in one positive only
    pos_a, neg_a, pos_b, neg_b = a[y == 1], a[y == 0], b[y == 1], b[y == 0]
    for seed, n, alpha in ((0, 300, 0.05), (3, 101, 0.2)):
        ref = stats.bootstrap(
            (np.arange(5), np.arange(6)),
            _sk_auc_diff(pos_a, neg_a, pos_b, neg_b),
            n_resamples=n,
            vectorized=False,
            confidence_level=1 - alpha,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        d = ref.bootstrap_distribution
        zeros, below, above = int(np.sum(np.isclose(d, 0, atol=1e-12))), int(np.sum(d < -1e-12)), int(np.sum(d > 1e-12))
        assert zeros > 10 and above > 10 and below == 0  # b is a worse a: d >= 0, often exactly 0
        p_le, p_ge = (1 + below + zeros) / (1 + n), (1 + above + zeros) / (1 + n)
        res = R.paired_bootstrap_auc(y, a, b, n_resamples=n, seed=seed, alpha=alpha)
        assert res["p_value"] == pytest.approx(min(1.0, 2 * min(p_le, p_ge)), abs=1e-15)
        assert res["low"] == pytest.approx(np.percentile(d, 100 * alpha / 2), abs=1e-12)
        assert res["high"] == pytest.approx(np.percentile(d, 100 * (1 - alpha / 2)), abs=1e-12)
        assert res["auc_a"] == skm.roc_auc_score(y, a) and res["auc_b"] == skm.roc_auc_score(y, b)
        assert res["difference"] == pytest.approx(res["auc_a"] - res["auc_b"], abs=1e-15) and res["difference"] > 0
        assert res["n_resamples"] == n and res["seed"] == seed
        swapped = R.paired_bootstrap_auc(y, b, a, n_resamples=n, seed=seed, alpha=alpha)
        assert swapped["p_value"] == res["p_value"] and swapped["difference"] == -res["difference"]


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bootstrap_rejects_bad_resample_counts(bad):
    """Bug: a resample count that is not a positive integer accepted (the message gives it)."""
    with pytest.raises(ValueError, match=f"n_resamples must be a positive integer, got {bad}"):
        R.auc_bootstrap([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], n_resamples=bad)
    with pytest.raises(ValueError, match="n_resamples"):
        R.paired_bootstrap_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [0.9, 0.4, 0.5, 0.1], n_resamples=bad)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the std of one resample is NaN
def test_bootstrap_one_resample_and_float_count():
    """Bug: the smallest valid count (1) or an integral float (2.0) rejected."""
    assert R._check_resamples(1) == 1 and R._check_resamples(2.0) == 2 and type(R._check_resamples(2.0)) is int
    res = R.paired_bootstrap_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [0.9, 0.4, 0.5, 0.1], n_resamples=1)
    assert res["p_value"] == 1.0 and res["n_resamples"] == 1


def test_paired_tests_name_the_bad_argument():
    """Bug: a NaN in one model's scores reported under the other model's name."""
    y, good, bad = [1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [0.9, np.nan, 0.5, 0.1]
    for test in (D.delong_paired_test, R.paired_bootstrap_auc):
        with pytest.raises(ValueError, match="^scores_a contains NaN"):
            test(y, bad, good)
        with pytest.raises(ValueError, match="^scores_b contains NaN"):
            test(y, good, bad)


def test_bootstrap_defaults():
    """Bug: the documented defaults (1000 resamples, seed 0) changed."""
    y, s = [1, 1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.5, 0.1, 0.3]
    res = R.auc_bootstrap(y, s)
    assert res == R.auc_bootstrap(y, s, n_resamples=1000, seed=0) and res["n_resamples"] == 1000 and res["seed"] == 0
    res = R.paired_bootstrap_auc(y, s, s[::-1])
    assert res == R.paired_bootstrap_auc(y, s, s[::-1], n_resamples=1000, seed=0) and res["n_resamples"] == 1000


def test_bootstrap_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        R.auc_bootstrap([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], n_resamples=10, alpha=1.0)


def test_internal_auc_axis():
    """Bug: _auc divides by the wrong axis' sizes (rows of resamples of unequal class sizes)."""
    pos = np.array([[0.9, 0.8, 0.3], [0.2, 0.1, 0.6]])
    neg = np.array([[0.5, 0.4], [0.7, 0.1]])
    got = R._auc(pos, neg)
    want = [psi_matrix(np.r_[1, 1, 1, 0, 0], np.r_[p, q]).mean() for p, q in zip(pos, neg)]
    np.testing.assert_allclose(got, want, atol=1e-15)
    np.testing.assert_allclose(R._auc(pos.T, neg.T, axis=0), want, atol=1e-15)
