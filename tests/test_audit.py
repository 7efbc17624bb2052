"""The confounder audit (deepcovid/evaluation/audit.py, stage audit).

Pure functions against independent computations (scikit-learn's AUC, statsmodels' Wilson
interval), the grouping of the cross-validation, the flags on planted tables, and the whole stage
on a tiny synthetic pipeline with and without a planted source shortcut.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_predict
from statsmodels.stats.proportion import proportion_confint

from deepcovid.config import Audit
from deepcovid.evaluation import audit as A
from workspace import TINY, error_line, make_workspace, run_stage


def test_view_classes():
    assert [A.view_class(v) for v in ("PA", "pa ", "AP", "AP Supine", "AP semi erect", "L", "")] == [
        "PA",
        "PA",
        "AP",
        "AP",
        "AP",
        "other",
        "other",
    ]


def test_cross_validation_never_splits_a_group():
    """Each patient group has its own random label and a feature naming the group: a fold that
    saw a group in training would recall its label (AUC near 1); grouped folds cannot (near 0.5)."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    target = rng.integers(0, 2, 60)[groups]
    features = np.eye(60)[groups] + 0.01 * rng.standard_normal((240, 60))
    scores = A.grouped_oof_scores(features, target, groups, folds=5, seed=0)
    assert not np.isnan(scores).any()
    assert roc_auc_score(target, scores) < 0.7
    leaky = cross_val_predict(
        A._head(), features, target, cv=KFold(5, shuffle=True, random_state=0), method="predict_proba"
    )[:, 1]
    assert roc_auc_score(target, leaky) > 0.95  # what the same head reaches when folds split groups
    r = A.readability(features, target, groups, folds=5, seed=0, min_per_class=5)
    assert r["folds"] == 5 and r["auc"] == pytest.approx(roc_auc_score(target, scores))
    with pytest.raises(A.AuditError, match="differ in length"):
        A.grouped_oof_scores(features, target[:-1], groups, 5, 0)


def test_readable_signal_is_found_and_small_classes_are_skipped():
    rng = np.random.default_rng(1)
    target = np.array([0, 1] * 40)
    groups = np.arange(80)
    features = rng.standard_normal((80, 5)) + 1.0 * target[:, None]
    r = A.readability(features, target, groups, folds=5, seed=0, min_per_class=5)
    assert r["auc_low"] > 0.75 and r["n_pos"] == r["n_neg"] == 40 and r["auc_low"] < r["auc"] < r["auc_high"]
    few = np.r_[np.zeros(76), np.ones(4)].astype(int)
    assert A.readability(features, few, groups, 5, 0, 5) == {
        "n_pos": 4,
        "n_neg": 76,
        "skipped": "fewer than 5 images of a class",
    }
    two_groups = np.where(target == 1, 1, 0) + 2 * (np.arange(80) % 2 == 5)
    assert A.readability(features, target, two_groups, 5, 0, 5)["skipped"] == "fewer than 2 patients of a class"


def test_metadata_scores_see_only_the_named_columns():
    train = pd.DataFrame({"source": ["a"] * 10 + ["b"] * 10, "view": ["PA", "AP"] * 10, "label": [1] * 10 + [0] * 10})
    test = pd.DataFrame({"source": ["a", "b", "c"], "view": ["AP", "PA", "AP"]})
    s = A.metadata_scores(train, test, ["source"])
    assert s[0] > 0.5 > s[1] and s[2] == pytest.approx(A.metadata_scores(train, test.assign(source="z"), ["source"])[2])
    view_only = A.metadata_scores(train, test, ["view"])
    assert view_only == pytest.approx([0.5, 0.5, 0.5], abs=1e-6)  # the view says nothing here
    with pytest.raises(A.AuditError, match="lacks: sex"):
        A.metadata_scores(train, test, ["source", "sex"])


