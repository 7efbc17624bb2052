"""deepcovid compare (deepcovid/evaluation/compare.py): values of every table column, the Markdown table,
the written files, the run collection and the DVC experiment listing, checked against numbers computed
here (sklearn, statsmodels, scipy, brute-force DeLong) on small hand-built prediction tables.

Written to kill the surviving mutants of mutation testing (bench/mutation.sh): each test names what
it guards. No DVC or matplotlib runs: ``subprocess.run``, ``dvc.api.open`` and the figure functions
are replaced by recorders.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn import metrics as skm
from statsmodels.stats.proportion import proportion_confint

from deepcovid.evaluation import compare
from deepcovid.evaluation.compare import compare_models, comparison_markdown

REPO = Path(__file__).resolve().parents[1]
Z95 = float(norm.ppf(0.975))


# --------------------------------------------------------------------------- helpers computed here


def frame(test_y, test_s, val_y=None, val_s=None, prefix="img") -> pd.DataFrame:
    """A predictions table as load_predictions returns it (label int, score float, group)."""
    rows = []
    for split, ys, ss in (("test", test_y, test_s), ("val", val_y, val_s)):
        if ys is None:
            continue
        for i, (label, score) in enumerate(zip(ys, ss)):
            rows.append(
                {
                    "image_id": f"{prefix}-{split}-{i}",
                    "label": int(label),
                    "split": split,
                    "score": float(score),
                    "group": "covid" if label else "normal",
                }
            )
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype(np.int64)
    return df


def brute_delong(y, a, b):
    """Paired DeLong by a double loop: (auc_a, auc_b, var of the difference)."""
    y = np.asarray(y)

    def comps(s):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    a10, a01 = comps(np.asarray(a, float))
    b10, b01 = comps(np.asarray(b, float))
    m, n = a10.size, a01.size
    c10, c01 = np.cov(np.vstack([a10, b10])), np.cov(np.vstack([a01, b01]))
    cov = c10 / m + c01 / n
    return a10.mean(), b10.mean(), cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def val_threshold(y, s, target):
    """Highest observed score t whose sensitivity (score >= t) reaches target, by trying every score."""
    y, s = np.asarray(y), np.asarray(s, float)
    pos = s[y == 1]
    for t in sorted(set(s.tolist()), reverse=True):
        if np.mean(pos >= t) >= target:
            return t
    raise AssertionError("unreachable")


def ece_by_hand(y, p, bins=10):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(yy, pp) for yy, pp in zip(y, p) if (lo <= round(pp, 12) < hi) or (b == bins - 1 and pp == 1.0)]
        if inside:
            total += len(inside) / len(y) * abs(np.mean([i[0] for i in inside]) - np.mean([i[1] for i in inside]))
    return total


# Test split: 8 COVID-19, 10 not; val: 6 COVID-19, 6 not. Scores in distinct hundredths (no ties in A).
Y = np.r_[np.ones(8, int), np.zeros(10, int)]
SA = np.array(
    [0.91, 0.83, 0.77, 0.64, 0.58, 0.45, 0.33, 0.12, 0.71, 0.52, 0.41, 0.36, 0.27, 0.22, 0.18, 0.09, 0.05, 0.02]
)
SB = np.array(
    [0.95, 0.90, 0.81, 0.79, 0.68, 0.62, 0.47, 0.40, 0.55, 0.43, 0.38, 0.30, 0.25, 0.16, 0.14, 0.08, 0.06, 0.03]
)
SC = np.array(
    [0.61, 0.52, 0.35, 0.74, 0.28, 0.49, 0.15, 0.66, 0.70, 0.57, 0.44, 0.31, 0.26, 0.42, 0.19, 0.37, 0.07, 0.11]
)
YV = np.r_[np.ones(6, int), np.zeros(6, int)]
SV = np.array([0.88, 0.76, 0.69, 0.51, 0.34, 0.29, 0.60, 0.32, 0.24, 0.13, 0.10, 0.04])


# Function scope on purpose: mutmut attributes what a module-scoped fixture calls to the first test
# using it only, so the other tests' assertions would never run against a mutant.
@pytest.fixture
def runs():
    return {"A": frame(Y, SA, YV, SV), "B": frame(Y, SB, YV, SV), "C": frame(Y, SC)}  # C: no val split


@pytest.fixture
def compared(runs, cfg):
    table, details = compare_models(runs, cfg, models={"A": "resnet18", "C": "squeezenet"})
    return table, details


# --------------------------------------------------------------------------- compare_models: every column


def test_compare_row_values(compared, cfg):
    """Bugs: a column of the comparison table taken from the wrong place, or computed wrongly
    (threshold, counts, sensitivity/specificity and their Wilson and paper intervals, AUC, AP, ECE)."""
    table, details = compared
    assert list(table["run"]) == ["A", "B", "C"]
    assert list(table["model"]) == ["resnet18", "", "squeezenet"]
    assert list(table["reference"]) == [True, False, False]  # default reference: the first run
    for name, s in (("A", SA), ("B", SB), ("C", SC)):
        row = table.set_index("run").loc[name]
        thr = val_threshold(YV, SV, cfg.target_sensitivity) if name != "C" else val_threshold(Y, s, 0.98)
        assert row["threshold"] == thr
        assert row["threshold_chosen_on"] == ("test" if name == "C" else "val")
        assert row["n_test"] == 18 and row["n_covid"] == 8
        pred = s >= thr
        tp, tn = int(np.sum(pred & (Y == 1))), int(np.sum(~pred & (Y == 0)))
        assert row["sensitivity"] == tp / 8 and row["specificity"] == tn / 10
        assert (row["sensitivity_low"], row["sensitivity_high"]) == pytest.approx(
            proportion_confint(tp, 8, alpha=0.05, method="wilson"), abs=1e-12
        )
        assert (row["specificity_low"], row["specificity_high"]) == pytest.approx(
            proportion_confint(tn, 10, alpha=0.05, method="wilson"), abs=1e-12
        )
        p_sens, p_spec = tp / 8, tn / 10
        assert row["paper_sensitivity_radius"] == pytest.approx(Z95 * math.sqrt(p_sens * (1 - p_sens) / 8), abs=1e-12)
        assert row["paper_specificity_radius"] == pytest.approx(Z95 * math.sqrt(p_spec * (1 - p_spec) / 10), abs=1e-12)
        auc = skm.roc_auc_score(Y, s)
        assert row["auc"] == pytest.approx(auc, abs=1e-12)
        _, _, var = brute_delong(Y, s, s)  # var of a - a is 0: use the single-model variance instead
        x, z = s[Y == 1], s[Y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        se = math.sqrt(psi.mean(axis=1).var(ddof=1) / 8 + psi.mean(axis=0).var(ddof=1) / 10)
        assert row["auc_low"] == pytest.approx(max(0.0, auc - Z95 * se), abs=1e-12)
        assert row["auc_high"] == pytest.approx(min(1.0, auc + Z95 * se), abs=1e-12)
        assert row["ap"] == pytest.approx(skm.average_precision_score(Y, s), abs=1e-12)
        assert row["ece"] == pytest.approx(ece_by_hand(Y, s), abs=1e-12)
        assert details[name].details["test"]["auc"] == row["auc"]
    # A and B chose the same threshold on the same val split; the rates differ on test
    assert table.loc[0, "threshold"] == table.loc[1, "threshold"]


def test_compare_paired_columns(compared):
    """Bugs: ΔAUC sign, interval, z, p or Holm wrong; the reference row filled in."""
    table, _ = compared
    t = table.set_index("run")
    assert t.loc["A", "auc_diff"] == 0.0
    for col in ("auc_diff_low", "auc_diff_high", "z", "p_value", "p_value_holm"):
        assert t.loc["A", col] is None or pd.isna(t.loc["A", col]), col
    raw = {}
    for name, s in (("B", SB), ("C", SC)):
        auc_o, auc_r, var = brute_delong(Y, s, SA)
        diff, se = auc_o - auc_r, math.sqrt(var)
        assert t.loc[name, "auc_diff"] == pytest.approx(diff, abs=1e-12)
        assert t.loc[name, "auc_diff_low"] == pytest.approx(diff - Z95 * se, abs=1e-12)
        assert t.loc[name, "auc_diff_high"] == pytest.approx(diff + Z95 * se, abs=1e-12)
        assert t.loc[name, "z"] == pytest.approx(diff / se, rel=1e-10)
        raw[name] = 2 * norm.sf(abs(diff / se))
        assert t.loc[name, "p_value"] == pytest.approx(raw[name], rel=1e-10)
    lo, hi = sorted(raw.values())
    holm = {k: (min(1.0, 2 * v) if v == lo else min(1.0, max(2 * lo, v))) for k, v in raw.items()}
    for name in ("B", "C"):
        assert float(t.loc[name, "p_value_holm"]) == pytest.approx(holm[name], rel=1e-10)
    assert not math.isclose(holm["B"], raw["B"]) or not math.isclose(holm["C"], raw["C"])


def test_compare_reference_and_single_comparison(runs, cfg):
    """Bugs: ``reference`` ignored; Holm over one comparison is the raw p; the reference's own p empty."""
    table, _ = compare_models({"A": runs["A"], "B": runs["B"]}, cfg, reference="B")
    t = table.set_index("run")
    assert bool(t.loc["B", "reference"]) and not bool(t.loc["A", "reference"])
    assert t.loc["B", "auc_diff"] == 0.0 and pd.isna(t.loc["B", "p_value"])
    auc_o, auc_r, var = brute_delong(Y, SA, SB)
    assert t.loc["A", "auc_diff"] == pytest.approx(auc_o - auc_r, abs=1e-12) and auc_o < auc_r
    assert float(t.loc["A", "p_value_holm"]) == pytest.approx(t.loc["A", "p_value"], rel=1e-12)
    assert list(t["model"]) == ["", ""]  # no models given


