"""Values of DeLong's AUC interval, the paired tests and the model comparison (compare_models).

Every expected number is computed here from the definition, without the metric modules under test:
DeLong's placement values by a double loop over all positive-negative pairs (1/2 for ties), the
variances and covariances S10 / m + S01 / n, the two-sided p = 2 sf(|z|), Holm's adjustment by
statsmodels and by hand. Each test names, in its docstring, the planted bugs it is meant to catch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu, norm
from sklearn import metrics as skm
from statsmodels.stats.multitest import multipletests

from deepcovid.evaluation import delong as D
from deepcovid.evaluation import ranking as R
from deepcovid.evaluation.compare import compare_models, comparison_markdown

REPO = Path(__file__).resolve().parents[1]
Z95 = float(norm.ppf(0.975))
COLUMNS = ["image_id", "source", "patient", "label", "group", "category", "split", "score"]


# --------------------------------------------------------------------------- brute-force DeLong


def placements(y, s):
    """DeLong's structural components by a double loop over every (positive, negative) pair.

    V10[i] = mean over negatives j of psi(x_i, z_j), V01[j] = mean over positives i of psi(x_i, z_j),
    psi = 1 if x > z, 1/2 if x == z, 0 otherwise.
    """
    x = [float(v) for v, label in zip(s, y) if label == 1]
    z = [float(v) for v, label in zip(s, y) if label == 0]
    psi = [[1.0 if xi > zj else (0.5 if xi == zj else 0.0) for zj in z] for xi in x]
    v10 = [sum(row) / len(z) for row in psi]
    v01 = [sum(psi[i][j] for i in range(len(x))) / len(x) for j in range(len(z))]
    return np.array(v10), np.array(v01)


def brute_delong(y, *scores):
    """``(aucs, cov)``: AUC of each score vector and DeLong's covariance matrix S10 / m + S01 / n."""
    comps = [placements(y, s) for s in scores]
    m, n = comps[0][0].size, comps[0][1].size
    aucs = np.array([v10.mean() for v10, _ in comps])
    k = len(scores)
    cov = np.empty((k, k))
    for r in range(k):
        for q in range(k):
            a10, a01 = comps[r]
            b10, b01 = comps[q]
            s10 = sum((a10[i] - a10.mean()) * (b10[i] - b10.mean()) for i in range(m)) / (m - 1)
            s01 = sum((a01[j] - a01.mean()) * (b01[j] - b01.mean()) for j in range(n)) / (n - 1)
            cov[r, q] = s10 / m + s01 / n
    return aucs, cov


def brute_paired(y, a, b, z=Z95):
    """Paired DeLong of AUC(a) - AUC(b): difference, its variance, interval, z and two-sided p."""
    aucs, cov = brute_delong(y, a, b)
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    se = math.sqrt(var)
    return {
        "diff": diff,
        "var": var,
        "var_no_cov": cov[0, 0] + cov[1, 1],
        "se": se,
        "z": diff / se,
        "p": 2 * norm.sf(abs(diff / se)),
        "low": diff - z * se,
        "high": diff + z * se,
        "auc_a": aucs[0],
        "auc_b": aucs[1],
        "cov": cov[0, 1],
    }


