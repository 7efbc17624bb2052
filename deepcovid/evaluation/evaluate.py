"""The evaluate stage's computation: operating point, intervals, AUC, calibration -> :class:`EvalResult`.

The operating point is the highest threshold reaching ``target_sensitivity`` on the validation
split, applied unchanged to test. The paper chose its thresholds on the test set itself: that
choice is reported apart as ``paper_style``. Without a usable validation split the paper-style
threshold is used for ``test`` too (a warning; ``settings.operating_point_chosen_on = "test"``).
Inputs: :mod:`.predictions`; outputs written by :mod:`.report`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field

from deepcovid.config import Evaluate, Params
from deepcovid.errors import InputError
from deepcovid.evaluation.calibration import expected_calibration_error
from deepcovid.evaluation.delong import MIN_PER_CLASS as DELONG_MIN_PER_CLASS
from deepcovid.evaluation.delong import auc_delong
from deepcovid.evaluation.plot_data import calibration_frame, confusion_frame, pr_frame, roc_frame, score_histogram
from deepcovid.evaluation.predictions import SplitData
from deepcovid.evaluation.proportions import paper_interval, summarize, threshold_for_sensitivity, threshold_table
from deepcovid.evaluation.ranking import auc_bootstrap, average_precision

log = logging.getLogger("evaluate")


class EvalConfig(Evaluate):
    """The ``evaluate`` section of params.yaml (:class:`deepcovid.config.Evaluate`, every field and
    bound) with the top-level ``seed`` of its bootstrap. Validated when built, like the section."""

    seed: Annotated[int, Field(ge=0)]

    @classmethod
    def from_config(cls, cfg: Params) -> EvalConfig:
        return cls(**dict(cfg.evaluate), seed=cfg.seed)


# --------------------------------------------------------------------------- pieces


def _finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):  # the inputs are checked finite: this is a bug, with its traceback
        raise ValueError(f"non-finite metric {x} (a bug: the inputs are checked finite)")
    return x


#: Key order of a metrics section: the headline numbers first (what ``dvc metrics show`` lists).
KEY_ORDER = (
    "threshold",
    "threshold_chosen_on_val",
    "paper_style_test_threshold",
    "auc",
    "auc_low",
    "auc_high",
    "ap",
    "sensitivity",
    "sensitivity_low",
    "sensitivity_high",
    "specificity",
    "specificity_low",
    "specificity_high",
    "ece",
    "n",
    "n_pos",
    "n_neg",
    "prevalence",
    "tp",
    "fn",
    "tn",
    "fp",
)


def _ordered(section: dict) -> dict:
    """Headline keys first, plain JSON types, every float finite."""
    keys = [k for k in KEY_ORDER if k in section] + [k for k in section if k not in KEY_ORDER]
    out = {}
    for k in keys:
        v = section[k]
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        else:
            out[k] = _finite(v)
    return out


def auc_with_ci(y, s, cfg: EvalConfig) -> dict:
    """``{"auc", "auc_low", "auc_high", "auc_ci_method"}`` by DeLong or the stratified bootstrap.

    DeLong needs two samples of each class; with fewer it falls back to the bootstrap (logged).
    """
    if np.unique(np.asarray(s)).size == 1:
        log.warning(
            "all %d scores are equal (%.6g): the model does not rank these images; AUC 0.5 and its "
            "zero-width interval say nothing about it",
            np.asarray(s).size,
            float(np.asarray(s).flat[0]),
        )
    if cfg.auc_ci == "delong":
        n_pos = int(np.sum(np.asarray(y) == 1))
        n_neg = np.asarray(y).size - n_pos
        if min(n_pos, n_neg) >= DELONG_MIN_PER_CLASS:
            r = auc_delong(y, s, alpha=cfg.alpha)
            return {"auc": r["auc"], "auc_low": r["low"], "auc_high": r["high"], "auc_ci_method": "delong"}
        log.warning(
            "DeLong interval impossible (%d positive, %d negative: needs %d of each); using the bootstrap",
            n_pos,
            n_neg,
            DELONG_MIN_PER_CLASS,
        )
    r = auc_bootstrap(y, s, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, alpha=cfg.alpha)
    return {"auc": r["auc"], "auc_low": r["low"], "auc_high": r["high"], "auc_ci_method": "bootstrap"}


def paper_intervals(summary: dict, alpha: float) -> dict:
    """The paper's Eq. 3 interval (:func:`~deepcovid.evaluation.proportions.paper_interval`) for sensitivity
    and specificity, unclipped and clipped, with the ``outside_unit`` flags."""
    out: dict = {}
    for name, k, n in (
        ("sensitivity", summary["tp"], summary["n_pos"]),
        ("specificity", summary["tn"], summary["n_neg"]),
    ):
        iv = paper_interval(k, n, alpha)
        out[f"paper_{name}_low"], out[f"paper_{name}_high"] = iv.low, iv.high
        out[f"paper_{name}_low_clipped"], out[f"paper_{name}_high_clipped"] = iv.low_clipped, iv.high_clipped
        out[f"paper_{name}_outside_unit"] = iv.outside_unit
    out["paper_interval_outside_unit"] = out["paper_sensitivity_outside_unit"] or out["paper_specificity_outside_unit"]
    return out


def _log_paper_outside(where: str, s: dict, method: str) -> None:
    for name in ("sensitivity", "specificity"):
        if s[f"paper_{name}_outside_unit"]:
            log.warning(
                "%s: the paper's interval for %s %.4f is [%.4f, %.4f], outside [0, 1] "
                "(clipped [%.4f, %.4f]; %s [%.4f, %.4f])",
                where,
                name,
                s[name],
                s[f"paper_{name}_low"],
                s[f"paper_{name}_high"],
                s[f"paper_{name}_low_clipped"],
                s[f"paper_{name}_high_clipped"],
                method,
                s[f"{name}_low"],
                s[f"{name}_high"],
            )


def operating_summary(y, s, threshold: float, cfg: EvalConfig) -> dict:
    """Counts, sensitivity/specificity with ``cfg.ci_method`` intervals and the paper's intervals."""
    summ = summarize(y, s, threshold, method=cfg.ci_method, alpha=cfg.alpha)
    summ.pop("ci_method")
    summ.pop("alpha")
    summ.update(paper_intervals(summ, cfg.alpha))
    return summ


