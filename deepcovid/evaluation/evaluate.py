"""Evaluation of a predictions table: operating point, intervals, curves, calibration.

The input is the table the train stage writes (``data/predictions.csv``), one row per scored
image, with the columns

=========  ========  ==================================================================
column     required  meaning
=========  ========  ==================================================================
image_id   yes       unique per split; the key on which models are paired (compare)
label      yes       1 = COVID-19, 0 = not
split      yes       ``val`` or ``test`` (other values, e.g. ``train``, are ignored)
score      yes       predicted COVID-19 probability in [0, 1]
group      no        ``covid`` / ``normal`` / ``other-disease``; absent: ``covid`` / ``non-covid``
                     from the label (logged)
source, patient, category   no   carried along, not used
=========  ========  ==================================================================

The **operating point** is the highest threshold reaching ``target_sensitivity`` on the
validation split (:func:`deepcovid.evaluation.statistics.threshold_for_sensitivity`), then applied unchanged
to the test split. The paper chose its thresholds on the test set itself; that choice is
reported separately and labelled ``paper_style`` (never mixed into the ``test`` numbers).
A table holding only a test split (or a validation split with a single class) has no honest
operating point: the paper-style test threshold is then used for ``test`` too, a warning is
logged and ``settings.operating_point_chosen_on`` says ``test``.

Everything written is finite: no NaN or Infinity reaches a JSON or CSV file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepcovid.evaluation import statistics as M
from deepcovid.params import ParamsError, get

log = logging.getLogger("evaluate")

REQUIRED_COLUMNS = ("image_id", "label", "split", "score")
OPTIONAL_COLUMNS = ("source", "patient", "group", "category")
SPLITS = ("val", "test")
#: Score-histogram groups in display order (paper Figs. 6-9), with their labels.
GROUPS = ("covid", "normal", "other-disease")
GROUP_LABELS = {"covid": "COVID-19", "normal": "Normal", "other-disease": "Other disease",
                "non-covid": "Non-COVID"}
CLASS_NAMES = {1: "COVID-19", 0: "non-COVID"}
AUC_CI_METHODS = ("delong", "bootstrap")
CI_METHODS = ("wilson", "clopper-pearson")

#: Used only when no params file exists (evaluate.py run outside the repository).
DEFAULTS = {
    "thresholds": [0.1, 0.2, 0.3, 0.5, 0.7],
    "target_sensitivity": 0.98,
    "ci_method": "wilson",
    "alpha": 0.05,
    "auc_ci": "delong",
    "bootstrap_resamples": 1000,
    "calibration_bins": 10,
    "histogram_bins": 20,
}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EvalConfig:
    thresholds: tuple[float, ...] = tuple(DEFAULTS["thresholds"])
    target_sensitivity: float = DEFAULTS["target_sensitivity"]
    ci_method: str = DEFAULTS["ci_method"]
    alpha: float = DEFAULTS["alpha"]
    auc_ci: str = DEFAULTS["auc_ci"]
    bootstrap_resamples: int = DEFAULTS["bootstrap_resamples"]
    seed: int = 42
    calibration_bins: int = DEFAULTS["calibration_bins"]
    histogram_bins: int = DEFAULTS["histogram_bins"]

    @classmethod
    def from_params(cls, params: dict) -> "EvalConfig":
        """Read and validate the ``evaluate`` section (and the top-level ``seed``)."""
        sec = get(params, "evaluate")
        if not isinstance(sec, dict):
            raise ParamsError("parameter evaluate must be a mapping")

        def num(key, low, high, integer=False):
            value = get(params, f"evaluate.{key}")
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or not low <= value <= high:
                kind = "an integer" if integer else "a number"
                raise ParamsError(f"parameter evaluate.{key} must be {kind} in [{low}, {high}], got {value!r}")
            return value

        thresholds = get(params, "evaluate.thresholds")
        if (not isinstance(thresholds, list) or not thresholds
                or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1 for t in thresholds)):
            raise ParamsError(f"parameter evaluate.thresholds must be a non-empty list of numbers in [0, 1], "
                              f"got {thresholds!r}")
        ci = get(params, "evaluate.ci_method")
        if ci not in CI_METHODS:
            raise ParamsError(f"parameter evaluate.ci_method must be one of {', '.join(CI_METHODS)}; got {ci!r}")
        auc_ci = get(params, "evaluate.auc_ci")
        if auc_ci not in AUC_CI_METHODS:
            raise ParamsError(f"parameter evaluate.auc_ci must be one of {', '.join(AUC_CI_METHODS)}; got {auc_ci!r}")
        seed = get(params, "seed", 42)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ParamsError(f"parameter seed must be an integer >= 0, got {seed!r}")
        return cls(
            thresholds=tuple(float(t) for t in thresholds),
            target_sensitivity=float(num("target_sensitivity", 0.0, 1.0)),
            ci_method=ci,
            alpha=float(num("alpha", 1e-6, 0.5)),
            auc_ci=auc_ci,
            bootstrap_resamples=int(num("bootstrap_resamples", 1, 1_000_000, integer=True)),
            seed=int(seed),
            calibration_bins=int(num("calibration_bins", 1, 1000, integer=True)),
            histogram_bins=int(num("histogram_bins", 1, 1000, integer=True)),
        )

    @classmethod
    def defaults(cls, seed: int = 42) -> "EvalConfig":
        return cls.from_params({"evaluate": dict(DEFAULTS), "seed": seed})


# --------------------------------------------------------------------------- input


def load_predictions(path: str | Path) -> pd.DataFrame:
    """Read and check a predictions table; errors are one line naming the file and the column.

    Returns the rows of the ``val`` and ``test`` splits with ``label`` as int, ``score`` as
    float, ``split`` lower-cased and a ``group`` column (derived from the label if absent).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    return read_predictions(path, name=str(path))


