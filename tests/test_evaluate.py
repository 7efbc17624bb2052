"""Operating point, proportions, calibration, plot tables and the evaluate stage's assembly
(deepcovid/evaluation/{proportions,calibration,plot_data,evaluate}.py) at the boundaries their code
branches on, against brute force, statsmodels and hand-worked numbers.

Written to kill the surviving mutants of mutation testing (bench/mutation.sh).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from deepcovid.evaluation import calibration as C
from deepcovid.evaluation import evaluate as E
from deepcovid.evaluation import plot_data as PD
from deepcovid.evaluation import proportions as P

REPO = Path(__file__).resolve().parents[1]
Z95 = float(norm.ppf(0.975))


# --------------------------------------------------------------------------- operating point


def brute_threshold(y, s, target):
    """Highest observed score t with mean(pos >= t) >= target, trying every observed score."""
    pos = s[y == 1]
    return max(t for t in s if np.mean(pos >= t) >= target)


@pytest.mark.parametrize("target", [0.0, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 0.8, 0.98, 1.0])
def test_threshold_for_sensitivity_brute_force(target):
    """Bugs: the k-th largest positive score off by one, the rounding guards wrong at targets that are
    exact multiples of 1/n_pos (0.25, 0.5, 0.75 with 4 positives; 0.2, 0.6, 0.8 with 5)."""
    for y, s in (
        (np.array([1, 1, 1, 1, 0, 0, 0]), np.array([0.9, 0.7, 0.4, 0.2, 0.95, 0.5, 0.1])),
        (np.array([1, 1, 1, 1, 1, 0, 0, 0]), np.array([0.8, 0.6, 0.6, 0.3, 0.1, 0.7, 0.2, 0.05])),
    ):
        assert P.threshold_for_sensitivity(y, s, target) == brute_threshold(y, s, target), (target, s)


def test_threshold_for_sensitivity_target_zero_is_max_score():
    """Bug: target 0 not the largest score of all (here a negative's)."""
    assert P.threshold_for_sensitivity([1, 0, 1], [0.3, 0.9, 0.2], 0.0) == 0.9


@pytest.mark.parametrize("target", [-0.01, 1.01])
def test_threshold_for_sensitivity_rejects_target(target):
    with pytest.raises(ValueError, match=f"got {target}"):
        P.threshold_for_sensitivity([1, 0], [0.3, 0.2], target)


# --------------------------------------------------------------------------- proportions


@pytest.mark.parametrize(
    "method, sm",
    [
        ("wilson", "wilson"),
        ("clopper-pearson", "beta"),
        ("exact", "beta"),
        ("beta", "beta"),
        ("jeffreys", "jeffreys"),
        ("Wilson", "wilson"),
        ("CLOPPER-PEARSON", "beta"),
    ],
)
def test_proportion_ci_methods(method, sm):
    """Bugs: a method alias mapped to the wrong statsmodels method; case not ignored; alpha ignored."""
    for k, n, alpha in ((7, 9, 0.05), (0, 5, 0.1), (5, 5, 0.2)):
        got = P.proportion_ci(k, n, method=method, alpha=alpha)
        assert got == pytest.approx(proportion_confint(k, n, alpha=alpha, method=sm), abs=1e-14)
        assert all(type(v) is float for v in got)


def test_proportion_ci_paper_methods():
    """Bugs: 'paper' clipped or 'paper-clipped' not clipped (p = 1/10 at n = 10: low below 0)."""
    r = Z95 * math.sqrt(0.1 * 0.9 / 10)
    assert P.proportion_ci(1, 10, method="paper") == pytest.approx((0.1 - r, 0.1 + r), abs=1e-15)
    assert P.proportion_ci(1, 10, method="paper-clipped") == pytest.approx((0.0, 0.1 + r), abs=1e-15)
    assert P.proportion_ci(9, 10, method="Paper-Clipped") == pytest.approx((0.9 - r, 1.0), abs=1e-15)
    assert P.proportion_ci(1, 10, method="paper-clipped") == pytest.approx(
        proportion_confint(1, 10, method="normal"), abs=1e-14
    )
    with pytest.raises(ValueError, match="'agresti'.*clopper-pearson.*paper-clipped"):
        P.proportion_ci(1, 10, method="agresti")


@pytest.mark.parametrize(
    "k, n, fragment",
    [
        (2.5, 10, "integers"),
        (1, 2.5, "integers"),
        (0, 0, "positive"),
        (-1, 5, "in \\[0, n\\]"),
        (6, 5, "in \\[0, n\\]"),
    ],
)
def test_counts_rejected(k, n, fragment):
    with pytest.raises(ValueError, match=fragment):
        P.proportion_ci(k, n)
    with pytest.raises(ValueError, match=fragment):
        P.paper_interval(k, n)


def test_counts_limits_accepted():
    """Bugs: 0 of n, n of n or integral floats rejected."""
    assert P.proportion_ci(0, 1) == pytest.approx(proportion_confint(0, 1, method="wilson"), abs=1e-14)
    assert P.proportion_ci(3.0, 3.0) == pytest.approx(proportion_confint(3, 3, method="wilson"), abs=1e-14)


def test_paper_interval_flags_at_the_edges():
    """Bugs: outside_unit true when a bound touches 0 or 1 exactly; clipping wrong."""
    for k, n in ((0, 7), (7, 7)):
        iv = P.paper_interval(k, n)
        assert iv.radius == 0.0 and not iv.outside_unit and iv.low_clipped == iv.low and iv.high_clipped == iv.high
    lo = P.paper_interval(1, 10)
    assert lo.outside_unit and lo.low < 0 and lo.low_clipped == 0.0 and lo.high_clipped == lo.high
    hi = P.paper_interval(9, 10, alpha=0.1)
    r90 = float(norm.ppf(0.95)) * math.sqrt(0.09 / 10)
    assert hi.outside_unit and hi.high == pytest.approx(0.9 + r90, abs=1e-15) and hi.high_clipped == 1.0
    mid = P.paper_interval(5, 10)
    assert not mid.outside_unit and mid.p == 0.5


def test_threshold_table_arguments():
    """Bugs: a scalar threshold refused; NaN, 2-D or non-numeric thresholds accepted; alpha ignored."""
    y, s = np.array([1, 1, 0, 0, 1]), np.array([0.9, 0.4, 0.5, 0.1, 0.6])
    t = P.threshold_table(y, s, 0.5, alpha=0.2)
    assert list(t["threshold"]) == [0.5] and t.loc[0, "tp"] == 2 and t.loc[0, "fp"] == 1
    assert (t.loc[0, "sensitivity_low"], t.loc[0, "sensitivity_high"]) == pytest.approx(
        proportion_confint(2, 3, alpha=0.2, method="wilson"), abs=1e-14
    )
    assert t.loc[0, "paper_specificity_radius"] == pytest.approx(float(norm.ppf(0.9)) * math.sqrt(0.25 / 2), abs=1e-14)
    for bad, fragment in (([0.5, float("nan")], "NaN"), ([[0.5]], "1-D"), (["a"], "1-D"), ([object()], "1-D")):
        with pytest.raises(ValueError, match=fragment):
            P.threshold_table(y, s, bad)


def test_summarize_values():
    """Bugs: counts, rates or intervals of summarize taken from the wrong cell."""
    y, s = np.array([1, 1, 1, 0, 0, 0, 0]), np.array([0.9, 0.5, 0.2, 0.5, 0.3, 0.6, 0.1])
    out = P.summarize(y, s, 0.5, method="jeffreys", alpha=0.1)
    assert (out["tp"], out["fn"], out["tn"], out["fp"]) == (2, 1, 2, 2)
    assert (out["n"], out["n_pos"], out["n_neg"]) == (7, 3, 4)
    assert out["sensitivity"] == 2 / 3 and out["specificity"] == 0.5
    assert (out["sensitivity_low"], out["sensitivity_high"]) == pytest.approx(
        proportion_confint(2, 3, alpha=0.1, method="jeffreys"), abs=1e-14
    )
    assert (out["specificity_low"], out["specificity_high"]) == pytest.approx(
        proportion_confint(2, 4, alpha=0.1, method="jeffreys"), abs=1e-14
    )
    assert out["ci_method"] == "jeffreys" and out["alpha"] == 0.1 and out["threshold"] == 0.5


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("bins", [0, -1, 2.5])
def test_bins_rejected(bins):
    with pytest.raises(ValueError, match=f"n_bins must be a positive integer, got {bins}"):
        C.reliability_table([1, 0], [0.3, 0.2], n_bins=bins)


def test_one_uniform_bin_and_single_class():
    """Bugs: n_bins = 1 refused; a single class refused; scores of exactly 0 and 1 lost."""
    table = C.reliability_table([1, 1, 1], [0.0, 1.0, 0.5], n_bins=1)
    assert list(table["count"]) == [3] and table.loc[0, "bin_low"] == 0.0 and table.loc[0, "bin_high"] == 1.0
    assert C.expected_calibration_error([1, 1, 1], [0.0, 1.0, 0.5], n_bins=1) == pytest.approx(0.5)
    two = C.reliability_table([0, 1, 1], [0.0, 0.5, 1.0], n_bins=2)
    assert list(two["count"]) == [1, 2]


# --------------------------------------------------------------------------- plot tables


def test_pr_frame_last_threshold():
    """Bug: the last PR point (recall 0) not above every score: 1.0, or the next float when a score is 1."""
    f = PD.pr_frame(np.array([1, 0, 1]), np.array([0.9, 0.3, 0.6]))
    assert f["threshold"].iloc[-1] == 1.0 and list(f["threshold"].iloc[:-1]) == [0.3, 0.6, 0.9]
    assert f["recall"].iloc[-1] == 0.0 and f["precision"].iloc[-1] == 1.0
    g = PD.pr_frame(np.array([1, 0, 1]), np.array([1.0, 0.3, 0.6]))
    assert g["threshold"].iloc[-1] == np.nextafter(1.0, 2.0)


def test_roc_frame_columns():
    f = PD.roc_frame(np.array([1, 0, 1, 0]), np.array([0.9, 0.3, 0.6, 0.7]))
    assert list(f.columns) == ["fpr", "tpr", "threshold"]
    assert f["threshold"].iloc[0] == 1.0 and f["tpr"].iloc[-1] == 1.0 and f["fpr"].iloc[-1] == 1.0


def test_confusion_frame_rows():
    """Bugs: the threshold not inclusive, class names swapped, ids lost."""
    f = PD.confusion_frame([1, 0, 1, 0], [0.5, 0.5, 0.4, 0.1], 0.5, ["a", "b", "c", "d"])
    assert f.to_dict("list") == {
        "image_id": ["a", "b", "c", "d"],
        "actual": ["COVID-19", "non-COVID", "COVID-19", "non-COVID"],
        "predicted": ["COVID-19", "COVID-19", "non-COVID", "non-COVID"],
    }


def test_score_histogram_groups_and_edges():
    """Bugs: bin edges or centres not rounded, a score of 1 or on an edge in the wrong bin, extra groups
    not appended in sorted order, a missing standard group not given zeros."""
    s = [0.0, 0.15, 0.15, 0.3, 1.0, 0.95, 0.5]
    g = ["covid", "normal", "zeta", "covid", "covid", "alpha", "normal"]
    f = PD.score_histogram(s, g, bins=20)
    assert list(f.columns) == ["bin_low", "bin_high", "score", "covid", "normal", "other_disease", "alpha", "zeta"]
    assert f.loc[3, "bin_low"] == 0.15 and f.loc[3, "score"] == 0.175 and f.loc[19, "bin_high"] == 1.0
    assert f["covid"].tolist()[0] == 1 and f.loc[6, "covid"] == 1 and f.loc[19, "covid"] == 1
    assert f.loc[3, "normal"] == 1 and f.loc[10, "normal"] == 1 and f.loc[3, "zeta"] == 1 and f.loc[19, "alpha"] == 1
    assert f["other_disease"].sum() == 0 and f[["covid", "normal", "alpha", "zeta"]].to_numpy().sum() == 7
    assert f["covid"].dtype == np.int64


def test_calibration_frame_drops_empty_bins():
    f = PD.calibration_frame(np.array([1, 0, 1]), np.array([0.05, 0.12, 0.95]), bins=10)
    assert list(f["bin_low"]) == [0.0, 0.1, 0.9] and list(f["count"]) == [1, 1, 1]
    assert list(f["perfect"]) == list(f["mean_predicted"]) == [0.05, 0.12, 0.95]
    assert list(f.index) == [0, 1, 2]


# --------------------------------------------------------------------------- evaluate's assembly


def _frame(test, val=()):
    rows = [
        {
            "image_id": f"{split}{i}",
            "label": int(lab),
            "split": split,
            "score": float(sc),
            "group": "covid" if lab else "normal",
        }
        for split, data in (("test", test), ("val", val))
        for i, (lab, sc) in enumerate(data)
    ]
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype(np.int64)
    return df


TEST = [(1, 0.9), (1, 0.8), (1, 0.55), (1, 0.3), (0, 0.6), (0, 0.4), (0, 0.2), (0, 0.1), (0, 0.05)]


def test_val_with_one_class_falls_back(cfg, caplog):
    """Bugs: a single-class validation split used for the threshold; the warning saying otherwise."""
    df = _frame(TEST, [(1, 0.7), (1, 0.6)])
    with caplog.at_level("WARNING", logger="evaluate"):
        res = E.evaluate(df, cfg, name="run")
    assert res.details["settings"]["operating_point_chosen_on"] == "test" and "val" not in res.details
    assert res.threshold == 0.3  # sensitivity 0.98 on test: the lowest positive
    assert len(res.warnings) == 1 and "the validation split holds a single class" in res.warnings[0]
    assert res.warnings[0].startswith("run: ")
    res2 = E.evaluate(_frame(TEST), cfg)
    assert "no validation split" in res2.warnings[0]
    assert not E.evaluate(_frame(TEST, [(1, 0.7), (1, 0.6), (0, 0.2), (0, 0.1)]), cfg).warnings


def test_test_split_needs_both_classes(cfg):
    with pytest.raises(ValueError, match="run: the test split needs both classes.*3 rows, 3 COVID-19"):
        E.evaluate(_frame([(1, 0.9), (1, 0.8), (1, 0.7)], [(1, 0.5), (0, 0.1)]), cfg, name="run")


def test_auc_interval_method(cfg):
    """Bugs: the configured AUC interval method ignored; errors other than DeLong's class-size error
    swallowed; the settings not recording the bootstrap and its resample count.

    (The fallback from DeLong to the bootstrap for a class of one sample cannot succeed: scipy's
    bootstrap needs two observations per class too; see the report of the mutation-testing work.)"""
    c = cfg.model_copy(update=dict(bootstrap_resamples=50))
    y2, s2 = np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.3, 0.2, 0.4, 0.1])
    d = E.auc_with_ci(y2, s2, c)
    assert d["auc_ci_method"] == "delong" and d["auc"] == pytest.approx(5 / 6)
    b = E.auc_with_ci(y2, s2, c.model_copy(update=dict(auc_ci="bootstrap")))
    assert b["auc_ci_method"] == "bootstrap" and b["auc"] == pytest.approx(5 / 6) and b["auc_low"] != d["auc_low"]
    with pytest.raises(ValueError, match="alpha"):
        E.auc_with_ci(y2, s2, c.model_copy(update=dict(alpha=2.0)))
    res = E.evaluate(_frame(TEST), c.model_copy(update=dict(auc_ci="bootstrap")))
    st = res.details["settings"]
    assert st["auc_ci_method"] == "bootstrap" and st["bootstrap_resamples"] == 50
    res = E.evaluate(_frame(TEST), c)
    assert res.details["settings"]["auc_ci_method"] == "delong" and res.details["settings"]["bootstrap_resamples"] == 0


