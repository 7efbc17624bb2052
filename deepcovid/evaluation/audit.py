"""The confounder audit: does the model see COVID-19, or where and how the image was taken?

The Deep-COVID design takes its COVID-19 images from one collection and most negatives from
another, so a classifier can score well by recognising the source (its scanners, processing,
text markers) or the view (AP portable films for the sick, PA for the rest). The audit measures,
on every run (the ``audit`` stage):

- **Readability**: the same kind of head as the model's (a linear layer with a logistic output,
  here scikit-learn's L2 logistic regression on the standardised cached backbone features),
  trained to predict the image's source and its view; out-of-fold AUC with DeLong intervals,
  folds grouped by patient (``split_group``). Within one class (among the negatives, among the
  positives) a readable source or view means the images carry it apart from the disease.
- **Metadata-only baseline**: the label predicted from ``source`` and ``view`` (one-hot) alone,
  fit on the training split, scored on test, beside the model's AUC with DeLong's paired test.
- **Strata**: sensitivity, specificity (at the evaluate stage's operating point) and AUC with
  intervals per source and per view, and the PA-only (view-matched) test.

Pure functions of arrays and tables; :func:`run_audit` reads the stage's files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from deepcovid import config
from deepcovid.errors import InputError
from deepcovid.evaluation.delong import auc_delong, delong_paired_test
from deepcovid.evaluation.predictions import operating_point
from deepcovid.evaluation.proportions import confusion_at_threshold, proportion_ci

log = logging.getLogger("audit")


class AuditError(InputError):
    """The audit's inputs do not fit together."""


def view_class(view: str) -> str:
    """``PA``, ``AP`` (any AP variant: supine, erect...) or ``other``."""
    v = str(view).strip().upper()
    return "PA" if v == "PA" else "AP" if v.startswith("AP") else "other"


def _head() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))