def read_predictions(source, name: str) -> pd.DataFrame:
    """:func:`load_predictions` for a path or file-like ``source``; messages name ``name``."""
    path = name
    try:
        df = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a readable CSV file ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r} (required columns: {', '.join(REQUIRED_COLUMNS)})")
    df["split"] = df["split"].str.strip().str.lower()
    other = sorted(set(df["split"]) - set(SPLITS))
    if other:
        log.info("%s: ignoring %d rows of split %s (only val and test are evaluated)", path,
                 int((~df["split"].isin(SPLITS)).sum()), ", ".join(map(repr, other)))
        df = df[df["split"].isin(SPLITS)].reset_index(drop=True)
    if not (df["split"] == "test").any():
        raise ValueError(f"{path}: column 'split' has no 'test' rows")
    for col in ("label", "score"):
        values = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: column {col!r} has {int(bad.sum())} empty or non-numeric values "
                             f"(first: {df[col].iloc[first]!r} at image_id {df['image_id'].iloc[first]!r})")
        df[col] = values.astype(float)
    if not df["label"].isin((0.0, 1.0)).all():
        found = sorted(set(df.loc[~df["label"].isin((0.0, 1.0)), "label"]))[:5]
        raise ValueError(f"{path}: column 'label' must hold 0 or 1 (1 = COVID-19); found {found}")
    df["label"] = df["label"].astype(np.int64)
    if df["score"].min() < 0.0 or df["score"].max() > 1.0:
        raise ValueError(f"{path}: column 'score' must be a probability in [0, 1]; "
                         f"found range [{df['score'].min()}, {df['score'].max()}]")
    dup = df.duplicated(["split", "image_id"])
    if dup.any():
        raise ValueError(f"{path}: column 'image_id' repeats within a split "
                         f"({int(dup.sum())} duplicates, e.g. {df.loc[dup, 'image_id'].iloc[0]!r})")
    if "group" in df.columns:
        df["group"] = df["group"].str.strip()
        if (df["group"] == "").any():
            raise ValueError(f"{path}: column 'group' has empty values")
        odd = df[(df["group"] == "covid") != (df["label"] == 1)]
        if len(odd):
            log.warning("%s: %d rows whose group disagrees with the label (e.g. %s: group %r, label %d)", path,
                        len(odd), odd["image_id"].iloc[0], odd["group"].iloc[0], odd["label"].iloc[0])
    else:
        log.warning("%s: no 'group' column; score histograms use covid / non-covid from the label", path)
        df["group"] = np.where(df["label"] == 1, "covid", "non-covid")
    return df


# --------------------------------------------------------------------------- pieces


def _finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"internal error: non-finite metric {x}")
    return x