def test_ordered_types_and_order():
    """Bugs: the headline keys not first, numpy types or non-finite floats let into the metrics JSON."""
    out = E._ordered(
        {"zz": np.float64(0.5), "n": np.int64(3), "flag": np.bool_(True), "auc": 0.9, "threshold": 1, "b": False}
    )
    assert list(out) == ["threshold", "auc", "n", "zz", "flag", "b"]
    assert [type(v) for v in out.values()] == [int, float, int, float, bool, bool]
    with pytest.raises(ValueError, match="non-finite"):
        E._ordered({"auc": float("nan")})
    with pytest.raises(ValueError, match="non-finite"):
        E._finite(float("inf"))


def test_paper_intervals_values():
    """Bugs: the paper interval of sensitivity computed on the specificity's counts, or the flags mixed."""
    out = E.paper_intervals({"tp": 1, "n_pos": 10, "tn": 5, "n_neg": 10}, 0.05)
    r1, r5 = Z95 * math.sqrt(0.09 / 10), Z95 * math.sqrt(0.25 / 10)
    assert out["paper_sensitivity_low"] == pytest.approx(0.1 - r1) and out["paper_sensitivity_low_clipped"] == 0.0
    assert out["paper_specificity_high"] == pytest.approx(0.5 + r5)
    assert out["paper_sensitivity_outside_unit"] and not out["paper_specificity_outside_unit"]
    assert out["paper_interval_outside_unit"]
    out = E.paper_intervals({"tp": 5, "n_pos": 10, "tn": 9, "n_neg": 10}, 0.05)
    assert not out["paper_sensitivity_outside_unit"] and out["paper_specificity_outside_unit"]
    assert out["paper_interval_outside_unit"] and out["paper_specificity_high_clipped"] == 1.0
    assert not E.paper_intervals({"tp": 5, "n_pos": 10, "tn": 5, "n_neg": 10}, 0.05)["paper_interval_outside_unit"]