def hand_holm(p):
    """Holm's step-down adjustment: sorted p_(i) times (k - i + 1), running maximum, capped at 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[idx]))
        adj[idx] = running
    return adj


def _synthetic(n=150, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    s = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y)))
    return y, (np.round(s, 2) if ties else s)


# --------------------------------------------------------------------------- AUC and its DeLong interval


def test_delong_hand_worked_example():
    """Bugs: DeLong variance / interval wrong. 3 positives, 4 negatives, one tie (0.6 vs 0.6).

    psi rows (positives 0.9, 0.6, 0.4 vs negatives 0.6, 0.3, 0.2, 0.1):
      0.9: 1, 1, 1, 1      V10 = 1
      0.6: 1/2, 1, 1, 1    V10 = 7/8
      0.4: 0, 1, 1, 1      V10 = 3/4
    V01 (per negative) = 1/2, 1, 1, 1.  AUC = 21/24 = 7/8.
    S10 = var(1, 7/8, 3/4) = 1/64, S01 = var(1/2, 1, 1, 1) = 1/16 (ddof 1).
    var(AUC) = S10 / 3 + S01 / 4 = 1/192 + 1/64 = 1/48.
    """
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.4, 0.6, 0.3, 0.2, 0.1])
    v10, v01 = placements(y, s)
    np.testing.assert_allclose(v10, [1, 7 / 8, 3 / 4], atol=1e-15)
    np.testing.assert_allclose(v01, [1 / 2, 1, 1, 1], atol=1e-15)
    aucs, cov = brute_delong(y, s)
    assert aucs[0] == pytest.approx(7 / 8, abs=1e-15) and cov[0, 0] == pytest.approx(1 / 48, abs=1e-15)
    res = D.auc_delong(y, s)
    assert res["auc"] == pytest.approx(7 / 8, abs=1e-15)
    assert res["variance"] == pytest.approx(1 / 48, abs=1e-15)
    assert res["std"] == pytest.approx(math.sqrt(1 / 48), abs=1e-15)
    assert res["low"] == pytest.approx(7 / 8 - Z95 * math.sqrt(1 / 48), abs=1e-12)  # 0.59210
    assert res["low"] == pytest.approx(0.59210, abs=1e-5)
    assert res["high"] == 1.0  # 7/8 + 0.2829 clipped
    r90 = D.auc_delong(y, s, alpha=0.1)
    assert r90["low"] == pytest.approx(7 / 8 - float(norm.ppf(0.95)) * math.sqrt(1 / 48), abs=1e-12)
    # Mann-Whitney: U of the positives = 10.5 of 12 pairs
    u = mannwhitneyu(s[y == 1], s[y == 0], alternative="two-sided").statistic
    assert u == 10.5 and u / 12 == res["auc"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_variance_match_definition(seed):
    """Bugs: AUC or DeLong variance wrong with ties; AUC = Mann-Whitney U / (m n) = sklearn."""
    y, s = _synthetic(n=90, seed=seed)
    m, n = int(y.sum()), int((1 - y).sum())
    aucs, cov = brute_delong(y, s)
    res = D.auc_delong(y, s)
    u = mannwhitneyu(s[y == 1], s[y == 0], alternative="two-sided").statistic
    assert res["auc"] == pytest.approx(u / (m * n), abs=1e-12) == pytest.approx(aucs[0], abs=1e-12)
    assert res["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert res["variance"] == pytest.approx(cov[0, 0], abs=1e-12)
    assert (res["low"], res["high"]) == pytest.approx(
        (max(0.0, aucs[0] - Z95 * math.sqrt(cov[0, 0])), min(1.0, aucs[0] + Z95 * math.sqrt(cov[0, 0]))), abs=1e-10
    )


# --------------------------------------------------------------------------- paired DeLong test


@pytest.mark.parametrize("seed", [3, 4])
def test_delong_paired_matches_definition(seed):
    """Bugs: paired DeLong p one-sided (must be 2 sf(|z|)); covariance term dropped; z or sign wrong."""
    y, a = _synthetic(n=100, seed=seed)
    rng = np.random.default_rng(seed + 100)
    b = np.round(np.clip(a + rng.normal(scale=0.25, size=a.size) - 0.1 * y, 0, 1), 2)
    for first, second in ((a, b), (b, a)):  # both orders: z > 0 and z < 0
        want = brute_paired(y, first, second)
        res = D.delong_paired_test(y, first, second)
        assert res["difference"] == pytest.approx(want["diff"], abs=1e-12)
        assert res["auc_a"] == pytest.approx(want["auc_a"], abs=1e-12)
        assert res["covariance"] == pytest.approx(want["cov"], abs=1e-12)
        assert res["variance_a"] + res["variance_b"] - 2 * res["covariance"] == pytest.approx(want["var"], abs=1e-12)
        assert res["z"] == pytest.approx(want["z"], rel=1e-9)
        assert res["p_value"] == pytest.approx(want["p"], rel=1e-9)
        assert res["p_value"] == pytest.approx(2 * norm.sf(abs(res["z"])), rel=1e-12)
        # the data makes a one-sided p, or a variance without the covariance, visibly different
        assert 1e-8 < want["p"] < 0.9 and want["cov"] > 0.2 * want["var_no_cov"] / 2
    assert D.delong_paired_test(y, a, b)["z"] == pytest.approx(-D.delong_paired_test(y, b, a)["z"], rel=1e-12)


# --------------------------------------------------------------------------- paired bootstrap


def test_paired_bootstrap_p_value_two_sided():
    """Bug: the paired bootstrap p-value without its factor 2.

    p = min(1, 2 min(P(d <= 0), P(d >= 0))) with (1 + count) / (1 + B). A strong model against noise:
    no resample has d <= 0, so p = 2 / (B + 1) exactly. Two models with the same AUC (scores shuffled
    within each class): d is spread around 0, so p is near 1 (about 1/2 without the factor 2).
    """
    rng = np.random.default_rng(21)
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    strong = np.clip(0.3 + 0.4 * y + rng.normal(scale=0.1, size=y.size), 0, 1)
    noise = rng.uniform(size=y.size)
    for b in (200, 301):
        res = R.paired_bootstrap_auc(y, strong, noise, n_resamples=b, seed=7)
        assert res["low"] > 0
        assert res["p_value"] == pytest.approx(2 / (b + 1), abs=1e-15)
        res = R.paired_bootstrap_auc(y, noise, strong, n_resamples=b, seed=7)
        assert res["p_value"] == pytest.approx(2 / (b + 1), abs=1e-15)
    shuffled = strong.copy()
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        shuffled[idx] = strong[rng.permutation(idx)]
    assert skm.roc_auc_score(y, shuffled) == skm.roc_auc_score(y, strong)
    same = R.paired_bootstrap_auc(y, shuffled, strong, n_resamples=400, seed=7)
    assert same["difference"] == 0.0 and same["p_value"] > 0.75
    assert R.paired_bootstrap_auc(y, strong, strong, n_resamples=50, seed=7)["p_value"] == 1.0


# --------------------------------------------------------------------------- compare_models: three models


def _run_frame(y_test, s_test, y_val, s_val) -> pd.DataFrame:
    rows = []
    for split, y, s in (("test", y_test, s_test), ("val", y_val, s_val)):
        for i, (label, score) in enumerate(zip(y, s)):
            g = "covid" if label == 1 else ("normal" if i % 3 else "other-disease")
            rows.append(
                {
                    "image_id": f"{split}-{i}",
                    "source": "syn",
                    "patient": f"p{i}",
                    "label": int(label),
                    "group": g,
                    "category": g,
                    "split": split,
                    "score": float(score),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def three_models():
    """Test: 30 COVID-19, 40 other, the same images for all. A is the reference, B better (more
    signal), C worse (more noise); all three share a latent score, so their AUCs are correlated.
    Scores rounded to 3 decimals (a few ties). Returns ``(y, {name: test scores}, {name: run frame})``."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    latent = rng.normal(size=y.size) + 1.0 * y

    def sig(x):
        return np.round(1.0 / (1.0 + np.exp(-x)), 3)

    scores = {
        "A": sig(latent + rng.normal(scale=0.8, size=y.size)),
        "B": sig(latent + rng.normal(scale=0.8, size=y.size) + 0.5 * y),
        "C": sig(latent + rng.normal(scale=1.6, size=y.size)),
    }
    y_val = np.r_[np.ones(20, int), np.zeros(30, int)]
    runs = {}
    for name, s in scores.items():
        s_val = np.round(1.0 / (1.0 + np.exp(-(rng.normal(size=y_val.size) + 1.5 * y_val))), 3)
        runs[name] = _run_frame(y, s, y_val, s_val)
    runs["B"] = runs["B"].sample(frac=1.0, random_state=1).reset_index(drop=True)  # pairing is by image_id
    return y, scores, runs


