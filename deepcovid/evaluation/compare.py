"""Models side by side (the paper's Table 6) with paired tests of their AUCs: ``deepcovid compare``.

Each run (a predictions file, or an experiment's ``data/predictions.csv`` read from the DVC
cache with :func:`dvc.api.open`) is evaluated as the evaluate stage does; each AUC is tested
against the reference run's on the same test images (DeLong, or a paired bootstrap) and the
p-values are Holm-adjusted. Writes table.md, table.csv, compare.json and figures.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from deepcovid import files
from deepcovid.errors import InputError, StateError
from deepcovid.evaluation import figures
from deepcovid.evaluation.delong import delong_paired_test
from deepcovid.evaluation.evaluate import EvalConfig, EvalResult, evaluate
from deepcovid.evaluation.predictions import load_predictions, read_predictions
from deepcovid.evaluation.proportions import paper_interval
from deepcovid.evaluation.ranking import paired_bootstrap_auc

log = logging.getLogger("compare")


# --------------------------------------------------------------------------- runs from DVC experiments


def dvc_binary() -> str:
    return shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"


def parse_run(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise InputError(f"--run expects NAME=PREDICTIONS_CSV, got {text!r}")
    return name.strip(), path.strip()


def _state(group: dict) -> str | None:
    executor = group.get("executor")
    if isinstance(executor, dict):
        return executor.get("state")
    return executor


def dvc_experiments(repo: str, path: str, include_baseline: bool = True, commits: int = 1) -> list[dict]:
    """``[{"name", "rev", "model"}]`` of the baseline commit(s) and finished experiments holding ``path``.

    ``commits``: experiments based on the last N commits of HEAD (``dvc exp show -n N``).
    """
    cmd = [dvc_binary(), "exp", "show", "--json", "-n", str(commits)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StateError(f"`dvc exp show --json` failed in {repo}: {last}")
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise StateError("`dvc exp show --json` did not print JSON") from None

    def entry(rev: dict, name: str) -> dict | None:
        data = rev.get("data") or {}
        out = (data.get("outs") or {}).get(path) or {}
        if rev.get("error") or not out.get("hash"):
            why = (rev.get("error") or {}).get("msg") if isinstance(rev.get("error"), dict) else rev.get("error")
            log.warning("skipping %s (%s): %s", name, str(rev.get("rev"))[:7], why or f"no {path} recorded")
            return None
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        return {"name": name, "rev": rev["rev"], "model": str(params.get("model", ""))}

    found = []
    for base in rows:
        if base.get("rev") == "workspace":
            continue
        if include_baseline:
            e = entry(base, base.get("name") or str(base["rev"])[:7])
            if e:
                found.append(e)
        for group in base.get("experiments") or []:
            state = _state(group)
            for rev in group.get("revs") or []:
                name = rev.get("name") or group.get("name") or str(rev.get("rev"))[:7]
                if state not in (None, "success"):
                    log.warning("skipping experiment %s: %s", name, state)
                    continue
                e = entry(rev, name)
                if e:
                    found.append(e)
    return found


def read_dvc_predictions(repo: str, path: str, rev: str, name: str) -> pd.DataFrame:
    import dvc.api

    with dvc.api.open(path, repo=repo, rev=rev) as f:
        text = f.read()
    return read_predictions(io.StringIO(text), name=f"{name} ({rev[:7]}):{path}")


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


# --------------------------------------------------------------------------- comparison


def paired_test_frames(ref_name: str, ref: pd.DataFrame, name: str, other: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Align two models' test rows on image_id: ``(y, scores_ref, scores_other)``.

    Both must have scored exactly the same test images with the same labels (ValueError otherwise).
    """
    a = ref[ref["split"] == "test"].set_index("image_id")
    b = other[other["split"] == "test"].set_index("image_id")
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        example = (only_a.tolist() + only_b.tolist())[0]
        raise InputError(
            f"models {ref_name!r} and {name!r} did not score the same test images "
            f"({len(only_a)} only in {ref_name}, {len(only_b)} only in {name}, e.g. {example!r}); "
            f"a paired test needs the same test set"
        )
    b = b.loc[a.index]
    differ = a["label"].to_numpy() != b["label"].to_numpy()
    if differ.any():
        raise InputError(
            f"models {ref_name!r} and {name!r} disagree on the label of {int(differ.sum())} test images "
            f"(e.g. {a.index[differ][0]!r})"
        )
    return (a["label"].to_numpy(dtype=np.int64), a["score"].to_numpy(dtype=float), b["score"].to_numpy(dtype=float))