def test_metrics_compact_view(cfg):
    """Bug: the compact metrics (metrics/evaluate.json) not the listed keys of each section."""
    res = E.evaluate(_frame(TEST, [(1, 0.7), (1, 0.5), (0, 0.3), (0, 0.1)]), cfg)
    m = res.metrics
    assert list(m) == ["test", "val", "paper_style"]  # no external rows: no external section
    for section, keys in E.COMPACT_KEYS.items():
        if section == "external":
            continue
        assert list(m[section]) == list(keys)
        assert all(m[section][k] == res.details[section][k] for k in keys)
    assert res.threshold == res.details["test"]["threshold"] == 0.5
    assert res.details["test"]["prevalence"] == pytest.approx(4 / 9)


def test_reliability_table_empty_bins_are_nan_with_integer_counts():
    table = C.reliability_table([0, 1, 1], [0.05, 0.92, 0.97], n_bins=4)
    assert table["count"].tolist() == [1, 0, 0, 2] and table["count"].dtype == np.int64
    assert table["mean_predicted"].isna().tolist() == [False, True, True, False]
    assert table["fraction_positive"].isna().tolist() == [False, True, True, False]
    assert table["mean_predicted"].iloc[3] == pytest.approx(0.945) and table["fraction_positive"].iloc[0] == 0.0


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
def test_threshold_rows_name_their_interval_method(cfg, method):
    cfg = cfg.model_copy(update=dict(ci_method=method, thresholds=(0.3, 0.6)))
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.7])
    table = E.threshold_rows(y, s, cfg)
    assert table.columns[0] == "ci_method" and table["ci_method"].tolist() == [method, method]
    low, high = proportion_confint(3, 3, alpha=cfg.alpha, method="beta" if method == "clopper-pearson" else method)
    assert table["sensitivity_low"].iloc[0] == pytest.approx(low)  # 3 of 3 positives at 0.3
