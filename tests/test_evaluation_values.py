"""Values of the evaluation, pinned against independent computations.

The other evaluation tests check column names and finiteness; these check the NUMBERS: each
value the evaluate stage computes or writes (metrics/evaluate.json, metrics/thresholds.csv,
plots/{roc,pr,scores,calibration,confusion}.csv) is recomputed here from its definition, by
hand or with scikit-learn / statsmodels / numpy, never with the metric modules under test.

Each test names, in its docstring, the planted bugs it is meant to catch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from statsmodels.stats.proportion import proportion_confint

from conftest import evaluate_to
from deepcovid.evaluation import calibration as C
from deepcovid.evaluation import proportions as P
from deepcovid.evaluation.evaluate import evaluate, threshold_rows
from deepcovid.evaluation.plot_data import calibration_frame, score_histogram

REPO = Path(__file__).resolve().parents[1]
Z95 = float(norm.ppf(0.975))  # 1.959963984540054
COLUMNS = ["image_id", "source", "patient", "label", "group", "category", "split", "score"]


# --------------------------------------------------------------------------- data


def value_predictions(seed: int = 20240611) -> pd.DataFrame:
    """Validation (50 COVID-19, 90 other) and test (80 COVID-19, 160 other) with continuous scores.

    Scores are logistic of shifted normals (no score on a bin edge: checked by the tests that need
    it); two test negatives are tied with test positives (DeLong's 1/2 for ties), and one test
    positive and one test negative score exactly the validation operating point (``>=`` counts them
    as predicted COVID-19), with the test split's own 0.98 threshold below it. Negatives are
    ``normal`` or ``other-disease`` in an irregular pattern, so the score histograms differ per group.
    """
    rng = np.random.default_rng(seed)
    rows = []
    t_val = None
    for split, npos, nneg, shift in (("val", 50, 90, 2.0), ("test", 80, 160, 1.6)):
        pos = 1.0 / (1.0 + np.exp(-(rng.normal(size=npos) + shift / 2)))
        neg = 1.0 / (1.0 + np.exp(-(1.3 * rng.normal(size=nneg) - shift / 2)))
        if split == "val":
            t_val = hand_threshold(np.r_[np.ones(npos), np.zeros(nneg)], np.r_[pos, neg], 0.98)
        else:
            neg[0], neg[1] = pos[3], pos[10]  # ties across the classes
            pos[0] = neg[2] = t_val  # on the operating point
            pos[1] = 0.1492  # a third low positive: test's own 0.98 threshold is then below t_val
        for i, s in enumerate(pos):
            rows.append(
                {
                    "image_id": f"{split}-c{i}",
                    "source": "syn",
                    "patient": f"{split}-pc{i}",
                    "label": 1,
                    "group": "covid",
                    "category": "covid",
                    "split": split,
                    "score": float(s),
                }
            )
        for i, s in enumerate(neg):
            g = "normal" if (i * 7) % 5 < 3 else "other-disease"
            rows.append(
                {
                    "image_id": f"{split}-n{i}",
                    "source": "syn",
                    "patient": f"{split}-pn{i}",
                    "label": 0,
                    "group": g,
                    "category": g,
                    "split": split,
                    "score": float(s),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _split(df: pd.DataFrame, split: str):
    part = df[df["split"] == split]
    return (
        part["label"].to_numpy(dtype=np.int64),
        part["score"].to_numpy(dtype=float),
        part["group"].to_numpy(),
        part["image_id"].to_numpy(),
    )


# --------------------------------------------------------------------------- independent computations


def hand_threshold(y, s, target):
    """Highest observed score t with (#positives >= t) / n_pos >= target, from the definition."""
    pos = np.sort(np.asarray(s)[np.asarray(y) == 1])[::-1]
    for k in range(1, pos.size + 1):  # the k-th highest positive keeps k positives
        if k / pos.size >= target:
            return float(pos[k - 1])
    raise AssertionError("unreachable")


def hand_counts(y, s, t):
    y, s = np.asarray(y), np.asarray(s)
    tp = int(sum(1 for yi, si in zip(y, s) if yi == 1 and si >= t))
    fp = int(sum(1 for yi, si in zip(y, s) if yi == 0 and si >= t))
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    return tp, n_pos - tp, n_neg - fp, fp


def hand_ece(y, p, n_bins):
    """sum_b (n_b / N) |mean(y in b) - mean(p in b)| over equal-width bins [lo, hi), the last closed."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        inside = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() / p.size * abs(y[inside].mean() - p[inside].mean())
    return total


def brute_auc_var(y, s):
    """AUC and DeLong's variance from the definition: placements over all positive-negative pairs."""
    y, s = np.asarray(y), np.asarray(s, dtype=float)
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    m, n = x.size, z.size
    s10 = ((v10 - v10.mean()) ** 2).sum() / (m - 1)
    s01 = ((v01 - v01.mean()) ** 2).sum() / (n - 1)
    return psi.mean(), s10 / m + s01 / n


def paper_bounds(k, n, z=Z95):
    p = k / n
    r = z * math.sqrt(p * (1 - p) / n)
    return p - r, p + r


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, cfg):
    """value_predictions() through load_predictions, evaluate and write_outputs (the evaluate stage)."""
    return evaluate_to(tmp_path_factory.mktemp("values"), value_predictions(), cfg)


# --------------------------------------------------------------------------- the data is discriminating


def test_data_discriminates(cfg):
    """Guards: the planted data separates what the other tests must tell apart."""
    df = value_predictions()
    yv, sv, _, _ = _split(df, "val")
    yt, st, _, _ = _split(df, "test")
    assert cfg.calibration_bins == 10 and cfg.histogram_bins == 20 and cfg.target_sensitivity == 0.98
    t_val, t_test = hand_threshold(yv, sv, 0.98), hand_threshold(yt, st, 0.98)
    assert t_val != t_test and hand_counts(yt, st, t_val) != hand_counts(yt, st, t_test)
    for y, s in ((yv, sv), (yt, st)):
        assert abs(skm.average_precision_score(y, s) - skm.roc_auc_score(y, s)) > 0.01
        eces = {b: hand_ece(y, s, b) for b in (5, 7, 8, 10, 12, 15, 20)}
        assert min(abs(eces[10] - v) for b, v in eces.items() if b != 10) > 1e-4
        assert hand_ece(y, s, 10) > 0.01
        for k in (10, 20):  # no score on a bin edge (sklearn's calibration_curve puts edges in the lower bin)
            assert np.abs(s[:, None] - np.linspace(0, 1, k + 1)[None, :]).min() > 1e-6
    assert len(np.intersect1d(st[yt == 1], st[yt == 0])) == 3  # three cross-class ties on test
    assert ((st == t_val) & (yt == 1)).sum() == 1 and ((st == t_val) & (yt == 0)).sum() == 1


# --------------------------------------------------------------------------- operating point


def test_operating_point_chosen_on_val_applied_to_test(evaluated):
    """Bug: operating point chosen on the test split (or anything but val's highest threshold)."""
    df, result, paths = evaluated
    yv, sv, _, _ = _split(df, "val")
    yt, st, _, _ = _split(df, "test")
    t = hand_threshold(yv, sv, 0.98)
    data = json.loads(paths.metrics.read_text())
    assert data["test"]["threshold"] == t and data["val"]["threshold"] == t
    assert data["test"]["threshold_chosen_on_val"] is True
    tp, fn, tn, fp = hand_counts(yt, st, t)
    assert data["test"]["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-15)
    assert data["test"]["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-15)
    vtp, vfn, vtn, vfp = hand_counts(yv, sv, t)
    assert vtp / (vtp + vfn) >= 0.98 and data["val"]["sensitivity"] == pytest.approx(vtp / (vtp + vfn), abs=1e-15)
    # every observed validation score above t falls short of the target
    higher = sv[sv > t]
    assert all(hand_counts(yv, sv, h)[0] / 50 < 0.98 for h in higher)
    # the paper's choice on test is reported apart, with its own numbers
    t_test = hand_threshold(yt, st, 0.98)
    p = data["paper_style"]
    assert p["paper_style_test_threshold"] == t_test
    ptp, pfn, ptn, pfp = hand_counts(yt, st, t_test)
    assert (p["sensitivity"], p["specificity"]) == pytest.approx((ptp / 80, ptn / 160), abs=1e-15)
    details = json.loads(paths.details.read_text())
    assert (details["test"]["tp"], details["test"]["fn"], details["test"]["tn"], details["test"]["fp"]) == (
        tp,
        fn,
        tn,
        fp,
    )


# --------------------------------------------------------------------------- metrics/evaluate.json


@pytest.mark.parametrize("section", ["test", "val"])
def test_metrics_json_values(evaluated, cfg, section):
    """Bugs: ap computed as the AUC; ECE with another bin count (val too); AUC interval; Wilson
    intervals; the paper's interval (Eq. 3)."""
    df, _, paths = evaluated
    data = json.loads(paths.metrics.read_text())[section]
    y, s, _, _ = _split(df, section)
    t = hand_threshold(*_split(df, "val")[:2], 0.98)
    # AUC and DeLong interval from the pairwise definition
    auc, var = brute_auc_var(y, s)
    assert data["auc"] == pytest.approx(auc, abs=1e-12)
    assert data["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert data["auc_low"] == pytest.approx(max(0.0, auc - Z95 * math.sqrt(var)), abs=1e-10)
    assert data["auc_high"] == pytest.approx(min(1.0, auc + Z95 * math.sqrt(var)), abs=1e-10)
    # average precision, not the AUC
    assert data["ap"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    # ECE with the configured number of bins, weighted by bin counts
    assert data["ece"] == pytest.approx(hand_ece(y, s, cfg.calibration_bins), abs=1e-12)
    # sensitivity / specificity and Wilson intervals at the validation threshold
    tp, fn, tn, fp = hand_counts(y, s, t)
    assert data["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-15)
    assert data["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-15)
    np.testing.assert_allclose(
        (data["sensitivity_low"], data["sensitivity_high"]),
        proportion_confint(tp, tp + fn, alpha=0.05, method="wilson"),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        (data["specificity_low"], data["specificity_high"]),
        proportion_confint(tn, tn + fp, alpha=0.05, method="wilson"),
        atol=1e-12,
    )
    if section == "test":
        assert (data["n_pos"], data["n_neg"]) == (80, 160)
        np.testing.assert_allclose(
            (data["paper_sensitivity_low"], data["paper_sensitivity_high"]), paper_bounds(tp, tp + fn), atol=1e-12
        )
        np.testing.assert_allclose(
            (data["paper_specificity_low"], data["paper_specificity_high"]), paper_bounds(tn, tn + fp), atol=1e-12
        )
        outside = any(lo < 0 or hi > 1 for lo, hi in (paper_bounds(tp, tp + fn), paper_bounds(tn, tn + fp)))
        assert data["paper_interval_outside_unit"] is outside


def test_ece_uses_configured_bins_on_both_splits(cfg):
    """Bug: the validation (or test) ECE computed with another bin count than evaluate.calibration_bins."""
    df = value_predictions()
    for bins in (7, 15):
        other = cfg.model_copy(update=dict(calibration_bins=bins))
        m = evaluate(df, other).details
        for section in ("test", "val"):
            y, s, _, _ = _split(df, section)
            assert m[section]["ece"] == pytest.approx(hand_ece(y, s, bins), abs=1e-12), (bins, section)
            assert abs(hand_ece(y, s, bins) - hand_ece(y, s, 10)) > 1e-4  # the data tells the bin counts apart
        assert m["settings"]["calibration_bins"] == bins


def test_alpha_0_1_reaches_every_interval(cfg):
    """Bug: the interval alpha ignored (threshold table, operating point, AUC interval); also counts at
    thresholds equal to observed scores (predicted positive iff score >= threshold)."""
    df = value_predictions()
    y, s, _, _ = _split(df, "test")
    tied = sorted(set(s[y == 1]) & set(s[y == 0]))  # thresholds on observed scores of both classes
    c = cfg.model_copy(update=dict(alpha=0.1, thresholds=(0.2, 0.5, *tied)))
    result = evaluate(df, c)
    z90 = float(norm.ppf(0.95))
    t = result.details["test"]
    tp, fn, tn, fp = hand_counts(y, s, t["threshold"])
    np.testing.assert_allclose(
        (t["sensitivity_low"], t["sensitivity_high"]),
        proportion_confint(tp, tp + fn, alpha=0.1, method="wilson"),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        (t["specificity_low"], t["specificity_high"]),
        proportion_confint(tn, tn + fp, alpha=0.1, method="wilson"),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        (t["paper_sensitivity_low"], t["paper_sensitivity_high"]), paper_bounds(tp, tp + fn, z=z90), atol=1e-12
    )
    auc, var = brute_auc_var(y, s)
    np.testing.assert_allclose(
        (t["auc_low"], t["auc_high"]), (auc - z90 * math.sqrt(var), auc + z90 * math.sqrt(var)), atol=1e-10
    )
    _check_threshold_table(result.thresholds, y, s, c.thresholds, alpha=0.1)


# --------------------------------------------------------------------------- metrics/thresholds.csv


def _check_threshold_table(table, y, s, thresholds, alpha):
    z = float(norm.ppf(1 - alpha / 2))
    assert table["threshold"].tolist() == pytest.approx(list(thresholds))
    for row in table.itertuples():
        tp, fn, tn, fp = hand_counts(y, s, row.threshold)
        assert (row.tp, row.fn, row.tn, row.fp) == (tp, fn, tn, fp), row.threshold
        assert row.sensitivity == pytest.approx(tp / (tp + fn), abs=1e-15)
        assert row.specificity == pytest.approx(tn / (tn + fp), abs=1e-15)
        np.testing.assert_allclose(
            (row.sensitivity_low, row.sensitivity_high),
            proportion_confint(tp, tp + fn, alpha=alpha, method="wilson"),
            atol=1e-12,
        )
        np.testing.assert_allclose(
            (row.specificity_low, row.specificity_high),
            proportion_confint(tn, tn + fp, alpha=alpha, method="wilson"),
            atol=1e-12,
        )
        for rate, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp)):
            p = k / n
            radius = z * math.sqrt(p * (1 - p) / n)
            assert getattr(row, f"paper_{rate}_radius") == pytest.approx(radius, abs=1e-12)
            if hasattr(row, f"paper_{rate}_low"):
                assert getattr(row, f"paper_{rate}_low") == pytest.approx(p - radius, abs=1e-12)
                assert getattr(row, f"paper_{rate}_high") == pytest.approx(p + radius, abs=1e-12)
                assert getattr(row, f"paper_{rate}_high_clipped") == pytest.approx(min(1.0, p + radius), abs=1e-12)


def test_thresholds_csv_values(evaluated, cfg):
    """Bugs: counts, sensitivity/specificity, Wilson intervals or paper radii wrong in metrics/thresholds.csv."""
    df, _, paths = evaluated
    y, s, _, _ = _split(df, "test")
    table = pd.read_csv(paths.thresholds)
    assert (table["ci_method"] == "wilson").all()
    _check_threshold_table(table, y, s, cfg.thresholds, alpha=0.05)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_threshold_table_alpha(cfg, alpha):
    """Bug: interval alpha ignored in threshold_table / threshold_rows (Wilson from statsmodels at that alpha);
    counts wrong at thresholds equal to observed scores."""
    df = value_predictions()
    y, s, _, _ = _split(df, "test")
    tied = sorted(set(s[y == 1]) & set(s[y == 0]))  # scores held by both classes: ">=" counts both
    assert len(tied) == 3
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9, *tied]
    _check_threshold_table(P.threshold_table(y, s, thresholds, method="wilson", alpha=alpha), y, s, thresholds, alpha)
    c = cfg.model_copy(update=dict(alpha=alpha, thresholds=tuple(thresholds)))
    rows = threshold_rows(y, s, c)
    _check_threshold_table(rows, y, s, thresholds, alpha)
    # narrower than the 95% intervals: the alpha really changed something
    wide = P.threshold_table(y, s, thresholds, alpha=0.05)
    width = rows["sensitivity_high"] - rows["sensitivity_low"]
    assert (width < wide["sensitivity_high"] - wide["sensitivity_low"]).all()


# --------------------------------------------------------------------------- plots/*.csv


def test_roc_csv_values(evaluated):
    """Bug: fpr / tpr swapped (roc_frame, plots/roc.csv). Checked against sklearn and the definition."""
    df, result, paths = evaluated
    y, s, _, _ = _split(df, "test")
    roc = pd.read_csv(paths.roc)
    fpr, tpr, thr = skm.roc_curve(y, s)
    np.testing.assert_allclose(roc["fpr"], fpr, atol=1e-15)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=1e-15)
    np.testing.assert_allclose(roc["threshold"].iloc[1:], thr[1:], atol=0)
    assert roc["threshold"].iloc[0] == 1.0  # finite, above every score
    for row in roc.itertuples():  # the definition: rates of scores >= threshold
        assert row.fpr == pytest.approx((s[y == 0] >= row.threshold).mean(), abs=1e-15)
        assert row.tpr == pytest.approx((s[y == 1] >= row.threshold).mean(), abs=1e-15)
    assert (roc["tpr"] > roc["fpr"]).mean() > 0.9  # a useful model: the curve lies above the diagonal
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    pd.testing.assert_frame_equal(result.roc.reset_index(drop=True), roc, check_exact=False, rtol=0, atol=1e-15)


def test_pr_csv_values(evaluated):
    """Bug: recall / precision swapped (pr_frame, plots/pr.csv). Checked against sklearn and the definition."""
    df, _, paths = evaluated
    y, s, _, _ = _split(df, "test")
    pr = pd.read_csv(paths.pr)
    precision, recall, thr = skm.precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(pr["recall"], recall, atol=1e-15)
    np.testing.assert_allclose(pr["precision"], precision, atol=1e-15)
    np.testing.assert_allclose(pr["threshold"].iloc[:-1], thr, atol=0)
    for row in pr.iloc[:-1].itertuples():
        pred = s >= row.threshold
        assert row.recall == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum(), abs=1e-15)
        assert row.precision == pytest.approx((pred & (y == 1)).sum() / pred.sum(), abs=1e-15)
    assert (pr["recall"].iloc[-1], pr["precision"].iloc[-1]) == (0.0, 1.0)
    assert pr["recall"].iloc[0] == 1.0 and pr["precision"].iloc[0] == pytest.approx(80 / 240)


def test_scores_csv_values(evaluated, cfg):
    """Bug: score histograms shifted by one bin (or any other binning) in plots/scores.csv."""
    df, _, paths = evaluated
    _, s, g, _ = _split(df, "test")
    hist = pd.read_csv(paths.scores)
    edges = np.linspace(0.0, 1.0, cfg.histogram_bins + 1)
    assert len(hist) == cfg.histogram_bins
    np.testing.assert_allclose(hist["bin_low"], edges[:-1], atol=1e-12)
    np.testing.assert_allclose(hist["bin_high"], edges[1:], atol=1e-12)
    np.testing.assert_allclose(hist["score"], (edges[:-1] + edges[1:]) / 2, atol=1e-12)
    for group, column in (("covid", "covid"), ("normal", "normal"), ("other-disease", "other_disease")):
        counts, _ = np.histogram(s[g == group], bins=edges)
        assert hist[column].tolist() == counts.tolist(), group
        # and by hand, bin by bin
        for b in range(cfg.histogram_bins):
            lo, hi = edges[b], edges[b + 1]
            inside = (s[g == group] >= lo) & (
                (s[g == group] < hi) if b < cfg.histogram_bins - 1 else (s[g == group] <= hi)
            )
            assert hist[column].iloc[b] == inside.sum(), (group, b)


def test_score_histogram_by_hand():
    """Bug: histogram shifted by one bin; edge values go to the upper bin, 1.0 to the last (closed) bin."""
    scores = [0.0, 0.04, 0.05, 0.5, 0.51, 0.97, 1.0, 0.3]
    groups = ["covid", "covid", "covid", "normal", "normal", "covid", "other-disease", "other-disease"]
    h = score_histogram(scores, groups, 20)
    expected = {"covid": {0: 2, 1: 1, 19: 1}, "normal": {10: 2}, "other_disease": {19: 1, 6: 1}}
    for column, where in expected.items():
        want = [where.get(b, 0) for b in range(20)]
        assert h[column].tolist() == want, column
    assert h["bin_low"].iloc[1] == 0.05 and h["score"].iloc[0] == 0.025
    h4 = score_histogram([0.1, 0.2, 0.3, 0.6, 0.9], ["covid"] * 5, 4)
    assert h4["covid"].tolist() == [2, 1, 1, 1]


def test_calibration_csv_values(evaluated, cfg):
    """Bugs: reliability table wrong (vs sklearn.calibration.calibration_curve on the non-empty bins)."""
    df, _, paths = evaluated
    y, s, _, _ = _split(df, "test")
    cal = pd.read_csv(paths.calibration)
    prob_true, prob_pred = calibration_curve(y, s, n_bins=cfg.calibration_bins, strategy="uniform")
    np.testing.assert_allclose(cal["fraction_positive"], prob_true, atol=1e-12)
    np.testing.assert_allclose(cal["mean_predicted"], prob_pred, atol=1e-12)
    np.testing.assert_allclose(cal["perfect"], prob_pred, atol=1e-12)
    edges = np.linspace(0.0, 1.0, cfg.calibration_bins + 1)
    counts, _ = np.histogram(s, bins=edges)
    assert cal["count"].tolist() == counts[counts > 0].tolist()
    np.testing.assert_allclose(cal["bin_low"], edges[:-1][counts > 0], atol=1e-12)
    # the ECE in the metrics is the count-weighted gap of this very table
    ece = float((cal["count"] / cal["count"].sum() * (cal["fraction_positive"] - cal["mean_predicted"]).abs()).sum())
    assert json.loads(paths.metrics.read_text())["test"]["ece"] == pytest.approx(ece, abs=1e-12)


def test_reliability_bins_by_hand():
    """Bugs: reliability table / calibration.csv binning (edges go to the upper bin, 1.0 to the last bin),
    mean predicted and fraction positive mixed up, empty bins kept in calibration.csv.

    Scores 0, 0.25, 0.5, 0.75, 1.0 (labels 0, 1, 1, 0, 1) in 4 bins of width 0.25: counts 1, 1, 1, 2;
    mean predicted 0, 0.25, 0.5, 0.875; fraction positive 0, 1, 1, 0.5.
    """
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    table = C.reliability_table(y, p, n_bins=4)
    assert table["count"].tolist() == [1, 1, 1, 2]
    np.testing.assert_allclose(table["mean_predicted"], [0.0, 0.25, 0.5, 0.875], atol=1e-15)
    np.testing.assert_allclose(table["fraction_positive"], [0.0, 1.0, 1.0, 0.5], atol=1e-15)
    assert C.expected_calibration_error(y, p, n_bins=4) == pytest.approx((0 + 0.75 + 0.5 + 2 * 0.375) / 5, abs=1e-15)
    # 8 bins: only 5 hold a score; calibration.csv lists those 5
    cal = calibration_frame(y, p, 8)
    np.testing.assert_allclose(cal["bin_low"], [0.0, 0.25, 0.5, 0.75, 0.875], atol=1e-15)
    assert cal["count"].tolist() == [1, 1, 1, 1, 1]
    np.testing.assert_allclose(cal["fraction_positive"], [0, 1, 1, 0, 1], atol=1e-15)
    np.testing.assert_allclose(cal["mean_predicted"], p, atol=1e-15)


def test_confusion_csv_values(evaluated):
    """Bug: confusion matrix counts wrong (plots/confusion.csv and the counts in the metrics) vs sklearn."""
    df, _, paths = evaluated
    yv, sv, _, _ = _split(df, "val")
    y, s, _, ids = _split(df, "test")
    t = hand_threshold(yv, sv, 0.98)
    assert (s == t).sum() == 2  # one image of each class exactly on the threshold: predicted COVID-19
    conf = pd.read_csv(paths.confusion)
    assert conf["image_id"].tolist() == list(ids)
    code = {"COVID-19": 1, "non-COVID": 0}
    actual, predicted = conf["actual"].map(code).to_numpy(), conf["predicted"].map(code).to_numpy()
    np.testing.assert_array_equal(actual, y)
    np.testing.assert_array_equal(predicted, (s >= t).astype(int))
    expected = skm.confusion_matrix(y, (s >= t).astype(int), labels=[0, 1])
    np.testing.assert_array_equal(skm.confusion_matrix(actual, predicted, labels=[0, 1]), expected)
    tn, fp, fn, tp = expected.ravel()
    d = json.loads(paths.details.read_text())["test"]
    assert (d["tp"], d["fn"], d["tn"], d["fp"]) == (tp, fn, tn, fp)
    assert (d["n"], d["n_pos"], d["n_neg"]) == (240, 80, 160)
    assert d["prevalence"] == pytest.approx(80 / 240)


def test_confusion_at_threshold_with_ties_vs_sklearn():
    """Bug: confusion counts (``>`` for ``>=``, cells swapped): scores tied with the threshold on both classes."""
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0])
    s = np.array([0.9, 0.5, 0.2, 0.5, 0.1, 0.7, 0.3, 0.5, 0.49])
    c = P.confusion_at_threshold(y, s, 0.5)
    tn, fp, fn, tp = skm.confusion_matrix(y, (s >= 0.5).astype(int), labels=[0, 1]).ravel()
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (tp, fn, tn, fp) == (3, 1, 3, 2)