def compare_models(
    runs: dict[str, pd.DataFrame],
    cfg: EvalConfig,
    reference: str | None = None,
    paired: str = "delong",
    models: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Table 6 of the paper, side by side, plus a paired test of each model's AUC against ``reference``.

    ``runs`` maps a run name to its predictions table (from :func:`load_predictions`); ``models``
    optionally maps run names to architecture names. Returns ``(table, details)``: one table row per
    run, and ``details[name]`` = the :class:`EvalResult` of each run.
    """
    if not runs:
        raise InputError("nothing to compare: give at least one run")
    names = list(runs)
    reference = reference or names[0]
    if reference not in runs:
        raise InputError(f"reference run {reference!r} is not among the runs ({', '.join(names)})")
    if paired not in ("delong", "bootstrap"):
        raise InputError(f"paired test must be delong or bootstrap, got {paired!r}")
    models = models or {}
    details = {name: evaluate(runs[name], cfg, name=name) for name in names}
    rows = []
    for name in names:
        t = details[name].details["test"]
        row = {
            "run": name,
            "model": models.get(name, ""),
            "reference": name == reference,
            "n_test": t["n"],
            "n_covid": t["n_pos"],
            "threshold": t["threshold"],
            "threshold_chosen_on": details[name].details["settings"]["operating_point_chosen_on"],
            "sensitivity": t["sensitivity"],
            "sensitivity_low": t["sensitivity_low"],
            "sensitivity_high": t["sensitivity_high"],
            "paper_sensitivity_radius": paper_interval(t["tp"], t["n_pos"], cfg.alpha).radius,
            "specificity": t["specificity"],
            "specificity_low": t["specificity_low"],
            "specificity_high": t["specificity_high"],
            "paper_specificity_radius": paper_interval(t["tn"], t["n_neg"], cfg.alpha).radius,
            "auc": t["auc"],
            "auc_low": t["auc_low"],
            "auc_high": t["auc_high"],
            "ap": t["ap"],
            "ece": t["ece"],
            "auc_diff": 0.0 if name == reference else None,
            "auc_diff_low": None,
            "auc_diff_high": None,
            "z": None,
            "p_value": None,
        }
        if name != reference:
            y, s_ref, s_other = paired_test_frames(reference, runs[reference], name, runs[name])
            if paired == "delong":
                r = delong_paired_test(y, s_other, s_ref, alpha=cfg.alpha)
                row.update(z=r["z"] if math.isfinite(r["z"]) else None)
            else:
                r = paired_bootstrap_auc(
                    y, s_other, s_ref, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, alpha=cfg.alpha
                )
            row.update(auc_diff=r["difference"], auc_diff_low=r["low"], auc_diff_high=r["high"], p_value=r["p_value"])
        rows.append(row)
    table = pd.DataFrame(rows)
    tested = table["p_value"].notna()
    table["p_value_holm"] = None
    if tested.any():
        table.loc[tested, "p_value_holm"] = multipletests(table.loc[tested, "p_value"].astype(float), method="holm")[1]
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
    head = (
        ["Run"]
        + (["Model"] if with_model else [])
        + [
            "Threshold",
            f"Sensitivity [{level} CI]",
            "paper ±",
            f"Specificity [{level} CI]",
            "paper ±",
            f"AUC [{level} CI]",
            "AP",
            "ECE",
            f"ΔAUC vs {ref} [{level} CI]",
            "p",
            "p (Holm)",
        ]
    )
    first = 2 if with_model else 1
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * first + ["---:"] * (len(head) - first)) + "|"]
    for r in table.to_dict("records"):
        mark = "" if r["threshold_chosen_on"] == "val" else " (test!)"
        diff = (
            "reference"
            if r["reference"]
            else (f"{r['auc_diff']:+.3f} [{r['auc_diff_low']:+.3f}, {r['auc_diff_high']:+.3f}]")
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["run"]),
                    *([str(r["model"])] if with_model else []),
                    _fmt(r["threshold"]) + mark,
                    f"{_fmt(r['sensitivity'])} [{_fmt(r['sensitivity_low'])}, {_fmt(r['sensitivity_high'])}]",
                    _fmt(r["paper_sensitivity_radius"]),
                    f"{_fmt(r['specificity'])} [{_fmt(r['specificity_low'])}, {_fmt(r['specificity_high'])}]",
                    _fmt(r["paper_specificity_radius"]),
                    f"{_fmt(r['auc'])} [{_fmt(r['auc_low'])}, {_fmt(r['auc_high'])}]",
                    _fmt(r["ap"]),
                    _fmt(r["ece"]),
                    diff,
                    _fmt_p(r["p_value"]),
                    _fmt_p(r["p_value_holm"]),
                ]
            )
            + " |"
        )
    n = table["n_test"].iloc[0]
    notes = [
        "",
        f"Test split: {n} images ({table['n_covid'].iloc[0]} COVID-19). Threshold: the highest reaching "
        f"sensitivity {cfg.target_sensitivity:g} on the validation split, applied to test"
        + (
            "; '(test!)' marks runs without a usable validation split (paper-style threshold chosen on test)."
            if (table["threshold_chosen_on"] != "val").any()
            else "."
        ),
        f"Intervals: {cfg.ci_method} for sensitivity/specificity; 'paper ±' is the paper's normal-approximation "
        f"radius (Eq. 3, may exceed [0, 1]); AUC interval by {cfg.auc_ci}.",
        f"ΔAUC and p: {'DeLong paired test' if paired == 'delong' else 'paired stratified bootstrap'} "
        f"on the same test images against {ref}; Holm: adjusted for {int(table['p_value'].notna().sum())} "
        f"comparisons.",
    ]
    return "\n".join(lines + notes) + "\n"


# --------------------------------------------------------------------------- the compare command


def collect_runs(
    run_specs: list[str],
    from_dvc_exps: bool = False,
    repo: str = ".",
    predictions_path: str = "data/predictions.csv",
    include_baseline: bool = True,
    commits: int = 1,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """``(runs, models)``: the finished DVC experiments (if asked), then each ``NAME=CSV`` of ``run_specs``."""
    runs: dict[str, pd.DataFrame] = {}
    models: dict[str, str] = {}

    def add(name: str, frame: pd.DataFrame, model: str = "") -> None:
        if name in runs:
            raise InputError(f"two runs are named {name!r}; names must be unique")
        runs[name], models[name] = frame, model

    if from_dvc_exps:
        for e in dvc_experiments(repo, predictions_path, include_baseline=include_baseline, commits=commits):
            log.info("reading %s at %s (%s)", predictions_path, e["name"], e["rev"][:7])
            try:
                frame = read_dvc_predictions(repo, predictions_path, e["rev"], e["name"])
            except ValueError:
                raise
            except Exception as exc:  # DVC errors: not in the local cache, no remote, ...
                message = " ".join(str(exc).split()) or type(exc).__name__
                log.warning(
                    "skipping %s (%s): cannot read %s (%s); is it in the local cache? (dvc exp pull / dvc pull)",
                    e["name"],
                    e["rev"][:7],
                    predictions_path,
                    message,
                )
                continue
            add(e["name"], frame, e["model"])
    for text in run_specs:
        name, path = parse_run(text)
        add(name, load_predictions(path))
    if not runs:
        raise InputError("nothing to compare: give --run NAME=CSV and/or --from-dvc-exps")
    return runs, models


def write_comparison(
    out: Path,
    table: pd.DataFrame,
    results: dict[str, EvalResult],
    models: dict[str, str],
    cfg: EvalConfig,
    paired: str = "delong",
) -> str:
    """table.md, table.csv, compare.json, roc.png, pr.png and reliability_<run>.png under ``out``; returns table.md."""
    markdown = comparison_markdown(table, cfg, paired=paired)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "table.md", markdown)
    files.write_csv(out / "table.csv", table)
    files.write_json(
        out / "compare.json",
        {
            "reference": str(table.loc[table["reference"], "run"].iloc[0]),
            "paired_test": paired,
            "runs": {name: {"model": models.get(name, ""), **results[name].details} for name in results},
            "comparisons": [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                for r in table.to_dict("records")
            ],
        },
    )

    label = {
        name: f"{name} ({models[name]})" if models.get(name) and models[name] != name else name for name in results
    }
    curves = []
    for name in results:
        t = results[name].details["test"]
        curves.append(
            {
                "label": f"{label[name]}: AUC {t['auc']:.3f}",
                "fpr": results[name].roc["fpr"],
                "tpr": results[name].roc["tpr"],
                "recall": results[name].pr["recall"],
                "precision": results[name].pr["precision"],
                "point": (t["fp"] / t["n_neg"], t["sensitivity"]),
                "ap": t["ap"],
            }
        )
    figures.roc_curves(curves, out / "roc.png", title="ROC curves (test); dots: operating points")
    figures.pr_curves(
        [{**c, "label": f"{c['label'].split(': AUC')[0]}: AP {c['ap']:.3f}"} for c in curves],
        out / "pr.png",
        prevalence=results[next(iter(results))].details["test"]["prevalence"],
        title="Precision-recall curves (test)",
    )
    keep = set()
    for name in results:
        t = results[name].details["test"]
        target = out / f"reliability_{safe(name)}.png"
        keep.add(target.name)
        figures.reliability_diagram(
            results[name].calibration,
            t["ece"],
            target,
            title=f"{label[name]}: reliability (test), ECE = {t['ece']:.4f}",
        )
    for stale in out.glob("reliability_*.png"):
        if stale.name not in keep:
            stale.unlink()
    log.info("wrote %s/{table.md, table.csv, compare.json, roc.png, pr.png, reliability_*.png}", out)
    return markdown