def test_compare_only_reference_has_no_tests(runs, cfg):
    """Bug: Holm run on an empty set of p values; the single run is its own reference."""
    table, _ = compare_models({"A": runs["A"]}, cfg)
    assert len(table) == 1 and bool(table.loc[0, "reference"]) and table.loc[0, "p_value_holm"] is None


def test_compare_infinite_z_is_none(cfg):
    """Bug: an infinite DeLong z kept in the table (JSON cannot hold it). A perfect model against
    a constant one: both placement variances are 0, the AUCs differ (1 vs 1/2): z = inf, p = 0."""
    y = np.r_[np.ones(4, int), np.zeros(4, int)]
    perfect = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    flat = np.full(8, 0.5)
    table, _ = compare_models({"P": frame(y, perfect), "F": frame(y, flat)}, cfg)
    row = table.set_index("run").loc["F"]
    assert row["z"] is None and row["p_value"] == 0.0 and row["auc_diff"] == -0.5
    assert row["auc_diff_low"] == row["auc_diff_high"] == -0.5


def test_compare_bootstrap_uses_config(runs, cfg):
    """Bugs: the paired bootstrap not given the configured resamples, seed or alpha; z filled in."""
    from deepcovid.evaluation.ranking import paired_bootstrap_auc

    c = cfg.model_copy(update=dict(bootstrap_resamples=120, seed=5, alpha=0.1))
    table, _ = compare_models({"A": runs["A"], "B": runs["B"]}, c, paired="bootstrap")
    row = table.set_index("run").loc["B"]
    want = paired_bootstrap_auc(Y, SB, SA, n_resamples=120, seed=5, alpha=0.1)
    assert (row["auc_diff"], row["auc_diff_low"], row["auc_diff_high"], row["p_value"]) == (
        want["difference"],
        want["low"],
        want["high"],
        want["p_value"],
    )
    other = paired_bootstrap_auc(Y, SB, SA, n_resamples=120, seed=6, alpha=0.1)
    assert (other["low"], other["high"]) != (want["low"], want["high"])  # the seed matters here
    assert row["z"] is None or pd.isna(row["z"])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"reference": "Z"}, "'Z'"),
        ({"paired": "wilcoxon"}, "'wilcoxon'"),
    ],
)
def test_compare_rejects_bad_arguments(runs, cfg, kwargs, fragment):
    """Bugs: an unknown reference or paired test accepted (the message names the bad value)."""
    with pytest.raises(ValueError) as err:
        compare_models({"A": runs["A"], "B": runs["B"]}, cfg, **kwargs)
    assert fragment in str(err.value)