# --------------------------------------------------------------------------- hand-worked metrics


def test_ece_hand_worked_unequal_bins():
    """Bug: ECE as an unweighted mean over bins. 7 scores in 3 bins holding 1, 4 and 2 of them.

    bin [0, 1/3):   0.2 (y=1)                      -> |1 - 0.2|    = 0.8,  weight 1/7
    bin [1/3, 2/3): 0.4, 0.5, 0.5, 0.6 (y=0,1,0,0) -> |0.25 - 0.5| = 0.25, weight 4/7
    bin [2/3, 1]:   0.7, 0.9 (y=1,1)               -> |1 - 0.8|    = 0.2,  weight 2/7
    ECE = (0.8 + 4 * 0.25 + 2 * 0.2) / 7 = 2.2 / 7; the unweighted mean would be 1.25 / 3.
    """
    y = np.array([1, 0, 1, 0, 0, 1, 1])
    p = np.array([0.2, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9])
    table = C.reliability_table(y, p, n_bins=3)
    assert table["count"].tolist() == [1, 4, 2]
    np.testing.assert_allclose(table["mean_predicted"], [0.2, 0.5, 0.8], atol=1e-15)
    np.testing.assert_allclose(table["fraction_positive"], [1.0, 0.25, 1.0], atol=1e-15)
    assert C.expected_calibration_error(y, p, n_bins=3) == pytest.approx(2.2 / 7, abs=1e-15)
    assert abs(2.2 / 7 - 1.25 / 3) > 0.1
    assert hand_ece(y, p, 3) == pytest.approx(2.2 / 7, abs=1e-15)
    # more bins, some of them empty: empty bins contribute nothing
    assert C.expected_calibration_error(y, p, n_bins=6) == pytest.approx(hand_ece(y, p, 6), abs=1e-15)