def test_stratum_metrics_against_independent_computation():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)
    s = np.clip(0.3 * y + rng.uniform(0, 0.7, 50), 0, 1)
    m = A.stratum_metrics(y, s, 0.5, "wilson", 0.05, 5)
    tp, fn = int(((s >= 0.5) & (y == 1)).sum()), int(((s < 0.5) & (y == 1)).sum())
    tn = int(((s < 0.5) & (y == 0)).sum())
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["sensitivity"] == tp / (tp + fn) and m["specificity"] == tn / int((y == 0).sum())
    assert (m["sensitivity_low"], m["sensitivity_high"]) == pytest.approx(
        proportion_confint(tp, tp + fn, method="wilson")
    )
    only_neg = A.stratum_metrics(np.zeros(8), np.linspace(0, 1, 8), 0.5, "wilson", 0.05, 5)
    assert "auc" not in only_neg and "sensitivity" not in only_neg and only_neg["specificity"] == 0.5


def _table(n=200, seed=0, mixed=True, view_shortcut=False):
    """A manifest-like table: label, source (mixed within classes or not), view, split, scores."""
    rng = np.random.default_rng(seed)
    label = np.array([0, 1] * (n // 2))
    source = np.where(
        rng.uniform(size=n) < (0.7 if mixed else 1.0),
        np.where(label == 1, "cohen", "chexpert"),
        np.where(label == 1, "chexpert", "cohen"),
    )
    view = np.where(label == 1, "AP", "PA") if view_shortcut else rng.choice(["PA", "AP", "AP Supine"], n)
    split = np.array(["train", "train", "val", "test", "test"] * (n // 5))
    score = np.clip(0.5 * label + rng.uniform(0, 0.6, n), 0, 1)
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "source": source,
            "view": view,
            "label": label,
            "split": split,
            "split_group": [f"g{k}" for k in range(n)],
            "score": score,
        }
    )


def _audit(table, features):
    return A.audit(table, features, 0.5, folds=5, seed=0, flag_auc=0.7, metadata=["source", "view"], min_per_class=5)


def test_audit_flags_a_source_written_in_the_features_and_not_noise():
    table = _table()
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((len(table), 8))
    clean = _audit(table, noise)
    assert clean["flags"] == {
        "image_shows_source": False,
        "image_shows_view": False,
        "metadata_rivals_model": False,
        "style_rivals_model": False,
        "source_is_label": False,
        "any": False,
    }
    assert clean["style_baseline"] == {"skipped": "no image statistics (no preprocessed cache)"}
    assert clean["verdict"].startswith("No shortcut flagged")
    planted = noise.copy()
    planted[:, 0] += 3.0 * (table["source"] == "cohen").to_numpy()
    shown = _audit(table, planted)
    assert shown["flags"]["image_shows_source"] and shown["flags"]["any"]
    assert shown["source_readability"]["negatives"]["auc_low"] > 0.7
    assert "the image source can be read from the image features within a class" in shown["verdict"]
    # the test strata and the PA-only test are the stratum metrics of those rows
    test = table[table["split"] == "test"]
    pa = test[test["view"] == "PA"]
    assert shown["pa_only"] == A.stratum_metrics(pa["label"], pa["score"], 0.5, "wilson", 0.05, 5)
    assert shown["by_view"]["AP"]["n"] == int(test["view"].str.startswith("AP").sum())
    assert set(shown["by_source"]) == {"chexpert", "cohen"}


def test_audit_says_when_source_is_the_label_and_metadata_rivals_the_model():
    table = _table(mixed=False)
    result = _audit(table, np.random.default_rng(4).standard_normal((len(table), 8)))
    assert result["flags"]["source_is_label"] and result["flags"]["metadata_rivals_model"]
    assert result["metadata_baseline"]["auc"] == 1.0 and not result["metadata_baseline"]["model_clearly_better"]
    assert result["source_readability"]["negatives"]["skipped"] == "fewer than 5 images of a class"
    assert result["verdict"].startswith("Shortcut risk: every COVID-19 image comes from one source")
    no_features = _audit(table, None)
    assert no_features["source_readability"]["all"] == {"skipped": "no cached features (train.mode: full)"}


def test_image_statistics_against_hand_computed_values():
    gray = np.zeros((32, 32))
    gray[8:24, 8:24] = 200.0  # a bright centre square on black
    stats = dict(zip(A.STYLE_FEATURES, A.image_statistics(gray, 640, 480)))
    assert stats["mean"] == pytest.approx(200 * 256 / 1024)
    assert stats["sd"] == pytest.approx(np.sqrt(0.25 * 0.75) * 200)
    assert stats["p50"] == 0.0 and stats["p99"] == 200.0
    assert stats["dark"] == 0.75 and stats["bright"] == 0.0
    assert stats["border"] == 0.0 and stats["centre"] == 200.0  # frame of 2 px; central half = the square
    # |d/dy| is 200 at 2 of 31 row steps inside 16 of 32 columns; the same across columns
    assert stats["gradient"] == pytest.approx(200 * 2 * 16 / (31 * 32))
    assert (stats["width"], stats["height"], stats["aspect"]) == (640.0, 480.0, 640 / 480)


def test_style_baseline_flags_statistics_that_carry_the_label():
    table = _table()
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((len(table), len(A.STYLE_FEATURES)))
    plain = A.audit(
        table, None, 0.5, folds=5, seed=0, flag_auc=0.7, metadata=["source", "view"], min_per_class=5, statistics=noise
    )
    assert not plain["flags"]["style_rivals_model"] and plain["style_baseline"]["model_clearly_better"]
    assert plain["style_baseline"]["features"] == list(A.STYLE_FEATURES)
    styled = noise.copy()
    styled[:, 0] += 4.0 * table["label"].to_numpy()  # brightness that tells the label
    shown = A.audit(
        table, None, 0.5, folds=5, seed=0, flag_auc=0.7, metadata=["source", "view"], min_per_class=5, statistics=styled
    )
    assert shown["flags"]["style_rivals_model"] and shown["style_baseline"]["auc"] > 0.95
    assert "only image statistics" in shown["verdict"]


def test_audit_table_needs_every_test_score():
    manifest = pd.DataFrame({"image_id": ["a", "b"], "split": ["test", "train"]})
    with pytest.raises(A.AuditError, match="no score for test image a"):
        A.audit_table(manifest, pd.DataFrame({"image_id": ["b"], "score": [0.1]}))


# ------------------------------------------------------------------------------ the stage, planted shortcut

PIPELINE = [
    "fetch",
    "filter",
    "negatives",
    "duplicates",
    "split",
    "preprocess",
    "augment",
    "featurize",
    "train",
    "evaluate",
    "audit",
]


def _run(tmp_path, shift: float) -> dict:
    """The tiny pipeline with Cohen's other pneumonias among the negatives (both sources in that
    class) and the sources' look shifted by ``shift`` (synthetic.*.style_shift)."""
    tmp_path.mkdir()
    ws = make_workspace(
        tmp_path,
        **{
            **TINY,
            "synthetic.cohen.other_patients": 16,
            "datasets.synthetic.negatives": ["chexpert", "cohen"],
            "synthetic.cohen.style_shift": shift,
            "synthetic.chexpert.style_shift": shift,
            "mlflow.enabled": False,
        },
    )
    for stage in PIPELINE:
        run_stage(ws, stage)
    return json.loads((ws / "metrics/audit.json").read_text())


@pytest.mark.slow
def test_audit_flags_a_planted_source_shortcut_and_not_the_same_run_without(tmp_path):
    """The same seed and data, once with the two sources given a different look: the audit finds
    the source readable among the negatives only then, and the model's AUC rises with the
    shortcut (it uses it)."""
    plain = _run(tmp_path / "plain", 0.0)
    planted = _run(tmp_path / "planted", 1.0)
    assert not plain["flags"]["image_shows_source"] and planted["flags"]["image_shows_source"]
    neg_plain, neg_planted = plain["source_readability"]["negatives"], planted["source_readability"]["negatives"]
    assert neg_plain["n_pos"] >= 10 and neg_planted["auc"] > neg_plain["auc"] + 0.2
    assert planted["metadata_baseline"]["model_auc"] > plain["metadata_baseline"]["model_auc"] + 0.05
    assert not plain["flags"]["source_is_label"]
    # image statistics alone read more of the label once the sources look different
    assert planted["style_baseline"]["auc"] > plain["style_baseline"]["auc"] + 0.05
    print(
        "planted:",
        {k: planted[k]["auc"] for k in ("metadata_baseline", "style_baseline")},
        planted["source_readability"]["negatives"],
        "plain:",
        {k: plain[k]["auc"] for k in ("metadata_baseline", "style_baseline")},
        plain["source_readability"]["negatives"],
    )


def test_stage_bad_parameter_is_one_line(tmp_path):
    ws = make_workspace(tmp_path, **{"audit.metadata": []})
    proc = run_stage(ws, "audit", check=False)
    assert proc.returncode == 2 and "audit.metadata" in error_line(proc)


def test_run_audit_reads_its_files_as_the_stage_does(tmp_path):
    """The stage's reading, in process: features of the original images in manifest order (the
    cache holds augmented copies and another order), the cached images' statistics, the scores
    of val/test, the operating point; the result is audit() of what was read."""
    table = _table(n=100)
    manifest = table.drop(columns="score")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((len(table), 6))
    order = rng.permutation(len(table))
    fdir = tmp_path / "features"
    fdir.mkdir()
    stored = np.vstack([feats[order], feats[:3] + 100.0])  # then 3 augmented copies, far away
    np.save(fdir / "features.npy", stored.astype(np.float32))
    pd.DataFrame(
        {
            "image_id": list(table["image_id"].iloc[order]) + list(table["image_id"].iloc[:3]),
            "parent": [""] * len(table) + list(table["image_id"].iloc[:3]),
        }
    ).to_csv(fdir / "index.csv", index=False)
    assert np.array_equal(A.load_features(fdir, table["image_id"]), feats.astype(np.float32).astype(np.float64))
    with pytest.raises(A.AuditError, match=r"no features for nope \(1 images\)"):
        A.load_features(fdir, ["nope"])
    assert A.load_features(tmp_path / "no-features", table["image_id"]) is None
    pre = tmp_path / "pre"
    (pre / "images").mkdir(parents=True)
    grays = {}
    for image_id in table["image_id"]:
        g = rng.integers(0, 256, (16, 16)).astype(np.uint8)
        grays[image_id] = g
        Image.fromarray(np.stack([g] * 3, axis=-1)).save(pre / "images" / f"{image_id}.png")
    pd.DataFrame(
        {
            "image_id": table["image_id"][::-1],
            "cache_path": [f"images/{i}.png" for i in table["image_id"][::-1]],
            "width": 300,
            "height": 200,
        }
    ).to_csv(pre / "index.csv", index=False)
    stats = A.load_statistics(pre, table["image_id"])
    assert stats.shape == (len(table), len(A.STYLE_FEATURES))
    assert np.array_equal(stats[5], A.image_statistics(grays[table["image_id"][5]], 300, 200))
    with pytest.raises(A.AuditError, match=r"no cached image for nope"):
        A.load_statistics(pre, ["nope"])
    assert A.load_statistics(tmp_path / "no-cache", table["image_id"]) is None
    scored = table[table["split"] != "train"]
    scored[["image_id", "score"]].to_csv(tmp_path / "predictions.csv", index=False)
    (tmp_path / "evaluate.json").write_text(json.dumps({"test": {"threshold": 0.4}}))
    cfg = Audit(folds=5, flag_auc=0.7, metadata=["source", "view"], min_per_class=5)
    result = A.run_audit(
        tmp_path / "manifest.csv",
        fdir,
        tmp_path / "predictions.csv",
        tmp_path / "evaluate.json",
        cfg,
        seed=0,
        ci_method="wilson",
        alpha=0.05,
        preprocessed_dir=pre,
    )
    read_table = A.audit_table(
        pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False),
        pd.read_csv(tmp_path / "predictions.csv", dtype={"image_id": str}),
    )
    assert read_table["score"].isna().tolist() == (table["split"] == "train").tolist()
    want = A.audit(
        read_table,
        feats.astype(np.float32).astype(np.float64),
        0.4,
        folds=5,
        seed=0,
        flag_auc=0.7,
        metadata=["source", "view"],
        min_per_class=5,
        statistics=stats,
    )
    assert json.dumps(result, sort_keys=True, default=str) == json.dumps(want, sort_keys=True, default=str)
    assert result["settings"]["threshold"] == 0.4 and "auc" in result["style_baseline"]
    first_test = scored.loc[scored["split"] == "test", "image_id"].iloc[0]
    scored[scored["image_id"] != first_test][["image_id", "score"]].to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(A.AuditError, match=f"no score for test image {first_test}"):
        A.run_audit(
            tmp_path / "manifest.csv",
            fdir,
            tmp_path / "predictions.csv",
            tmp_path / "evaluate.json",
            cfg,
            seed=0,
            ci_method="wilson",
            alpha=0.05,
        )


def _separable(n_groups=24, per_group=3, seed=0):
    """Features that carry a 0/1 target a little (overlapping), in groups of ``per_group`` images."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    target = (groups % 2).astype(int)
    features = rng.normal(size=(len(groups), 4)) + 0.8 * target[:, None]
    return features, target, groups


def test_grouped_scores_are_an_independent_standardised_logistic_regression_per_fold():
    """The folds, the head (standardised, C = 1) and the scores of an independent
    StratifiedGroupKFold loop written here, to the last bit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    features, target, groups = _separable()
    want = np.full(len(target), np.nan)
    for train, test in StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=7).split(features, target, groups):
        scaler = StandardScaler().fit(features[train])
        head = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(features[train]), target[train])
        want[test] = head.predict_proba(scaler.transform(features[test]))[:, 1]
    got = A.grouped_oof_scores(features.astype(np.float32), target, groups, 3, 7)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # float32 input read as float64
    np.testing.assert_array_equal(A.grouped_oof_scores(features, target, groups, 3, 7), want)