def test_compare_errors_name_the_runs(runs, cfg):
    """Bugs: an error of one run's evaluation or pairing not naming the run(s) concerned."""
    one_class = frame(np.ones(4, int), np.linspace(0.2, 0.8, 4))
    with pytest.raises(ValueError, match="^bad: the test split needs both classes"):
        compare_models({"A": runs["A"], "bad": one_class}, cfg)
    with pytest.raises(ValueError, match="models 'A' and 'short' did not score the same test images"):
        compare_models({"A": runs["A"], "short": runs["A"].iloc[1:]}, cfg)


def test_compare_paper_radius_uses_alpha(runs, cfg):
    """Bug: the paper's radius at the default alpha instead of the configured one."""
    table, details = compare_models({"A": runs["A"]}, cfg.model_copy(update=dict(alpha=0.1)))
    t = details["A"].details["test"]
    z90 = float(norm.ppf(0.95))
    p, q = t["tp"] / t["n_pos"], t["tn"] / t["n_neg"]
    assert 0 < p < 1 and 0 < q < 1
    assert table.loc[0, "paper_sensitivity_radius"] == pytest.approx(z90 * math.sqrt(p * (1 - p) / t["n_pos"]))
    assert table.loc[0, "paper_specificity_radius"] == pytest.approx(z90 * math.sqrt(q * (1 - q) / t["n_neg"]))


def test_markdown_single_run(runs, cfg):
    """Bug: the notes read from a second row that a single-run table does not have."""
    table, _ = compare_models({"A": runs["A"]}, cfg)
    md = comparison_markdown(table, cfg)
    assert "Test split: 18 images (8 COVID-19)." in md and "adjusted for 0 comparisons." in md


def test_compare_rejects_no_runs(cfg):
    with pytest.raises(ValueError, match="at least one run"):
        compare_models({}, cfg)