#: Key order of a metrics section: the headline numbers first (what ``dvc metrics show`` lists).
KEY_ORDER = ("threshold", "threshold_chosen_on_val", "paper_style_test_threshold", "auc", "auc_low", "auc_high",
             "ap", "sensitivity", "sensitivity_low", "sensitivity_high", "specificity", "specificity_low",
             "specificity_high", "ece", "n", "n_pos", "n_neg", "prevalence", "tp", "fn", "tn", "fp")


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
    method = cfg.auc_ci
    if method == "delong":
        try:
            r = M.auc_delong(y, s, alpha=cfg.alpha)
            return {"auc": r["auc"], "auc_low": r["low"], "auc_high": r["high"], "auc_ci_method": "delong"}
        except ValueError as exc:
            if "at least 2 samples" not in str(exc):
                raise
            log.warning("DeLong interval impossible (%s); using the bootstrap", exc)
    r = M.auc_bootstrap(y, s, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, alpha=cfg.alpha)
    return {"auc": r["auc"], "auc_low": r["low"], "auc_high": r["high"], "auc_ci_method": "bootstrap"}


def paper_intervals(summary: dict, alpha: float) -> dict:
    """The paper's ``p +/- z sqrt(p(1-p)/N)`` for sensitivity and specificity, unclipped and clipped."""
    out: dict = {}
    outside = False
    for name, n in (("sensitivity", summary["n_pos"]), ("specificity", summary["n_neg"])):
        k = summary["tp"] if name == "sensitivity" else summary["tn"]
        low, high = M.proportion_ci(k, n, method="paper", alpha=alpha)
        clow, chigh = M.proportion_ci(k, n, method="paper-clipped", alpha=alpha)
        out[f"paper_{name}_low"], out[f"paper_{name}_high"] = low, high
        out[f"paper_{name}_low_clipped"], out[f"paper_{name}_high_clipped"] = clow, chigh
        flag = low < 0.0 or high > 1.0
        out[f"paper_{name}_outside_unit"] = bool(flag)
        outside = outside or flag
    out["paper_interval_outside_unit"] = bool(outside)
    return out


def _log_paper_outside(where: str, s: dict, method: str) -> None:
    for name in ("sensitivity", "specificity"):
        if s[f"paper_{name}_outside_unit"]:
            log.warning("%s: the paper's interval for %s %.4f is [%.4f, %.4f], outside [0, 1] "
                        "(clipped [%.4f, %.4f]; %s [%.4f, %.4f])", where, name, s[name],
                        s[f"paper_{name}_low"], s[f"paper_{name}_high"], s[f"paper_{name}_low_clipped"],
                        s[f"paper_{name}_high_clipped"], method, s[f"{name}_low"], s[f"{name}_high"])


def operating_summary(y, s, threshold: float, cfg: EvalConfig) -> dict:
    """Counts, sensitivity/specificity with ``cfg.ci_method`` intervals and the paper's intervals."""
    summ = M.summarize(y, s, threshold, method=cfg.ci_method, alpha=cfg.alpha)
    summ.pop("ci_method")
    summ.pop("alpha")
    summ.update(paper_intervals(summ, cfg.alpha))
    return summ


def threshold_rows(y, s, cfg: EvalConfig, name: str = "test") -> pd.DataFrame:
    """:func:`deepcovid.evaluation.statistics.threshold_table` plus the paper's interval bounds (unclipped, clipped)."""
    table = M.threshold_table(y, s, cfg.thresholds, method=cfg.ci_method, alpha=cfg.alpha)
    table.insert(0, "ci_method", cfg.ci_method)
    for rate in ("sensitivity", "specificity"):
        r = table[f"paper_{rate}_radius"]
        table[f"paper_{rate}_low"] = table[rate] - r
        table[f"paper_{rate}_high"] = table[rate] + r
        table[f"paper_{rate}_low_clipped"] = (table[rate] - r).clip(lower=0.0)
        table[f"paper_{rate}_high_clipped"] = (table[rate] + r).clip(upper=1.0)
    for row in table.itertuples():
        for rate in ("sensitivity", "specificity"):
            if getattr(row, f"paper_{rate}_outside_unit"):
                log.warning("%s: at threshold %g the paper's interval for %s %.4f is [%.4f, %.4f], outside [0, 1]",
                            name, row.threshold, rate, getattr(row, rate), getattr(row, f"paper_{rate}_low"),
                            getattr(row, f"paper_{rate}_high"))
    return table