def threshold_rows(y, s, cfg: EvalConfig, name: str = "test") -> pd.DataFrame:
    """metrics/thresholds.csv: :func:`~deepcovid.evaluation.proportions.threshold_table` with a ``ci_method``
    column; logs the rows whose paper interval leaves [0, 1]."""
    table = threshold_table(y, s, cfg.thresholds, method=cfg.ci_method, alpha=cfg.alpha)
    table.insert(0, "ci_method", cfg.ci_method)
    for row in table.itertuples():
        for rate in ("sensitivity", "specificity"):
            if getattr(row, f"paper_{rate}_outside_unit"):
                log.warning(
                    "%s: at threshold %g the paper's interval for %s %.4f is [%.4f, %.4f], outside [0, 1]",
                    name,
                    row.threshold,
                    rate,
                    getattr(row, rate),
                    getattr(row, f"paper_{rate}_low"),
                    getattr(row, f"paper_{rate}_high"),
                )
    return table


# --------------------------------------------------------------------------- the whole evaluation


#: What metrics/evaluate.json holds (``dvc metrics show / diff``): the headline numbers only.
#: Everything else (counts, clipped paper bounds, settings) is in metrics/evaluate_details.json.
COMPACT_KEYS = {
    "test": (
        "threshold",
        "threshold_chosen_on_val",
        "auc",
        "auc_low",
        "auc_high",
        "ap",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "ece",
        "paper_sensitivity_low",
        "paper_sensitivity_high",
        "paper_specificity_low",
        "paper_specificity_high",
        "paper_interval_outside_unit",
        "n_pos",
        "n_neg",
    ),
    "val": (
        "threshold",
        "auc",
        "auc_low",
        "auc_high",
        "ap",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "ece",
    ),
    "external": (
        "threshold",
        "auc",
        "auc_low",
        "auc_high",
        "ap",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "ece",
        "n_pos",
        "n_neg",
    ),
    "paper_style": (
        "paper_style_test_threshold",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "paper_sensitivity_low",
        "paper_sensitivity_high",
        "paper_specificity_low",
        "paper_specificity_high",
        "paper_interval_outside_unit",
    ),
}