@pytest.fixture(scope="module")
def three(cfg):
    y, scores, runs = three_models()
    table, details = compare_models(runs, cfg, reference="A")
    return y, scores, runs, table.set_index("run"), details, table


def test_three_models_sanity(three):
    """Guards: B really is better and C worse than A, with correlated AUCs and moderate p values."""
    y, scores, _, _, _, _ = three
    auc = {k: skm.roc_auc_score(y, s) for k, s in scores.items()}
    assert auc["B"] > auc["A"] > auc["C"]
    for other in ("B", "C"):
        want = brute_paired(y, scores[other], scores["A"])
        assert 0.005 < want["p"] < 0.5  # Holm changes at least one of them, one-sided p would differ
        assert math.sqrt(want["var_no_cov"]) - want["se"] > 0.005  # the covariance term matters
    assert len(np.intersect1d(scores["A"][y == 1], scores["A"][y == 0])) > 0  # ties


@pytest.mark.parametrize("other", ["B", "C"])
def test_three_models_rows(three, other):
    """Bugs: sign of ΔAUC reversed; ΔAUC interval without the covariance term; one-sided p; z wrong."""
    y, scores, _, table, _, _ = three
    row = table.loc[other]
    want = brute_paired(y, scores[other], scores["A"])  # other - reference
    assert row["auc"] == pytest.approx(skm.roc_auc_score(y, scores[other]), abs=1e-12)
    assert row["auc"] == pytest.approx(want["auc_a"], abs=1e-12)
    assert row["auc_diff"] == pytest.approx(want["diff"], abs=1e-12)
    assert row["auc_diff"] == pytest.approx(row["auc"] - table.loc["A", "auc"], abs=1e-12)
    assert (row["auc_diff"] > 0) == (other == "B") and (row["auc_diff"] < 0) == (other == "C")
    assert row["auc_diff_low"] == pytest.approx(want["diff"] - Z95 * want["se"], abs=1e-10)
    assert row["auc_diff_high"] == pytest.approx(want["diff"] + Z95 * want["se"], abs=1e-10)
    assert row["z"] == pytest.approx(want["diff"] / want["se"], rel=1e-9)
    assert row["p_value"] == pytest.approx(2 * norm.sf(abs(want["diff"]) / want["se"]), rel=1e-9)
    assert not bool(row["reference"]) and row["n_test"] == 70 and row["n_covid"] == 30
    # the reference row
    ref = table.loc["A"]
    assert bool(ref["reference"]) and ref["auc_diff"] == 0.0
    assert pd.isna(ref["p_value"]) and pd.isna(ref["p_value_holm"])
    assert ref["auc"] == pytest.approx(skm.roc_auc_score(y, scores["A"]), abs=1e-12)