# --------------------------------------------------------------------------- paired_test_frames


def test_paired_test_frames_aligns_on_image_id():
    """Bugs: the other model's scores not re-ordered by image_id; val rows paired too."""
    a = frame(Y, SA, YV, SV)
    b = frame(Y, SB, YV, SV * 0.5).sample(frac=1.0, random_state=3).reset_index(drop=True)
    y, s_ref, s_other = compare.paired_test_frames("a", a, "b", b)
    assert y.dtype == np.int64 and s_ref.dtype == float and s_other.dtype == float
    np.testing.assert_array_equal(y, Y)
    np.testing.assert_array_equal(s_ref, SA)
    np.testing.assert_array_equal(s_other, SB)


def test_paired_test_frames_errors():
    """Bugs: mismatched test sets or labels let through; the counts in the message wrong."""
    a = frame(Y, SA)
    b = frame(Y, SB).iloc[:-2]  # 2 test images only in a
    with pytest.raises(ValueError, match=r"2 only in a, 0 only in b, e.g. 'img-test-16'"):
        compare.paired_test_frames("a", a, "b", b)
    with pytest.raises(ValueError, match=r"0 only in b, 2 only in a"):
        compare.paired_test_frames("b", b, "a", a)
    c = frame(Y, SB)
    c.loc[[0, 3, 17], "label"] = 1 - c.loc[[0, 3, 17], "label"]
    with pytest.raises(ValueError, match=r"label of 3 test images \(e.g. 'img-test-0'\)"):
        compare.paired_test_frames("a", a, "c", c)
    # a val-only difference does not matter
    d = pd.concat([frame(Y, SB), frame(YV, SV, prefix="other").assign(split="val")], ignore_index=True)
    y, _, s = compare.paired_test_frames("a", a, "d", d)
    np.testing.assert_array_equal(s, SB)


# --------------------------------------------------------------------------- comparison_markdown


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_markdown_cells(compared, cfg):
    """Bugs: a cell of table.md formatted from the wrong column, the model column or the '(test!)' mark
    lost, the header and alignment rows out of step with the cells."""
    table, _ = compared
    md = comparison_markdown(table, cfg)
    lines = md.splitlines()
    head, align = _cells(lines[0]), lines[1]
    assert head == [
        "Run",
        "Model",
        "Threshold",
        "Sensitivity [95% CI]",
        "paper ±",
        "Specificity [95% CI]",
        "paper ±",
        "AUC [95% CI]",
        "AP",
        "ECE",
        "ΔAUC vs A [95% CI]",
        "p",
        "p (Holm)",
    ]
    assert align == "|" + "|".join(["---"] * 2 + ["---:"] * 11) + "|"
    rows = {(c := _cells(line))[0]: c for line in lines[2:5]}
    t = table.set_index("run")
    for name in ("A", "B", "C"):
        r, c = t.loc[name], rows[name]
        assert len(c) == len(head)
        assert c[1] == {"A": "resnet18", "B": "", "C": "squeezenet"}[name]
        assert c[2] == f"{r['threshold']:.3f}" + (" (test!)" if name == "C" else "")
        assert c[3] == f"{r['sensitivity']:.3f} [{r['sensitivity_low']:.3f}, {r['sensitivity_high']:.3f}]"
        assert c[4] == f"{r['paper_sensitivity_radius']:.3f}"
        assert c[5] == f"{r['specificity']:.3f} [{r['specificity_low']:.3f}, {r['specificity_high']:.3f}]"
        assert c[6] == f"{r['paper_specificity_radius']:.3f}"
        assert c[7] == f"{r['auc']:.3f} [{r['auc_low']:.3f}, {r['auc_high']:.3f}]"
        assert c[8] == f"{r['ap']:.3f}" and c[9] == f"{r['ece']:.3f}"
        if name == "A":
            assert c[10:] == ["reference", "", ""]
        else:
            assert c[10] == f"{r['auc_diff']:+.3f} [{r['auc_diff_low']:+.3f}, {r['auc_diff_high']:+.3f}]"
            assert c[11] == f"{r['p_value']:.3f}" and c[12] == f"{float(r['p_value_holm']):.3f}"
    notes = lines[5:]
    assert notes[0] == ""
    assert notes[1] == (
        "Test split: 18 images (8 COVID-19). Threshold: the highest reaching sensitivity 0.98 on "
        "the validation split, applied to test; '(test!)' marks runs without a usable validation "
        "split (paper-style threshold chosen on test)."
    )
    assert "wilson for sensitivity/specificity" in notes[2] and "AUC interval by delong." in notes[2]
    assert (
        notes[3]
        == "ΔAUC and p: DeLong paired test on the same test images against A; Holm: adjusted for 2 comparisons."
    )
    assert md.endswith(".\n") and len(lines) == 9