def test_readability_boundaries_and_its_alpha():
    features, target, groups = _separable(n_groups=4, per_group=3)  # 6 images, 2 patients per class
    at_minimum = A.readability(features, target, groups, folds=5, seed=0, min_per_class=6)
    assert "skipped" not in at_minimum and at_minimum["folds"] == 2  # exactly the minimum; 2 patients
    assert "skipped" in A.readability(features, target, groups, folds=5, seed=0, min_per_class=7)
    features, target, groups = _separable()
    wide = A.readability(features, target, groups, folds=3, seed=0, min_per_class=1, alpha=0.5)
    from deepcovid.evaluation.delong import auc_delong

    r = auc_delong(target, A.grouped_oof_scores(features, target, groups, 3, 0), alpha=0.5)
    assert (wide["auc"], wide["auc_low"], wide["auc_high"]) == (r["auc"], r["low"], r["high"])


def test_stratum_metrics_use_the_given_interval_method_and_alpha_and_the_minimum_inclusively():
    from deepcovid.evaluation.delong import auc_delong
    from deepcovid.evaluation.proportions import proportion_ci

    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.4, 0.7, 0.2, 0.6, 0.1, 0.3])
    out = A.stratum_metrics(y, s, 0.5, "jeffreys", 0.3, min_per_class=3)
    r = auc_delong(y, s, alpha=0.3)
    assert (out["auc"], out["auc_low"], out["auc_high"]) == (r["auc"], r["low"], r["high"])
    assert (out["sensitivity_low"], out["sensitivity_high"]) == proportion_ci(2, 3, method="jeffreys", alpha=0.3)
    assert (out["specificity_low"], out["specificity_high"]) == proportion_ci(3, 4, method="jeffreys", alpha=0.3)
    assert "auc" not in A.stratum_metrics(y, s, 0.5, "jeffreys", 0.3, min_per_class=4)