def test_three_models_holm(three):
    """Bug: the Holm adjustment dropped (or applied wrongly): statsmodels multipletests(method="holm")."""
    y, scores, _, table, _, _ = three
    raw = [2 * norm.sf(abs(brute_paired(y, scores[o], scores["A"])["z"])) for o in ("B", "C")]
    expected = multipletests(raw, method="holm")[1]
    np.testing.assert_allclose(hand_holm(raw), expected, rtol=1e-12)
    got = table.loc[["B", "C"], "p_value_holm"].astype(float).to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert got.min() == pytest.approx(2 * min(raw), rel=1e-9)  # the smaller p doubled (2 comparisons)
    assert (got >= np.array(raw) - 1e-15).all() and not np.allclose(got, raw)


def test_three_models_markdown(three, cfg):
    """Bugs: ΔAUC sign, interval or Holm p wrong in the Markdown table (reports/compare/table.md)."""
    _, _, _, table, _, flat = three
    md = comparison_markdown(flat, cfg)
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    for other in ("B", "C"):
        r = table.loc[other]
        cell = f"{r['auc_diff']:+.3f} [{r['auc_diff_low']:+.3f}, {r['auc_diff_high']:+.3f}]"
        assert cell in lines[other], (other, lines[other])
        cells = [c.strip() for c in lines[other].strip().strip("|").split("|")]
        assert cells[-2] == f"{r['p_value']:.3f}" and cells[-1] == f"{float(r['p_value_holm']):.3f}"
    assert lines["B"].count("+") >= 2 and "| reference |" in lines["A"]
    assert "ΔAUC vs A" in md and "adjusted for 2 comparisons" in md