def roc_frame(y, s) -> pd.DataFrame:
    fpr, tpr, thr = M.roc_curve_finite(y, s)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def pr_frame(y, s) -> pd.DataFrame:
    """Precision-recall points; the last point (recall 0, precision 1) gets a threshold above every score."""
    precision, recall, thr = M.pr_curve(y, s)
    top = float(np.max(s))
    last = 1.0 if top < 1.0 else float(np.nextafter(1.0, 2.0))
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": np.append(thr, last)})


def confusion_frame(y, s, threshold: float, image_ids) -> pd.DataFrame:
    """One row per image: actual and predicted class names (DVC's ``confusion`` template)."""
    y = np.asarray(y)
    pred = (np.asarray(s) >= threshold).astype(int)
    return pd.DataFrame({
        "image_id": list(image_ids),
        "actual": [CLASS_NAMES[int(v)] for v in y],
        "predicted": [CLASS_NAMES[int(v)] for v in pred],
    })


def group_order(groups) -> list[str]:
    """The standard groups first (all three, or covid / non-covid when derived from labels), then others."""
    present = set(groups)
    base = ["covid", "non-covid"] if "non-covid" in present else list(GROUPS)
    return base + sorted(present - set(base))


def column_name(group: str) -> str:
    return str(group).replace("-", "_").replace(" ", "_")


def score_histogram(scores, groups, bins: int) -> pd.DataFrame:
    """Counts of scores per group in ``bins`` equal bins on [0, 1] (last bin closed), wide format.

    Columns: ``bin_low, bin_high, score`` (the bin centre) and one count column per group
    (``covid, normal, other_disease`` always present, zero when a group is absent).
    """
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)  # 0.15, not 0.15000000000000002
    s, g = np.asarray(scores, dtype=float), np.asarray(groups)
    centre = np.round((edges[:-1] + edges[1:]) / 2.0, 12)
    frame = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "score": centre})
    for group in group_order(g):
        counts, _ = np.histogram(s[g == group], bins=edges)
        frame[column_name(group)] = counts.astype(np.int64)
    return frame


def calibration_frame(y, s, bins: int) -> pd.DataFrame:
    """Non-empty bins of the reliability table, plus ``perfect`` (= mean_predicted, the diagonal)."""
    table = M.reliability_table(y, s, n_bins=bins, strategy="uniform")
    table = table[table["count"] > 0].reset_index(drop=True)
    table["perfect"] = table["mean_predicted"]
    return table


# --------------------------------------------------------------------------- the whole evaluation


@dataclass
class SplitData:
    frame: pd.DataFrame

    @property
    def y(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=np.int64)

    @property
    def s(self) -> np.ndarray:
        return self.frame["score"].to_numpy(dtype=np.float64)

    @property
    def both_classes(self) -> bool:
        return len(self.frame) > 0 and 0 < int(self.frame["label"].sum()) < len(self.frame)