def test_baselines_use_the_given_alpha_and_readability_needs_a_lower_bound_above_the_flag():
    from deepcovid.evaluation.delong import auc_delong, delong_paired_test

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    model = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.5, 0.1, 0.2, 0.6])
    base = np.array([0.6, 0.4, 0.5, 0.9, 0.5, 0.3, 0.4, 0.7, 0.2])
    got = A.baseline_against_model(y, model, base, alpha=0.4)
    b, p = auc_delong(y, base, alpha=0.4), delong_paired_test(y, model, base, alpha=0.4)
    assert (got["auc_low"], got["auc_high"]) == (b["low"], b["high"])
    assert (got["difference_low"], got["difference_high"], got["p_value"]) == (p["low"], p["high"], p["p_value"])
    assert A._readable({"negatives": {"auc_low": 0.6}}, 0.6) is False
    assert A._readable({"negatives": {"auc_low": 0.61}, "positives": {"skipped": "x"}}, 0.6) is True
    assert A._readable({"positives": {"skipped": "x"}}, 0.6) is False


def test_image_statistics_thresholds_frame_and_percentiles_by_hand():
    g = np.zeros((64, 48), np.uint8)
    g[:, :] = np.arange(48)[None, :] * 5  # columns 0, 5, 10, ... 235
    g[10:20, 10:20] = 250
    stats = dict(zip(A.STYLE_FEATURES, A.image_statistics(g, 480, 640)))
    x = g.astype(np.float64)
    assert stats["dark"] == 2 / 48  # the columns of 0 and of exactly 5 count
    assert stats["bright"] == 100 / 3072  # exactly 250 counts
    frame = 3  # min(64, 48) // 16
    border = np.concatenate([x[:frame].ravel(), x[-frame:].ravel(), x[:, :frame].ravel(), x[:, -frame:].ravel()])
    assert stats["border"] == border.mean()
    assert stats["gradient"] == (np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2
    for name, q in zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"), (1, 5, 25, 50, 75, 95, 99)):
        assert stats[name] == np.percentile(x, q), name
    assert (stats["width"], stats["height"], stats["aspect"]) == (480.0, 640.0, 0.75)


def test_cached_statistics_and_features_keep_ids_as_text(tmp_path):
    """Image ids such as "007" or "NA" are names, not numbers or missing values."""
    ids = ["007", "NA", "b"]
    cache = tmp_path / "pre"
    (cache / "images").mkdir(parents=True)
    rows = []
    for k, image_id in enumerate(ids):
        Image.fromarray(np.full((8, 8, 3), 40 * (k + 1), np.uint8)).save(cache / "images" / f"{k}.png")
        rows.append({"image_id": image_id, "cache_path": f"images/{k}.png", "width": 10 + k, "height": 20})
    pd.DataFrame(rows).to_csv(cache / "index.csv", index=False)
    stats = A.load_statistics(cache, ["b", "007", "NA"])
    assert stats[:, A.STYLE_FEATURES.index("mean")].tolist() == [120.0, 40.0, 80.0]
    assert A.load_statistics(cache, []).shape == (0, len(A.STYLE_FEATURES))
    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / "features.npy", np.arange(8, dtype=np.float32).reshape(4, 2))
    pd.DataFrame({"image_id": ["007", "007_aug", "NA", "b"], "parent": ["", "007", "", ""]}).to_csv(
        feats / "index.csv", index=False
    )
    got = A.load_features(feats, ["b", "NA", "007"])
    assert got.dtype == np.float64 and got.tolist() == [[6.0, 7.0], [4.0, 5.0], [0.0, 1.0]]