@dataclass
class EvalResult:
    details: dict
    thresholds: pd.DataFrame
    roc: pd.DataFrame
    pr: pd.DataFrame
    confusion: pd.DataFrame
    scores: pd.DataFrame
    calibration: pd.DataFrame
    test: pd.DataFrame
    warnings: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.details["test"]["threshold"]

    @property
    def metrics(self) -> dict:
        """The compact view written to metrics/evaluate.json (see :data:`COMPACT_KEYS`)."""
        compact = {
            section: {k: self.details[section][k] for k in keys}
            for section, keys in COMPACT_KEYS.items()
            if section in self.details
        }
        if "model_sha256" in self.details:  # the model whose operating point this is
            compact["model_sha256"] = self.details["model_sha256"]
        return compact


def evaluate(
    df: pd.DataFrame,
    cfg: EvalConfig,
    name: str = "predictions",
    threshold: float | None = None,
    model_sha256: str | None = None,
) -> EvalResult:
    """Evaluate a table returned by :func:`~deepcovid.evaluation.predictions.load_predictions`.

    ``model_sha256``, the SHA-256 of the model.pt that scored ``df``, is recorded beside the
    operating point (``model_sha256`` of evaluate.json): inference refuses to label another
    model's scores at it (:func:`~deepcovid.evaluation.predictions.operating_point`).

    The operating point is chosen on ``val`` unless ``threshold`` is given (an external test at
    a trained model's operating point). Rows of the split ``external`` (sources held out of
    training) are evaluated at the same operating point (``external``); tables, plots and
    figures are those of ``test``."""
    test = SplitData(df[df["split"] == "test"].reset_index(drop=True))
    val = SplitData(df[df["split"] == "val"].reset_index(drop=True))
    external = SplitData(df[df["split"] == "external"].reset_index(drop=True))
    given = threshold
    if not test.both_classes:
        raise InputError(
            f"{name}: the test split needs both classes (label 0 and 1); "
            f"it has {len(test.frame)} rows, {int(test.frame['label'].sum())} COVID-19"
        )
    warnings: list[str] = []

    paper_threshold = threshold_for_sensitivity(test.labels, test.scores, cfg.target_sensitivity)
    if given is not None:
        threshold, chosen_on = float(given), "given"
    elif val.both_classes:
        threshold = threshold_for_sensitivity(val.labels, val.scores, cfg.target_sensitivity)
        chosen_on = "val"
    else:
        why = "no validation split" if len(val.frame) == 0 else "the validation split holds a single class"
        msg = (
            f"{name}: {why}: the operating point falls back to the paper-style threshold chosen on the TEST "
            f"split ({paper_threshold:.6g}); test sensitivity/specificity are then optimistic"
        )
        log.warning("%s", msg)
        warnings.append(msg)
        threshold, chosen_on = paper_threshold, "test"

    auc_methods: list[str] = []

    def split_metrics(data: SplitData, thr: float, split: str) -> dict:
        out = operating_summary(data.labels, data.scores, thr, cfg)
        try:
            auc = auc_with_ci(data.labels, data.scores, cfg)
        except InputError as exc:
            n_pos = int(data.labels.sum())
            raise InputError(
                f"{name}: {split} split ({n_pos} COVID-19, {data.labels.size - n_pos} other): {exc}"
            ) from None
        auc_methods.append(auc.pop("auc_ci_method"))
        out.update(auc)
        out["ap"] = average_precision(data.labels, data.scores)
        out["ece"] = expected_calibration_error(data.labels, data.scores, n_bins=cfg.calibration_bins)
        out["prevalence"] = out["n_pos"] / out["n"]
        return out

    test_m = split_metrics(test, threshold, "test")
    test_m["threshold_chosen_on_val"] = chosen_on == "val"
    _log_paper_outside(f"{name}: test operating point", test_m, cfg.ci_method)
    metrics: dict = {"test": test_m}
    if val.both_classes:
        metrics["val"] = split_metrics(val, threshold, "val")
        _log_paper_outside(f"{name}: validation operating point", metrics["val"], cfg.ci_method)
    if external.both_classes:
        metrics["external"] = split_metrics(external, threshold, "external")
        e = metrics["external"]
        log.info(
            "%s: external test (%d COVID-19, %d other): AUC %.4f [%.4f, %.4f], sensitivity %.4f, specificity "
            "%.4f at the same operating point",
            name,
            e["n_pos"],
            e["n_neg"],
            e["auc"],
            e["auc_low"],
            e["auc_high"],
            e["sensitivity"],
            e["specificity"],
        )
    elif len(external.frame):
        msg = f"{name}: the external split holds a single class ({len(external.frame)} images): not evaluated"
        log.warning("%s", msg)
        warnings.append(msg)
    paper = operating_summary(test.labels, test.scores, paper_threshold, cfg)
    paper["paper_style_test_threshold"] = paper.pop("threshold")
    _log_paper_outside(f"{name}: paper-style test threshold", paper, cfg.ci_method)
    metrics["paper_style"] = paper
    metrics["settings"] = {
        "operating_point_chosen_on": chosen_on,
        "target_sensitivity": cfg.target_sensitivity,
        "ci_method": cfg.ci_method,
        "auc_ci_method": auc_methods[0],
        "alpha": cfg.alpha,
        "bootstrap_resamples": cfg.bootstrap_resamples if "bootstrap" in auc_methods else 0,
        "seed": cfg.seed,
        "calibration_bins": cfg.calibration_bins,
    }
    if model_sha256 is not None:
        metrics["model_sha256"] = str(model_sha256)
    for section in ("test", "val", "external", "paper_style"):
        if section in metrics:
            metrics[section] = _ordered(metrics[section])

    log.info(
        "%s: operating point %.6g (chosen on %s for sensitivity >= %g): test sensitivity %.4f "
        "[%.4f, %.4f], specificity %.4f [%.4f, %.4f] (%s)",
        name,
        threshold,
        chosen_on,
        cfg.target_sensitivity,
        test_m["sensitivity"],
        test_m["sensitivity_low"],
        test_m["sensitivity_high"],
        test_m["specificity"],
        test_m["specificity_low"],
        test_m["specificity_high"],
        cfg.ci_method,
    )
    log.info(
        "%s: paper-style test threshold %.6g: sensitivity %.4f, specificity %.4f",
        name,
        paper_threshold,
        paper["sensitivity"],
        paper["specificity"],
    )
    log.info(
        "%s: test AUC %.4f [%.4f, %.4f] (%s), AP %.4f, ECE %.4f",
        name,
        test_m["auc"],
        test_m["auc_low"],
        test_m["auc_high"],
        metrics["settings"]["auc_ci_method"],
        test_m["ap"],
        test_m["ece"],
    )

    return EvalResult(
        details=metrics,
        thresholds=threshold_rows(test.labels, test.scores, cfg, name=f"{name} (test)"),
        roc=roc_frame(test.labels, test.scores),
        pr=pr_frame(test.labels, test.scores),
        confusion=confusion_frame(test.labels, test.scores, threshold, test.frame["image_id"]),
        scores=score_histogram(test.scores, test.frame["group"], cfg.histogram_bins),
        calibration=calibration_frame(test.labels, test.scores, cfg.calibration_bins),
        test=test.frame,
        warnings=warnings,
    )