def grouped_oof_scores(
    features: np.ndarray, target: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold probabilities of ``target`` (0/1) from ``features``, folds stratified by target
    and never splitting a group (``StratifiedGroupKFold``, shuffled with ``seed``)."""
    features, target, groups = np.asarray(features, dtype=np.float64), np.asarray(target), np.asarray(groups)
    if not (len(features) == len(target) == len(groups)):
        raise AuditError(
            f"features ({len(features)}), target ({len(target)}) and groups ({len(groups)}) differ in length"
        )
    scores = np.full(len(target), np.nan)
    for train, test in StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
        features, target, groups
    ):
        if len(np.unique(target[train])) < 2:
            raise AuditError("a training fold holds one class only: too few groups of a class for these folds")
        scores[test] = _head().fit(features[train], target[train]).predict_proba(features[test])[:, 1]
    return scores


def readability(features, target, groups, folds: int, seed: int, min_per_class: int, alpha: float = 0.05) -> dict:
    """Cross-validated AUC (DeLong interval) of predicting ``target`` from ``features``, or
    ``{"skipped": reason}`` when a class has fewer than ``min_per_class`` images or fewer groups
    than folds."""
    target, groups = np.asarray(target).astype(int), np.asarray(groups)
    n_pos, n_neg = int(target.sum()), int((target == 0).sum())
    out = {"n_pos": n_pos, "n_neg": n_neg}
    if min(n_pos, n_neg) < min_per_class:
        return {**out, "skipped": f"fewer than {min_per_class} images of a class"}
    groups_per_class = min(len(set(groups[target == 1])), len(set(groups[target == 0])))
    k = min(folds, groups_per_class)
    if k < 2:
        return {**out, "skipped": "fewer than 2 patients of a class"}
    scores = grouped_oof_scores(features, target, groups, k, seed)
    r = auc_delong(target, scores, alpha=alpha)
    return {"auc": r["auc"], "auc_low": r["low"], "auc_high": r["high"], **out, "folds": k}


def metadata_scores(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Label probabilities on ``test`` of a logistic regression on the one-hot ``columns`` fit on
    ``train`` (values unseen in training get all-zero codes)."""
    missing = [c for c in columns if c not in train.columns]
    if missing:
        raise AuditError(f"audit.metadata names columns the manifest lacks: {', '.join(missing)}")
    y = train["label"].to_numpy().astype(int)
    if len(np.unique(y)) < 2:
        raise AuditError("the training split holds one class only: no metadata baseline")
    model = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(train[columns].astype(str), y)
    return model.predict_proba(test[columns].astype(str))[:, 1]


#: The image statistics of the style baseline: what a scanner, a processing chain or a collection
#: changes without any disease (intensity distribution, dark / saturated share, border against
#: centre, sharpness) and the stored image's size and shape.
STYLE_FEATURES = (
    "mean",
    "sd",
    "p01",
    "p05",
    "p25",
    "p50",
    "p75",
    "p95",
    "p99",
    "dark",
    "bright",
    "border",
    "centre",
    "gradient",
    "width",
    "height",
    "aspect",
)


def image_statistics(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """:data:`STYLE_FEATURES` of one cached image (2-D, 0..255) whose source was ``width`` x ``height``."""
    g = np.asarray(gray, dtype=np.float64)
    h, w = g.shape
    frame = max(1, min(h, w) // 16)
    border = np.concatenate([g[:frame].ravel(), g[-frame:].ravel(), g[:, :frame].ravel(), g[:, -frame:].ravel()])
    centre = g[h // 4 : h - h // 4, w // 4 : w - w // 4]
    gradient = (np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()) / 2
    q = np.percentile(g, [1, 5, 25, 50, 75, 95, 99])
    return np.array(
        [
            g.mean(),
            g.std(),
            *q,
            (g <= 5).mean(),
            (g >= 250).mean(),
            border.mean(),
            centre.mean(),
            gradient,
            float(width),
            float(height),
            float(width) / float(height),
        ]
    )


def load_statistics(preprocessed_dir, image_ids) -> np.ndarray | None:
    """:func:`image_statistics` of the cached images in ``image_ids`` order (the preprocess stage's
    ``index.csv``: cache_path, width, height), or None without a cache index."""
    from deepcovid.data.images import load_cached

    folder = Path(preprocessed_dir)
    if not (folder / "index.csv").is_file():
        return None
    index = pd.read_csv(folder / "index.csv", dtype=str, keep_default_na=False).set_index("image_id")
    missing = [i for i in image_ids if i not in index.index]
    if missing:
        raise AuditError(f"{folder / 'index.csv'}: no cached image for {missing[0]} ({len(missing)} images)")
    rows = []
    for image_id in image_ids:
        r = index.loc[image_id]
        rows.append(image_statistics(load_cached(folder / r["cache_path"])[..., 0], int(r["width"]), int(r["height"])))
    return np.vstack(rows) if rows else np.zeros((0, len(STYLE_FEATURES)))


def style_scores(train_x: np.ndarray, train_y, test_x: np.ndarray) -> np.ndarray:
    """Label probabilities on ``test_x`` of a logistic regression on standardised image statistics fit on train."""
    y = np.asarray(train_y).astype(int)
    if len(np.unique(y)) < 2:
        raise AuditError("the training split holds one class only: no style baseline")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(train_x, y)
    return model.predict_proba(test_x)[:, 1]


def baseline_against_model(y_test, model_scores, baseline, alpha: float) -> dict:
    """A baseline's test AUC with DeLong's interval beside the model's, with the paired test."""
    paired = delong_paired_test(y_test, model_scores, baseline, alpha=alpha)
    base = auc_delong(y_test, baseline, alpha=alpha)
    return {
        "auc": base["auc"],
        "auc_low": base["low"],
        "auc_high": base["high"],
        "model_auc": paired["auc_a"],
        "difference": paired["difference"],
        "difference_low": paired["low"],
        "difference_high": paired["high"],
        "p_value": paired["p_value"],
        "model_clearly_better": bool(paired["low"] > 0),
    }


def stratum_metrics(y, scores, threshold: float, ci_method: str, alpha: float, min_per_class: int) -> dict:
    """n, sensitivity and specificity at ``threshold`` with intervals, and the AUC with DeLong's
    interval when each class has at least ``min_per_class`` images."""
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    c = confusion_at_threshold(y, scores, threshold)
    out: dict = {"n": int(len(y)), "n_pos": c["tp"] + c["fn"], "n_neg": c["tn"] + c["fp"]}
    if min(out["n_pos"], out["n_neg"]) >= max(min_per_class, 1):
        r = auc_delong(y, scores, alpha=alpha)
        out.update(auc=r["auc"], auc_low=r["low"], auc_high=r["high"])
    for name, k, n in (("sensitivity", c["tp"], out["n_pos"]), ("specificity", c["tn"], out["n_neg"])):
        if n:
            low, high = proportion_ci(k, n, method=ci_method, alpha=alpha)
            out.update({name: k / n, f"{name}_low": low, f"{name}_high": high})
    return out


def audit(
    table: pd.DataFrame,
    features: np.ndarray | None,
    threshold: float,
    *,
    folds: int,
    seed: int,
    flag_auc: float,
    metadata: list[str],
    min_per_class: int,
    ci_method: str = "wilson",
    alpha: float = 0.05,
    statistics: np.ndarray | None = None,
) -> dict:
    """The audit of one run. ``table``: one row per image of the manifest (``source, view, label,
    split, split_group`` and ``score`` for val / test images), ``features``: their backbone
    features in the same order, or None (full fine-tuning: no cached features); ``statistics``:
    their :func:`image_statistics` in the same order, or None (no style baseline)."""
    need = {"source", "view", "label", "split", "split_group", "score"}
    if need - set(table.columns):
        raise AuditError(f"audit table lacks {', '.join(sorted(need - set(table.columns)))}")
    table = table.assign(view_class=table["view"].map(view_class), label=table["label"].astype(int))
    main_source = table.loc[table["label"] == 1, "source"].value_counts().idxmax()
    out: dict = {
        "settings": {
            "folds": folds,
            "flag_auc": flag_auc,
            "metadata": list(metadata),
            "threshold": threshold,
            "source_tested": main_source,
        }
    }

    # readability of source and view from the image features, overall and within each class
    for what, target in (
        ("source", (table["source"] == main_source).to_numpy().astype(int)),
        ("view", (table["view_class"] == "PA").to_numpy().astype(int)),
    ):
        section = {}
        for name, mask in (
            ("all", np.ones(len(table), bool)),
            ("negatives", (table["label"] == 0).to_numpy()),
            ("positives", (table["label"] == 1).to_numpy()),
        ):
            if features is None:
                section[name] = {"skipped": "no cached features (train.mode: full)"}
                continue
            keep = mask & ((table["view_class"] != "other").to_numpy() if what == "view" else True)
            section[name] = readability(
                features[keep], target[keep], table["split_group"].to_numpy()[keep], folds, seed, min_per_class, alpha
            )
        out[f"{what}_readability"] = section

    # metadata-only baseline against the model, on test
    test = table[table["split"] == "test"].reset_index(drop=True)
    train = table[table["split"] == "train"]
    y_test, model_scores = test["label"].to_numpy(), test["score"].to_numpy(dtype=np.float64)
    meta = metadata_scores(train, test, list(metadata))
    out["metadata_baseline"] = baseline_against_model(y_test, model_scores, meta, alpha)
    if statistics is None:
        out["style_baseline"] = {"skipped": "no image statistics (no preprocessed cache)"}
    else:
        is_train, is_test = (table["split"] == "train").to_numpy(), (table["split"] == "test").to_numpy()
        style = style_scores(statistics[is_train], table.loc[is_train, "label"], statistics[is_test])
        out["style_baseline"] = {
            **baseline_against_model(y_test, model_scores, style, alpha),
            "features": list(STYLE_FEATURES),
        }

    # strata of the test split
    for key, column in (("by_source", "source"), ("by_view", "view_class")):
        out[key] = {
            str(value): stratum_metrics(part["label"], part["score"], threshold, ci_method, alpha, min_per_class)
            for value, part in test.groupby(column, sort=True)
        }
    pa = test[test["view_class"] == "PA"]
    out["pa_only"] = stratum_metrics(pa["label"], pa["score"], threshold, ci_method, alpha, min_per_class)

    sources = [set(table.loc[table["label"] == c, "source"]) for c in (0, 1)]
    out["flags"] = flags(out, flag_auc, source_is_label=sources[0].isdisjoint(sources[1]))
    out["verdict"] = verdict(out)
    return out


def _readable(section: dict, flag_auc: float) -> bool:
    return any(
        "auc_low" in section.get(part, {}) and section[part]["auc_low"] > flag_auc
        for part in ("negatives", "positives")
    )


def flags(result: dict, flag_auc: float, source_is_label: bool) -> dict:
    """``image_shows_source`` / ``image_shows_view``: readable within a class (lower bound of the
    AUC above ``flag_auc``); ``metadata_rivals_model``: the model's AUC is not clearly (paired
    interval above 0) higher than the metadata baseline's; ``style_rivals_model``: the same against
    the style baseline (image statistics alone); ``source_is_label``: every positive
    comes from one source and every negative from others, so no within-class test exists."""
    f = {
        "image_shows_source": _readable(result["source_readability"], flag_auc),
        "image_shows_view": _readable(result["view_readability"], flag_auc),
        "metadata_rivals_model": not result["metadata_baseline"]["model_clearly_better"],
        "style_rivals_model": "auc" in result.get("style_baseline", {})
        and not result["style_baseline"]["model_clearly_better"],
        "source_is_label": bool(source_is_label),
    }
    f["any"] = any(f.values())
    return f


def verdict(result: dict) -> str:
    """One plain paragraph of what the flags mean for this run."""
    f, m = result["flags"], result["metadata_baseline"]
    said = []
    if f["source_is_label"]:
        said.append(
            "every COVID-19 image comes from one source and every other image from another, so the source "
            "alone separates the classes and the AUC cannot show that the model reads disease"
        )
    if f["image_shows_source"]:
        said.append("the image source can be read from the image features within a class")
    if f["image_shows_view"]:
        said.append("the view (PA / AP) can be read from the image features within a class")
    if f["metadata_rivals_model"]:
        said.append(
            f"the model (AUC {m['model_auc']:.3f}) does not clearly beat a classifier that sees only "
            f"{' and '.join(result['settings']['metadata'])} (AUC {m['auc']:.3f}; difference "
            f"{m['difference']:+.3f} [{m['difference_low']:+.3f}, {m['difference_high']:+.3f}])"
        )
    if f.get("style_rivals_model"):
        st = result["style_baseline"]
        said.append(
            f"the model does not clearly beat a classifier that sees only image statistics (intensity "
            f"distribution, border, sharpness, image size; AUC {st['auc']:.3f}; difference "
            f"{st['difference']:+.3f} [{st['difference_low']:+.3f}, {st['difference_high']:+.3f}])"
        )
    if not said:
        return (
            "No shortcut flagged: source and view are not readable within a class and the model beats the "
            f"metadata-only baseline (AUC {m['model_auc']:.3f} vs {m['auc']:.3f}) and the image-statistics "
            "baseline."
        )
    return "Shortcut risk: " + "; ".join(said) + "."


def audit_table(manifest: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The manifest's rows with their score (val / test images; NaN for train)."""
    scores = predictions.set_index("image_id")["score"]
    table = manifest.assign(score=manifest["image_id"].map(scores))
    if table.loc[table["split"] == "test", "score"].isna().any():
        missing = table.loc[(table["split"] == "test") & table["score"].isna(), "image_id"].iloc[0]
        raise AuditError(f"predictions have no score for test image {missing}")
    return table


def load_features(features_dir, image_ids) -> np.ndarray | None:
    """Features of the original (not augmented) images in ``image_ids`` order, or None when the
    featurize stage cached none (full fine-tuning)."""
    folder = Path(features_dir)
    if not (folder / "features.npy").is_file():
        return None
    index = pd.read_csv(folder / "index.csv", dtype=str, keep_default_na=False)
    feats = np.load(folder / "features.npy")
    original = (index["parent"] == "").to_numpy()
    row = pd.Series(np.nonzero(original)[0], index=index.loc[original, "image_id"])
    missing = [i for i in image_ids if i not in row.index]
    if missing:
        raise AuditError(f"{folder / 'index.csv'}: no features for {missing[0]} ({len(missing)} images)")
    return feats[row.loc[list(image_ids)].to_numpy()].astype(np.float64)


def run_audit(
    manifest_csv,
    features_dir,
    predictions_csv,
    evaluation_json,
    cfg: config.Audit,
    *,
    seed: int,
    ci_method: str,
    alpha: float,
    preprocessed_dir=None,
) -> dict:
    """The audit stage: read the manifest, features, predictions and operating point; log the verdict.
    ``cfg``: the ``audit`` section; ``ci_method`` and ``alpha``: those of ``evaluate``."""
    manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    predictions = pd.read_csv(predictions_csv, dtype={"image_id": str})
    table = audit_table(manifest, predictions)
    features = load_features(features_dir, table["image_id"])
    statistics = None if preprocessed_dir is None else load_statistics(preprocessed_dir, table["image_id"])
    result = audit(
        table,
        features,
        operating_point(evaluation_json),
        folds=cfg.folds,
        seed=seed,
        flag_auc=cfg.flag_auc,
        metadata=list(cfg.metadata),
        min_per_class=cfg.min_per_class,
        ci_method=ci_method,
        alpha=alpha,
        statistics=statistics,
    )
    for what in ("source", "view"):
        for part, r in result[f"{what}_readability"].items():
            if "auc" in r:
                log.info(
                    "%s readable from the image features (%s): AUC %.3f [%.3f, %.3f]",
                    what,
                    part,
                    r["auc"],
                    r["auc_low"],
                    r["auc_high"],
                )
            else:
                log.info("%s readability (%s): %s", what, part, r["skipped"])
    m = result["metadata_baseline"]
    log.info(
        "metadata-only baseline (%s): test AUC %.3f [%.3f, %.3f]; model %.3f, difference %+.3f [%+.3f, %+.3f]",
        ", ".join(cfg.metadata),
        m["auc"],
        m["auc_low"],
        m["auc_high"],
        m["model_auc"],
        m["difference"],
        m["difference_low"],
        m["difference_high"],
    )
    st = result["style_baseline"]
    if "auc" in st:
        log.info(
            "image-statistics (style) baseline: test AUC %.3f [%.3f, %.3f]; difference %+.3f [%+.3f, %+.3f]",
            st["auc"],
            st["auc_low"],
            st["auc_high"],
            st["difference"],
            st["difference_low"],
            st["difference_high"],
        )
    (log.warning if result["flags"]["any"] else log.info)("%s", result["verdict"])
    return result