def test_the_verdict_text_in_full():
    """The paragraph the card and metrics/audit.json carry, every clause, for all flags and none."""
    base = {"model_auc": 0.81234, "auc": 0.7, "difference": 0.11234, "difference_low": -0.05, "difference_high": 0.3}
    style = {"auc": 0.75, "difference": 0.06, "difference_low": -0.1, "difference_high": 0.2}
    result = {
        "flags": {k: True for k in ("source_is_label", "image_shows_source", "image_shows_view")}
        | {"metadata_rivals_model": True, "style_rivals_model": True},
        "metadata_baseline": base,
        "style_baseline": style,
        "settings": {"metadata": ["source", "view"]},
    }
    assert A.verdict(result) == (
        "Shortcut risk: every COVID-19 image comes from one source and every other image from another, so the "
        "source alone separates the classes and the AUC cannot show that the model reads disease; the image "
        "source can be read from the image features within a class; the view (PA / AP) can be read from the "
        "image features within a class; the model (AUC 0.812) does not clearly beat a classifier that sees only "
        "source and view (AUC 0.700; difference +0.112 [-0.050, +0.300]); the model does not clearly beat a "
        "classifier that sees only image statistics (intensity distribution, border, sharpness, image size; AUC "
        "0.750; difference +0.060 [-0.100, +0.200])."
    )
    result["flags"] = {k: False for k in result["flags"]}
    assert A.verdict(result) == (
        "No shortcut flagged: source and view are not readable within a class and the model beats the "
        "metadata-only baseline (AUC 0.812 vs 0.700) and the image-statistics baseline."
    )
    flags = A.flags(
        {
            "source_readability": {"negatives": {"auc_low": 0.9}},
            "view_readability": {"negatives": {"skipped": "x"}},
            "metadata_baseline": {"model_clearly_better": True},
        },
        0.6,
        source_is_label=False,
    )
    assert flags == {
        "image_shows_source": True,
        "image_shows_view": False,
        "metadata_rivals_model": False,
        "style_rivals_model": False,
        "source_is_label": False,
        "any": True,
    }