#: What metrics/evaluate.json holds (``dvc metrics show / diff``): the headline numbers only.
#: Everything else (counts, clipped paper bounds, settings) is in metrics/evaluate_details.json.
COMPACT_KEYS = {
    "test": ("threshold", "threshold_chosen_on_val", "auc", "auc_low", "auc_high", "ap", "sensitivity",
             "sensitivity_low", "sensitivity_high", "specificity", "specificity_low", "specificity_high", "ece",
             "paper_sensitivity_low", "paper_sensitivity_high", "paper_specificity_low", "paper_specificity_high",
             "paper_interval_outside_unit", "n_pos", "n_neg"),
    "val": ("threshold", "auc", "auc_low", "auc_high", "ap", "sensitivity", "sensitivity_low", "sensitivity_high",
            "specificity", "specificity_low", "specificity_high", "ece"),
    "paper_style": ("paper_style_test_threshold", "sensitivity", "sensitivity_low", "sensitivity_high",
                    "specificity", "specificity_low", "specificity_high", "paper_sensitivity_low",
                    "paper_sensitivity_high", "paper_specificity_low", "paper_specificity_high",
                    "paper_interval_outside_unit"),
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
        return {section: {k: self.details[section][k] for k in keys}
                for section, keys in COMPACT_KEYS.items() if section in self.details}


def evaluate(df: pd.DataFrame, cfg: EvalConfig, name: str = "predictions") -> EvalResult:
    """Evaluate a table returned by :func:`load_predictions`."""
    test = SplitData(df[df["split"] == "test"].reset_index(drop=True))
    val = SplitData(df[df["split"] == "val"].reset_index(drop=True))
    if not test.both_classes:
        raise ValueError(f"{name}: the test split needs both classes (label 0 and 1); "
                         f"it has {len(test.frame)} rows, {int(test.frame['label'].sum())} COVID-19")
    warnings: list[str] = []

    paper_threshold = M.threshold_for_sensitivity(test.y, test.s, cfg.target_sensitivity)
    if val.both_classes:
        threshold = M.threshold_for_sensitivity(val.y, val.s, cfg.target_sensitivity)
        chosen_on = "val"
    else:
        why = "no validation split" if len(val.frame) == 0 else "the validation split holds a single class"
        msg = (f"{name}: {why}: the operating point falls back to the paper-style threshold chosen on the TEST "
               f"split ({paper_threshold:.6g}); test sensitivity/specificity are then optimistic")
        log.warning("%s", msg)
        warnings.append(msg)
        threshold, chosen_on = paper_threshold, "test"

    auc_methods: list[str] = []

    def split_metrics(data: SplitData, thr: float) -> dict:
        out = operating_summary(data.y, data.s, thr, cfg)
        auc = auc_with_ci(data.y, data.s, cfg)
        auc_methods.append(auc.pop("auc_ci_method"))
        out.update(auc)
        out["ap"] = M.average_precision(data.y, data.s)
        out["ece"] = M.expected_calibration_error(data.y, data.s, n_bins=cfg.calibration_bins)
        out["prevalence"] = out["n_pos"] / out["n"]
        return out

    test_m = split_metrics(test, threshold)
    test_m["threshold_chosen_on_val"] = chosen_on == "val"
    _log_paper_outside(f"{name}: test operating point", test_m, cfg.ci_method)
    metrics: dict = {"test": test_m}
    if val.both_classes:
        metrics["val"] = split_metrics(val, threshold)
        _log_paper_outside(f"{name}: validation operating point", metrics["val"], cfg.ci_method)
    paper = operating_summary(test.y, test.s, paper_threshold, cfg)
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
    for section in ("test", "val", "paper_style"):
        if section in metrics:
            metrics[section] = _ordered(metrics[section])

    log.info("%s: operating point %.6g (chosen on %s for sensitivity >= %g): test sensitivity %.4f "
             "[%.4f, %.4f], specificity %.4f [%.4f, %.4f] (%s)", name, threshold, chosen_on, cfg.target_sensitivity,
             test_m["sensitivity"], test_m["sensitivity_low"], test_m["sensitivity_high"], test_m["specificity"],
             test_m["specificity_low"], test_m["specificity_high"], cfg.ci_method)
    log.info("%s: paper-style test threshold %.6g: sensitivity %.4f, specificity %.4f", name, paper_threshold,
             paper["sensitivity"], paper["specificity"])
    log.info("%s: test AUC %.4f [%.4f, %.4f] (%s), AP %.4f, ECE %.4f", name, test_m["auc"], test_m["auc_low"],
             test_m["auc_high"], metrics["settings"]["auc_ci_method"], test_m["ap"], test_m["ece"])

    return EvalResult(
        details=metrics,
        thresholds=threshold_rows(test.y, test.s, cfg, name=f"{name} (test)"),
        roc=roc_frame(test.y, test.s),
        pr=pr_frame(test.y, test.s),
        confusion=confusion_frame(test.y, test.s, threshold, test.frame["image_id"]),
        scores=score_histogram(test.s, test.frame["group"], cfg.histogram_bins),
        calibration=calibration_frame(test.y, test.s, cfg.calibration_bins),
        test=test.frame,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class OutputPaths:
    metrics: Path
    details: Path
    thresholds: Path
    roc: Path
    pr: Path
    confusion: Path
    scores: Path
    calibration: Path
    figures: Path

    @classmethod
    def under(cls, root: str | Path = ".") -> "OutputPaths":
        root = Path(root)
        return cls(metrics=root / "metrics" / "evaluate.json", details=root / "metrics" / "evaluate_details.json",
                   thresholds=root / "metrics" / "thresholds.csv",
                   roc=root / "plots" / "roc.csv", pr=root / "plots" / "pr.csv",
                   confusion=root / "plots" / "confusion.csv", scores=root / "plots" / "scores.csv",
                   calibration=root / "plots" / "calibration.csv", figures=root / "plots" / "figures")


def check_finite_frame(frame: pd.DataFrame, what: str) -> None:
    numeric = frame.select_dtypes(include=[np.number])
    if numeric.size and not np.isfinite(numeric.to_numpy(dtype=float)).all():
        raise ValueError(f"internal error: {what} holds NaN or infinite values")


def write_outputs(result: EvalResult, paths: OutputPaths) -> None:
    """Write the metrics, plot data and figures (each file atomically; the figures folder as a whole)."""
    from deepcovid.evaluation import figures
    from deepcovid import files

    tables = {paths.thresholds: result.thresholds, paths.roc: result.roc, paths.pr: result.pr,
              paths.confusion: result.confusion, paths.scores: result.scores, paths.calibration: result.calibration}
    for path, frame in tables.items():
        check_finite_frame(frame, str(path))
    with files.atomic_path(paths.figures) as tmp:
        tmp.mkdir()
        figures.evaluation_figures(result, tmp)
    for path, frame in tables.items():
        files.write_csv(path, frame)
    files.write_json(paths.details, result.details)
    files.write_json(paths.metrics, result.metrics)


# --------------------------------------------------------------------------- comparison of models


def paired_test_frames(ref_name: str, ref: pd.DataFrame, name: str, other: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Align two models' test rows on image_id: ``(y, scores_ref, scores_other)``.

    Both must have scored exactly the same test images with the same labels (ValueError otherwise).
    """
    a = ref[ref["split"] == "test"].set_index("image_id")
    b = other[other["split"] == "test"].set_index("image_id")
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        example = (only_a.tolist() + only_b.tolist())[0]
        raise ValueError(f"models {ref_name!r} and {name!r} did not score the same test images "
                         f"({len(only_a)} only in {ref_name}, {len(only_b)} only in {name}, e.g. {example!r}); "
                         f"a paired test needs the same test set")
    b = b.loc[a.index]
    differ = a["label"].to_numpy() != b["label"].to_numpy()
    if differ.any():
        raise ValueError(f"models {ref_name!r} and {name!r} disagree on the label of {int(differ.sum())} test images "
                         f"(e.g. {a.index[differ][0]!r})")
    return (a["label"].to_numpy(dtype=np.int64), a["score"].to_numpy(dtype=float), b["score"].to_numpy(dtype=float))


def compare_models(runs: dict[str, pd.DataFrame], cfg: EvalConfig, reference: str | None = None,
                   paired: str = "delong", models: dict[str, str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Table 6 of the paper, side by side, plus a paired test of each model's AUC against ``reference``.

    ``runs`` maps a run name to its predictions table (from :func:`load_predictions`); ``models``
    optionally maps run names to architecture names. Returns ``(table, details)``: one table row per
    run, and ``details[name]`` = the :class:`EvalResult` of each run.
    """
    if not runs:
        raise ValueError("nothing to compare: give at least one run")
    names = list(runs)
    reference = reference or names[0]
    if reference not in runs:
        raise ValueError(f"reference run {reference!r} is not among the runs ({', '.join(names)})")
    if paired not in ("delong", "bootstrap"):
        raise ValueError(f"paired test must be delong or bootstrap, got {paired!r}")
    models = models or {}
    details = {name: evaluate(runs[name], cfg, name=name) for name in names}
    z = M.PAPER_Z if abs(cfg.alpha - 0.05) < 1e-12 else M._z(cfg.alpha)
    rows = []
    for name in names:
        t = details[name].details["test"]
        row = {
            "run": name, "model": models.get(name, ""), "reference": name == reference,
            "n_test": t["n"], "n_covid": t["n_pos"],
            "threshold": t["threshold"],
            "threshold_chosen_on": details[name].details["settings"]["operating_point_chosen_on"],
            "sensitivity": t["sensitivity"], "sensitivity_low": t["sensitivity_low"],
            "sensitivity_high": t["sensitivity_high"], "paper_sensitivity_radius": t["paper_sensitivity_high"]
            - t["sensitivity"],
            "specificity": t["specificity"], "specificity_low": t["specificity_low"],
            "specificity_high": t["specificity_high"], "paper_specificity_radius": t["paper_specificity_high"]
            - t["specificity"],
            "auc": t["auc"], "auc_low": t["auc_low"], "auc_high": t["auc_high"], "ap": t["ap"], "ece": t["ece"],
            "auc_diff": 0.0 if name == reference else None, "auc_diff_low": None, "auc_diff_high": None,
            "z": None, "p_value": None,
        }
        if name != reference:
            y, s_ref, s_other = paired_test_frames(reference, runs[reference], name, runs[name])
            if paired == "delong":
                r = M.delong_paired_test(y, s_other, s_ref)
                var = max(r["variance_a"] + r["variance_b"] - 2.0 * r["covariance"], 0.0)
                half = z * math.sqrt(var)
                row.update(auc_diff=r["difference"], auc_diff_low=r["difference"] - half,
                           auc_diff_high=r["difference"] + half, p_value=r["p_value"],
                           z=r["z"] if math.isfinite(r["z"]) else None)
            else:
                r = M.paired_bootstrap_auc(y, s_other, s_ref, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed,
                                           alpha=cfg.alpha)
                row.update(auc_diff=r["difference"], auc_diff_low=r["low"], auc_diff_high=r["high"],
                           p_value=r["p_value"])
        rows.append(row)
    table = pd.DataFrame(rows)
    tested = table["p_value"].notna()
    table["p_value_holm"] = None
    if tested.any():
        from statsmodels.stats.multitest import multipletests

        table.loc[tested, "p_value_holm"] = multipletests(table.loc[tested, "p_value"].astype(float),
                                                          method="holm")[1]
    return table, details


def _fmt(x, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_markdown(table: pd.DataFrame, cfg: EvalConfig, paired: str = "delong") -> str:
    """The comparison table as Markdown (the paper's Table 6 plus AUC, AP, ECE and paired tests)."""
    ref = table.loc[table["reference"], "run"].iloc[0]
    level = f"{100 * (1 - cfg.alpha):g}%"
    with_model = bool(table["model"].astype(str).str.len().any())
    head = ["Run"] + (["Model"] if with_model else []) + [
        "Threshold", f"Sensitivity [{level} CI]", "paper ±", f"Specificity [{level} CI]", "paper ±",
        f"AUC [{level} CI]", "AP", "ECE", f"ΔAUC vs {ref} [{level} CI]", "p", "p (Holm)"]
    first = 2 if with_model else 1
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * first + ["---:"] * (len(head) - first)) + "|"]
    for r in table.to_dict("records"):
        mark = "" if r["threshold_chosen_on"] == "val" else " (test!)"
        diff = "reference" if r["reference"] else (
            f"{r['auc_diff']:+.3f} [{r['auc_diff_low']:+.3f}, {r['auc_diff_high']:+.3f}]")
        lines.append("| " + " | ".join([
            str(r["run"]), *([str(r["model"])] if with_model else []), _fmt(r["threshold"]) + mark,
            f"{_fmt(r['sensitivity'])} [{_fmt(r['sensitivity_low'])}, {_fmt(r['sensitivity_high'])}]",
            _fmt(r["paper_sensitivity_radius"]),
            f"{_fmt(r['specificity'])} [{_fmt(r['specificity_low'])}, {_fmt(r['specificity_high'])}]",
            _fmt(r["paper_specificity_radius"]),
            f"{_fmt(r['auc'])} [{_fmt(r['auc_low'])}, {_fmt(r['auc_high'])}]",
            _fmt(r["ap"]), _fmt(r["ece"]), diff, _fmt_p(r["p_value"]), _fmt_p(r["p_value_holm"]),
        ]) + " |")
    n = table["n_test"].iloc[0]
    notes = [
        "",
        f"Test split: {n} images ({table['n_covid'].iloc[0]} COVID-19). Threshold: the highest reaching "
        f"sensitivity {cfg.target_sensitivity:g} on the validation split, applied to test"
        + ("; '(test!)' marks runs without a usable validation split (paper-style threshold chosen on test)."
           if (table["threshold_chosen_on"] != "val").any() else "."),
        f"Intervals: {cfg.ci_method} for sensitivity/specificity; 'paper ±' is the paper's normal-approximation "
        f"radius (Eq. 3, may exceed [0, 1]); AUC interval by {cfg.auc_ci}.",
        f"ΔAUC and p: {'DeLong paired test' if paired == 'delong' else 'paired stratified bootstrap'} "
        f"on the same test images against {ref}; Holm: adjusted for {int(table['p_value'].notna().sum())} "
        f"comparisons.",
    ]
    return "\n".join(lines + notes) + "\n"