def test_paper_radius_by_hand():
    """Bug: the paper's Eq. 3 radius z * sqrt(p (1 - p) / N) wrong. p = 0.98, N = 100: 1.96 * 0.014 = 0.02744
    (z = norm.ppf(0.975) = 1.95996 here: 0.02744 to 4 decimals)."""
    assert round(P.paper_interval(98, 100).radius, 4) == round(1.96 * 0.014, 4) == 0.0274
    assert P.paper_interval(98, 100).radius == pytest.approx(1.959963984540054 * 0.014, abs=1e-12)
    assert P.paper_interval(98, 100, alpha=0.1).radius == pytest.approx(float(norm.ppf(0.95)) * 0.014, abs=1e-12)
    assert P.paper_interval(12, 24).radius == pytest.approx(Z95 * 0.5 / math.sqrt(24), abs=1e-12)
    iv = P.paper_interval(360, 400)
    assert (iv.p, iv.radius) == pytest.approx((0.9, Z95 * 0.015), abs=1e-12)
    assert (iv.low, iv.high) == pytest.approx((0.9 - Z95 * 0.015, 0.9 + Z95 * 0.015), abs=1e-12)
    assert not iv.outside_unit and (iv.low_clipped, iv.high_clipped) == (iv.low, iv.high)
    edge = P.paper_interval(1, 50)  # 0.02 - 0.0388 < 0: reported unclipped, flagged, clipped apart
    assert edge.low < 0.0 and edge.outside_unit and edge.low_clipped == 0.0
    assert P.paper_interval(50, 50).radius == 0.0 and not P.paper_interval(50, 50).outside_unit
    low, high = P.proportion_ci(98, 100, method="paper")
    assert (low, high) == pytest.approx((0.98 - 1.959963984540054 * 0.014, 0.98 + 1.959963984540054 * 0.014), abs=1e-12)
    low90, _ = P.proportion_ci(98, 100, method="paper", alpha=0.1)
    assert low90 == pytest.approx(0.98 - float(norm.ppf(0.95)) * 0.014, abs=1e-12)
    # in the threshold table: 98 of 100 positives at or above 0.5
    y = np.r_[np.ones(100, int), np.zeros(4, int)]
    s = np.r_[np.full(98, 0.9), [0.2, 0.3], [0.1, 0.6, 0.2, 0.3]]
    row = P.threshold_table(y, s, [0.5]).iloc[0]
    assert row.paper_sensitivity_radius == pytest.approx(Z95 * 0.014, abs=1e-12)
    assert row.paper_specificity_radius == pytest.approx(Z95 * math.sqrt(0.75 * 0.25 / 4), abs=1e-12)