def test_three_models_alpha_0_1(cfg):
    """Bug: alpha ignored in the ΔAUC interval (z = norm.ppf(0.95) at alpha = 0.1)."""
    y, scores, runs = three_models()
    table, _ = compare_models(runs, cfg.model_copy(update=dict(alpha=0.1)), reference="A")
    table = table.set_index("run")
    z90 = float(norm.ppf(0.95))
    for other in ("B", "C"):
        want = brute_paired(y, scores[other], scores["A"], z=z90)
        assert table.loc[other, "auc_diff_low"] == pytest.approx(want["low"], abs=1e-10)
        assert table.loc[other, "auc_diff_high"] == pytest.approx(want["high"], abs=1e-10)
        assert table.loc[other, "p_value"] == pytest.approx(want["p"], rel=1e-9)  # p does not depend on alpha


def test_compare_bootstrap_values(cfg):
    """Bugs: paired bootstrap p without its factor 2, ΔAUC sign, Holm dropped (compare --paired-test bootstrap).

    Reference S (strong), T = S shuffled within each class (the same AUC), N = noise. N - S: no resample
    has d >= 0, so p = 2 / (B + 1); T - S: p near 1.
    """
    rng = np.random.default_rng(22)
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    strong = np.clip(0.3 + 0.4 * y + rng.normal(scale=0.1, size=y.size), 0, 1)
    shuffled = strong.copy()
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        shuffled[idx] = strong[rng.permutation(idx)]
    noise = rng.uniform(size=y.size)
    y_val = np.r_[np.ones(20, int), np.zeros(30, int)]
    s_val = np.clip(0.3 + 0.4 * y_val + rng.normal(scale=0.1, size=y_val.size), 0, 1)
    runs = {name: _run_frame(y, s, y_val, s_val) for name, s in (("S", strong), ("T", shuffled), ("N", noise))}
    b = 200
    table, _ = compare_models(
        runs, cfg.model_copy(update=dict(bootstrap_resamples=b)), reference="S", paired="bootstrap"
    )
    table = table.set_index("run")
    assert table.loc["N", "auc_diff"] == pytest.approx(
        skm.roc_auc_score(y, noise) - skm.roc_auc_score(y, strong), abs=1e-12
    )
    assert table.loc["N", "auc_diff"] < -0.3 and table.loc["N", "auc_diff_high"] < 0
    assert table.loc["N", "p_value"] == pytest.approx(2 / (b + 1), abs=1e-15)
    assert table.loc["T", "auc_diff"] == 0.0 and table.loc["T", "p_value"] > 0.75
    raw = table.loc[["T", "N"], "p_value"].astype(float).to_numpy()
    np.testing.assert_allclose(
        table.loc[["T", "N"], "p_value_holm"].astype(float), multipletests(raw, method="holm")[1], rtol=1e-12
    )
    assert float(table.loc["N", "p_value_holm"]) == pytest.approx(4 / (b + 1), abs=1e-15)