def test_audit_reads_source_and_view_within_each_class_on_the_right_rows():
    """Each readability section is readability() on the rows it names: the positives' main source
    against the rest, PA against AP (other views left out), over all images, the negatives and the
    positives; the strata of the test split in sorted order; messages of refused inputs."""
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(40), 2)
    label = (patients < 20).astype(int)
    source = np.where(
        label == 1, np.where(patients % 5 == 0, "other", "cohen"), np.where(patients % 3 == 0, "cohen", "chexpert")
    )
    view = np.array(["PA", "AP", "LL", "AP supine"])[np.arange(80) % 4]
    split = np.where(patients % 4 == 0, "test", np.where(patients % 4 == 1, "val", "train"))
    split[patients % 4 == 2] = "test"
    table = pd.DataFrame(
        {
            "source": source,
            "view": view,
            "label": label.astype(str),
            "split": split,
            "split_group": patients.astype(str),
            "score": rng.random(80),
        }
    )
    features = rng.normal(size=(80, 3)) + 0.7 * (source == "cohen")[:, None]
    kw = dict(folds=3, seed=5, min_per_class=2)
    out = A.audit(table, features, 0.5, flag_auc=0.6, metadata=["source", "view"], alpha=0.3, **kw)
    assert out["settings"]["source_tested"] == "cohen"
    is_cohen, is_pa, other = (source == "cohen").astype(int), (view == "PA").astype(int), view == "LL"
    for name, rows in (("all", label >= 0), ("negatives", label == 0), ("positives", label == 1)):
        assert out["source_readability"][name] == A.readability(
            features[rows], is_cohen[rows], patients.astype(str)[rows], alpha=0.3, **kw
        ), name
        keep = rows & ~other
        assert out["view_readability"][name] == A.readability(
            features[keep], is_pa[keep], patients.astype(str)[keep], alpha=0.3, **kw
        ), name
    assert list(out["by_source"]) == ["chexpert", "cohen", "other"] and list(out["by_view"]) == ["AP", "PA"]
    with pytest.raises(A.AuditError, match="audit table lacks score, split_group"):
        A.audit(table.drop(columns=["score", "split_group"]), features, 0.5, flag_auc=0.6, metadata=[], **kw)
    with pytest.raises(A.AuditError, match="training split holds one class only: no metadata baseline"):
        A.metadata_scores(table[table["label"] == "1"], table, ["source"])
    with pytest.raises(A.AuditError, match="training split holds one class only: no style baseline"):
        A.style_scores(features[:5], np.ones(5), features)
    with pytest.raises(A.AuditError, match=r"features \(80\), target \(3\) and groups \(80\) differ in length"):
        A.grouped_oof_scores(features, label[:3], patients, 3, 0)
    with pytest.raises(A.AuditError, match="a training fold holds one class only"):
        A.grouped_oof_scores(features[:6], np.array([1, 1, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 2, 2]), 3, 0)