def test_sensitivity_specificity_by_hand():
    """Bug: sensitivity / specificity at a threshold wrong (swapped, strict >, wrong denominators).

    Positives 0.95 0.8 0.6 0.6 0.3 and negatives 0.7 0.6 0.4 0.2 0.1 0.05 at t = 0.6 (inclusive):
    TP = 4 of 5 (sensitivity 0.8), FP = 2 (0.7, 0.6), TN = 4 of 6 (specificity 2/3).
    """
    y = np.r_[np.ones(5, int), np.zeros(6, int)]
    s = np.array([0.95, 0.8, 0.6, 0.6, 0.3, 0.7, 0.6, 0.4, 0.2, 0.1, 0.05])
    summ = P.summarize(y, s, 0.6)
    assert summ["sensitivity"] == pytest.approx(0.8, abs=1e-15) and summ["specificity"] == pytest.approx(
        4 / 6, abs=1e-15
    )
    higher = P.summarize(y, s, 0.65)
    assert (higher["sensitivity"], higher["specificity"]) == pytest.approx((0.4, 5 / 6), abs=1e-15)
    assert (summ["tp"], summ["fn"], summ["tn"], summ["fp"]) == (4, 1, 4, 2)
    assert (summ["sensitivity_low"], summ["sensitivity_high"]) == pytest.approx(
        proportion_confint(4, 5, alpha=0.05, method="wilson"), abs=1e-12
    )
    assert (summ["specificity_low"], summ["specificity_high"]) == pytest.approx(
        proportion_confint(4, 6, alpha=0.05, method="wilson"), abs=1e-12
    )
    # the highest threshold with sensitivity >= 0.8 is the 4th highest positive score, 0.6
    assert P.threshold_for_sensitivity(y, s, 0.8) == 0.6 == hand_threshold(y, s, 0.8)
    assert P.threshold_for_sensitivity(y, s, 0.81) == 0.3 == hand_threshold(y, s, 0.81)