def test_markdown_without_models_and_val_everywhere(runs, cfg):
    """Bugs: the Model column shown when no run has a model; the '(test!)' note when every run used val;
    the level, interval method and bootstrap wording not taken from the configuration."""
    c = cfg.model_copy(
        update=dict(
            alpha=0.1, ci_method="clopper-pearson", auc_ci="bootstrap", bootstrap_resamples=50, target_sensitivity=0.9
        )
    )
    table, _ = compare_models({"A": runs["A"], "B": runs["B"]}, c, paired="bootstrap")
    md = comparison_markdown(table, c, paired="bootstrap")
    lines = md.splitlines()
    head = _cells(lines[0])
    assert head[:2] == ["Run", "Threshold"] and head[2] == "Sensitivity [90% CI]" and "ΔAUC vs A [90% CI]" in head
    assert lines[1] == "|" + "|".join(["---"] + ["---:"] * 11) + "|"
    assert all(len(_cells(line)) == 12 for line in lines[2:4])
    assert "(test!)" not in md
    assert "sensitivity 0.9 on the validation split, applied to test." in md
    assert "clopper-pearson for sensitivity/specificity" in md and "AUC interval by bootstrap." in md
    assert "paired stratified bootstrap on the same test images against A; Holm: adjusted for 1 comparisons." in md


def test_markdown_number_formats(cfg):
    """Bugs: p below 0.001 printed as 0.000 (or 0.001 exactly as '< 0.001'); None / NaN not left blank."""
    assert compare._fmt_p(0.0009) == "< 0.001" and compare._fmt_p(0.001) == "0.001"
    assert compare._fmt_p(None) == "" and compare._fmt_p(float("nan")) == ""
    assert compare._fmt_p(0.5) == "0.500" and compare._fmt_p(1.0) == "1.000"
    assert compare._fmt(None) == "" and compare._fmt(float("nan")) == "" and compare._fmt(0.12345) == "0.123"
    assert compare._fmt(2, 1) == "2.0" and compare._fmt(0.0) == "0.000"


# --------------------------------------------------------------------------- small helpers


@pytest.mark.parametrize(
    "text, want",
    [
        ("a=b.csv", ("a", "b.csv")),
        (" resnet 18 = dir/p.csv ", ("resnet 18", "dir/p.csv")),
        ("x=a=b.csv", ("x", "a=b.csv")),
    ],
)
def test_parse_run(text, want):
    assert compare.parse_run(text) == want


@pytest.mark.parametrize("text", ["a.csv", "=a.csv", "a=", " =a.csv", "a= ", "="])
def test_parse_run_rejects(text):
    """Bug: a --run without a name or a path accepted (the message quotes the bad text)."""
    with pytest.raises(ValueError) as err:
        compare.parse_run(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize(
    "name, want",
    [
        ("resnet18", "resnet18"),
        ("exp a/b", "exp_a_b"),
        ("__x y__", "x_y"),
        ("a.b-c_d", "a.b-c_d"),
        ("///", "run"),
        ("", "run"),
        ("é!x", "x"),
    ],
)
def test_safe(name, want):
    assert compare.safe(name) == want


def test_state():
    assert compare._state({"executor": {"state": "running"}}) == "running"
    assert compare._state({"executor": {}}) is None
    assert compare._state({"executor": "queued"}) == "queued"
    assert compare._state({}) is None


def test_dvc_binary_next_to_python(monkeypatch):
    """Bug: dvc looked up on PATH rather than next to the interpreter (the project's venv)."""
    seen = {}

    def which(cmd, path=None):
        seen.update(cmd=cmd, path=path)
        return None

    monkeypatch.setattr(compare.shutil, "which", which)
    assert compare.dvc_binary() == "dvc"
    assert seen == {"cmd": "dvc", "path": str(Path(compare.sys.executable).parent)}
    monkeypatch.setattr(compare.shutil, "which", lambda cmd, path=None: "/venv/bin/dvc")
    assert compare.dvc_binary() == "/venv/bin/dvc"


# --------------------------------------------------------------------------- dvc_experiments


def _rev(sha, name, model=None, out=True, error=None, params=True):
    outs = {"data/predictions.csv": {"hash": "ab" * 16}} if out else {}
    data = {"rev": sha, "outs": outs}
    if params:
        data["params"] = {"params.yaml": {"data": {} if model is None else {"model": model}}}
    return {"rev": sha, "name": name, "error": error, "data": data}


class _Proc:
    def __init__(self, stdout="", returncode=0, stderr=""):
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr


def test_dvc_experiments_command_and_rows(monkeypatch, caplog):
    """Bugs: the wrong command (repo, -n commits), workspace not skipped, name fallbacks, failed or
    errored experiments kept, a missing model not ''."""
    shown = [
        {"rev": "workspace", "name": None, "data": {"outs": {"data/predictions.csv": {"hash": "x"}}}},
        {
            **_rev("a" * 40, None, "resnet18"),
            "experiments": [
                {
                    "name": "grp",
                    "executor": None,
                    "revs": [_rev("b" * 40, None, "densenet121"), _rev("c" * 40, "exp-c", None)],
                },
                {"name": None, "executor": {"state": "failed"}, "revs": [_rev("d" * 40, "exp-d", "x")]},
                {"executor": "running", "revs": [_rev("e" * 40, "exp-e", "x")]},
                {"name": None, "executor": None, "revs": [{**_rev("f" * 40, None, "x"), "name": None}]},
                {"executor": None, "revs": [_rev("1" * 40, "exp-err", "x", error={"msg": "broken"})]},
                {"executor": None, "revs": [_rev("2" * 40, "exp-str", "x", error="bad")]},
                {"executor": None, "revs": [_rev("3" * 40, "exp-noparams", params=False)]},
                {"executor": None},
            ],
        },
        {**_rev("9" * 40, "old", "vgg"), "experiments": None},
    ]
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw))
        return _Proc(json.dumps(shown))

    monkeypatch.setattr(compare.subprocess, "run", run)
    monkeypatch.setattr(compare, "dvc_binary", lambda: "DVC")
    with caplog.at_level("WARNING", logger="compare"):
        found = compare.dvc_experiments("/repo", "data/predictions.csv", commits=3)
    ((cmd, kw),) = calls
    assert cmd == ["DVC", "exp", "show", "--json", "-n", "3"]
    assert kw["cwd"] == "/repo" and kw["capture_output"] and kw["text"]
    assert found == [
        {"name": "aaaaaaa", "rev": "a" * 40, "model": "resnet18"},
        {"name": "grp", "rev": "b" * 40, "model": "densenet121"},
        {"name": "exp-c", "rev": "c" * 40, "model": ""},
        {"name": "fffffff", "rev": "f" * 40, "model": "x"},
        {"name": "exp-noparams", "rev": "3" * 40, "model": ""},
        {"name": "old", "rev": "9" * 40, "model": "vgg"},
    ]
    text = caplog.text
    assert "exp-d" in text and "failed" in text and "exp-e" in text and "running" in text
    assert "skipping exp-err (1111111): broken" in text and "skipping exp-str (2222222): bad" in text
    # only experiments
    found = compare.dvc_experiments("/repo", "data/predictions.csv", include_baseline=False)
    assert [e["name"] for e in found] == ["grp", "exp-c", "fffffff", "exp-noparams"]
    assert calls[-1][0][-2:] == ["-n", "1"]


def test_dvc_experiments_skips_missing_output(monkeypatch, caplog):
    """Bug: a revision without the predictions output (or without a hash) listed."""
    shown = [
        {
            **_rev("a" * 40, "main", "m", out=False),
            "experiments": [
                {
                    "executor": None,
                    "revs": [{**_rev("b" * 40, "e1", "m"), "data": {"outs": {"data/predictions.csv": {"hash": None}}}}],
                },
                {"executor": None, "revs": [{"rev": "c" * 40, "name": "e2", "data": None}]},
            ],
        }
    ]
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: _Proc(json.dumps(shown)))
    with caplog.at_level("WARNING", logger="compare"):
        assert compare.dvc_experiments(".", "data/predictions.csv") == []
    assert "skipping main (aaaaaaa): no data/predictions.csv recorded" in caplog.text
    assert "skipping e1 (bbbbbbb): no data/predictions.csv recorded" in caplog.text
    # another path of the same revisions
    shown[0]["data"]["outs"] = {"other.csv": {"hash": "1"}}
    assert compare.dvc_experiments(".", "other.csv") == [{"name": "main", "rev": "a" * 40, "model": "m"}]


def test_dvc_experiments_errors(monkeypatch):
    """Bugs: a failing or non-JSON `dvc exp show` not reported (the message gives dvc's last line)."""
    monkeypatch.setattr(
        compare.subprocess, "run", lambda *a, **k: _Proc("", returncode=1, stderr="first\nERROR: not a git repo\n")
    )
    with pytest.raises(RuntimeError, match="in /r: ERROR: not a git repo$"):
        compare.dvc_experiments("/r", "p.csv")
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: _Proc("", returncode=2, stderr=""))
    with pytest.raises(RuntimeError, match="no output$"):
        compare.dvc_experiments("/r", "p.csv")
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: _Proc("not json"))
    with pytest.raises(RuntimeError, match="JSON"):
        compare.dvc_experiments("/r", "p.csv")


# --------------------------------------------------------------------------- reading runs


CSV = "image_id,label,split,score\na,1,test,0.9\nb,0,test,0.2\nc,1,val,0.7\nd,0,val,0.1\n"