def test_reliability_decimal_edges_go_to_upper_bin():
    scores = [0.3, 0.6, 0.7]
    hist = score_histogram(scores, ["covid"] * 3, 10)["covid"].tolist()
    assert hist == [0, 0, 0, 1, 0, 0, 1, 1, 0, 0]
    assert C.reliability_table([0, 1, 0], scores, n_bins=10)["count"].tolist() == hist


def test_bootstrap_holds_a_single_image_class_fixed():
    """One COVID-19 image: DeLong is undefined, the stratified bootstrap resamples the negatives only.
    Positive 0.5 against negatives {0.2, 0.6}: the resampled AUCs are 1, 0.5, 0.5, 0 (equally likely)."""
    from deepcovid.evaluation.ranking import auc_bootstrap

    r = auc_bootstrap([1, 0, 0], [0.5, 0.2, 0.6], n_resamples=2000, seed=0)
    assert r["auc"] == 0.5 and (r["low"], r["high"]) == (0.0, 1.0)
    assert r["std"] == pytest.approx(np.sqrt(0.125), rel=0.1)  # sd of {1, .5, .5, 0}
    with pytest.raises(ValueError, match="at least 2 images of one class"):
        auc_bootstrap([1, 0], [0.5, 0.2])


def test_evaluate_falls_back_to_the_bootstrap_and_names_an_impossible_split(cfg):
    frame = pd.DataFrame(
        {
            "image_id": list("abcdefgh"),
            "label": [1, 0, 0, 0, 1, 0, 0, 1],
            "split": ["val"] * 4 + ["test"] * 4,
            "score": [0.9, 0.2, 0.4, 0.1, 0.8, 0.3, 0.6, 0.7],
            "group": ["covid", "normal", "normal", "normal", "covid", "normal", "normal", "covid"],
        }
    )
    result = evaluate(frame, cfg, name="p.csv")
    val = result.metrics["val"]  # 1 COVID-19 image in val: the bootstrap over its negatives (AUC 1 in each)
    assert (val["auc"], val["auc_low"], val["auc_high"]) == (1.0, 1.0, 1.0)
    frame.loc[frame.index[:4], "label"] = [1, 0, 0, 0]
    frame = frame.drop(index=[2, 3])  # val: one image of each class
    with pytest.raises(ValueError, match=r"p.csv: val split \(1 COVID-19, 1 other\): .*at least 2 images"):
        evaluate(frame, cfg, name="p.csv")