def test_read_dvc_predictions(monkeypatch):
    """Bugs: dvc.api.open called with the wrong path / repo / rev; errors not naming the run and revision."""
    import dvc.api

    seen = {}

    def fake_open(path, repo=None, rev=None, **kw):
        seen.update(path=path, repo=repo, rev=rev)
        return io.StringIO(fake_open.text)

    fake_open.text = CSV
    monkeypatch.setattr(dvc.api, "open", fake_open)
    df = compare.read_dvc_predictions("/repo", "data/p.csv", "abcdef0123", "exp1")
    assert seen == {"path": "data/p.csv", "repo": "/repo", "rev": "abcdef0123"}
    assert list(df["image_id"]) == ["a", "b", "c", "d"] and list(df["label"]) == [1, 0, 1, 0]
    fake_open.text = CSV.replace("score", "prob")
    with pytest.raises(ValueError, match=r"^exp1 \(abcdef0\):data/p.csv: missing column 'score'"):
        compare.read_dvc_predictions("/repo", "data/p.csv", "abcdef0123", "exp1")


def test_collect_runs_from_files_and_dvc(monkeypatch, tmp_path, caplog):
    """Bugs: runs from DVC experiments skipped or mis-named, their models lost, unreadable ones not
    skipped (or a bad predictions table skipped instead of failing), duplicate names accepted."""
    (tmp_path / "x.csv").write_text(CSV)
    exps = [
        {"name": "e1", "rev": "1" * 40, "model": "resnet18"},
        {"name": "e2", "rev": "2" * 40, "model": "vgg"},
        {"name": "e3", "rev": "3" * 40, "model": "m"},
    ]
    asked = {}

    def fake_exps(repo, path, include_baseline=True, commits=1):
        asked.update(repo=repo, path=path, include_baseline=include_baseline, commits=commits)
        return exps

    reads = []

    def fake_read(repo, path, rev, name):
        reads.append((repo, path, rev, name))
        if name == "e2":
            raise OSError("missing\n  from   cache")
        return pd.DataFrame({"from": [name]})

    monkeypatch.setattr(compare, "dvc_experiments", fake_exps)
    monkeypatch.setattr(compare, "read_dvc_predictions", fake_read)
    with caplog.at_level("WARNING", logger="compare"):
        runs, models = compare.collect_runs(
            [f"file={tmp_path / 'x.csv'}"],
            from_dvc_exps=True,
            repo="/r",
            predictions_path="p.csv",
            include_baseline=False,
            commits=4,
        )
    assert asked == {"repo": "/r", "path": "p.csv", "include_baseline": False, "commits": 4}
    assert list(runs) == ["e1", "e3", "file"]
    assert models == {"e1": "resnet18", "e3": "m", "file": ""}
    assert runs["e1"]["from"].iloc[0] == "e1" and len(runs["file"]) == 4
    assert reads == [("/r", "p.csv", e["rev"], e["name"]) for e in exps]
    assert "skipping e2 (2222222): cannot read p.csv (missing from cache)" in caplog.text
    # defaults: this repository, data/predictions.csv, baseline included, one commit
    compare.collect_runs([], from_dvc_exps=True)
    assert asked == {"repo": ".", "path": "data/predictions.csv", "include_baseline": True, "commits": 1}
    assert reads[-1] == (".", "data/predictions.csv", "3" * 40, "e3")
    # a table DVC returned but that is not valid predictions: an error, not a skip
    monkeypatch.setattr(compare, "read_dvc_predictions", lambda *a: (_ for _ in ()).throw(ValueError("bad table")))
    with pytest.raises(ValueError, match="bad table"):
        compare.collect_runs([], from_dvc_exps=True)
    # without --from-dvc-exps, DVC is not asked
    monkeypatch.setattr(compare, "dvc_experiments", lambda *a, **k: pytest.fail("asked DVC"))
    runs, models = compare.collect_runs([f"a={tmp_path / 'x.csv'}", f"b={tmp_path / 'x.csv'}"])
    assert list(runs) == ["a", "b"] and models == {"a": "", "b": ""}
    with pytest.raises(ValueError, match="'a'"):
        compare.collect_runs([f"a={tmp_path / 'x.csv'}", f"a={tmp_path / 'x.csv'}"])
    with pytest.raises(ValueError, match="nothing to compare"):
        compare.collect_runs([])


def test_collect_runs_exception_without_message(monkeypatch, caplog):
    """Bug: an exception without a message logged as empty (its type name stands in)."""
    monkeypatch.setattr(compare, "dvc_experiments", lambda *a, **k: [{"name": "e", "rev": "0" * 40, "model": ""}])
    monkeypatch.setattr(compare, "read_dvc_predictions", lambda *a: (_ for _ in ()).throw(KeyError()))
    with caplog.at_level("WARNING", logger="compare"), pytest.raises(ValueError, match="nothing to compare"):
        compare.collect_runs([], from_dvc_exps=True)
    assert "(KeyError)" in caplog.text


# --------------------------------------------------------------------------- write_comparison


def test_write_comparison_files(monkeypatch, tmp_path, compared, cfg):
    """Bugs: table.md / table.csv / compare.json not what comparison_markdown and the table hold, NaN
    written to JSON, the figures given the wrong curves, operating points, prevalence or labels, stale
    reliability diagrams kept."""
    table, details = compared
    drawn = {}
    monkeypatch.setattr(
        compare.figures, "roc_curves", lambda curves, path, title="": drawn.update(roc=(curves, Path(path), title))
    )
    monkeypatch.setattr(
        compare.figures,
        "pr_curves",
        lambda curves, path, prevalence=None, title="": drawn.update(pr=(curves, Path(path), prevalence, title)),
    )
    rel = []
    monkeypatch.setattr(
        compare.figures,
        "reliability_diagram",
        lambda tab, ece, path, title="": rel.append((tab, ece, Path(path), title)),
    )
    nested = tmp_path / "x" / "y"
    compare.write_comparison(nested, table, details, {"A": "resnet18"}, cfg, paired="bootstrap")
    assert "paired stratified bootstrap" in (nested / "table.md").read_text(encoding="utf-8")
    doc = json.loads((nested / "compare.json").read_text())
    assert doc["paired_test"] == "bootstrap" and doc["runs"]["B"]["model"] == ""
    rel.clear()
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "reliability_old.png").write_bytes(b"x")
    (out / "keep.png").write_bytes(b"x")
    models = {"A": "resnet18", "B": "B", "C": "squeezenet"}
    md = compare.write_comparison(out, table, details, models, cfg)
    assert md == comparison_markdown(table, cfg) == (out / "table.md").read_text(encoding="utf-8")
    csv = pd.read_csv(out / "table.csv")
    assert list(csv.columns) == list(table.columns) and list(csv["run"]) == ["A", "B", "C"]
    np.testing.assert_allclose(csv["auc"], table["auc"], rtol=1e-12)
    doc = json.loads((out / "compare.json").read_text())
    assert doc["reference"] == "A" and doc["paired_test"] == "delong"
    assert list(doc["runs"]) == ["A", "B", "C"]
    assert doc["runs"]["A"]["model"] == "resnet18" and doc["runs"]["C"]["model"] == "squeezenet"
    assert doc["runs"]["B"]["test"] == json.loads(json.dumps(details["B"].details["test"]))
    assert doc["comparisons"][0]["p_value"] is None and doc["comparisons"][0]["auc_diff"] == 0.0
    assert doc["comparisons"][1]["p_value"] == pytest.approx(table.loc[1, "p_value"], rel=1e-12)
    assert doc["comparisons"][2]["z"] == pytest.approx(table.loc[2, "z"], rel=1e-12)
    # figures
    curves, path, _ = drawn["roc"]
    assert path == out / "roc.png"
    assert [c["label"] for c in curves] == [
        f"A (resnet18): AUC {skm.roc_auc_score(Y, SA):.3f}",
        f"B: AUC {skm.roc_auc_score(Y, SB):.3f}",
        f"C (squeezenet): AUC {skm.roc_auc_score(Y, SC):.3f}",
    ]
    for c, name, s in zip(curves, "ABC", (SA, SB, SC)):
        t = details[name].details["test"]
        fp = int(np.sum((s >= t["threshold"]) & (Y == 0)))
        assert c["point"] == (fp / 10, t["sensitivity"])
        np.testing.assert_array_equal(c["fpr"], details[name].roc["fpr"])
        np.testing.assert_array_equal(c["tpr"], details[name].roc["tpr"])
    pr_curves, path, prevalence, _ = drawn["pr"]
    assert path == out / "pr.png" and prevalence == pytest.approx(8 / 18)
    assert [c["label"] for c in pr_curves] == [
        f"A (resnet18): AP {skm.average_precision_score(Y, SA):.3f}",
        f"B: AP {skm.average_precision_score(Y, SB):.3f}",
        f"C (squeezenet): AP {skm.average_precision_score(Y, SC):.3f}",
    ]
    np.testing.assert_array_equal(pr_curves[1]["precision"], details["B"].pr["precision"])
    np.testing.assert_array_equal(pr_curves[1]["recall"], details["B"].pr["recall"])
    assert [r[2].name for r in rel] == ["reliability_A.png", "reliability_B.png", "reliability_C.png"]
    assert rel[2][1] == details["C"].details["test"]["ece"] and rel[2][0] is details["C"].calibration
    assert rel[0][3].startswith("A (resnet18): reliability (test), ECE = ")
    assert not (out / "reliability_old.png").exists() and (out / "keep.png").exists()
