"""The mitigation study's report: each pre-declared variant (``mitigation.variants`` in params.yaml)
beside the baseline, on the internal test and on a source the model never saw.

A study folder holds one folder per variant with two runs of the pipeline, ``internal`` (the
configuration as is) and ``external`` (``split.external_sources`` held out), each with its
``metrics/`` (evaluate, repeats, audit, explain) and ``data/predictions.csv``. For each variant:
the internal test AUC, the spread over the repeated splits, the external AUC, the audit (the
source read from the image features within each class; the style and metadata baselines), the
heatmaps' lung mass and pointing game against the randomised head, and a paired DeLong test of its
AUC against the baseline's on the same images (internal and external; Holm-adjusted over the
variants within each). Nothing in it chooses a variant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from deepcovid import files
from deepcovid.errors import InputError
from deepcovid.evaluation.delong import delong_paired_test

RUNS = ("internal", "external")
#: The test split of each run whose AUC the study reports and tests.
TEST_SPLIT = {"internal": "test", "external": "external"}


def _json(path: Path) -> dict:
    return files.read_json(path, "the mitigation study's runs (deepcovid mitigation run)")


def _get(d: dict | None, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _scores(folder: Path, split: str) -> pd.DataFrame:
    path = folder / "data" / "predictions.csv"
    try:
        table = pd.read_csv(path, dtype={"image_id": str})
    except FileNotFoundError:
        raise InputError(f"{path} not found: the study's run is incomplete") from None
    return table[table["split"] == split].set_index("image_id")[["label", "score"]]


def paired_against(baseline: pd.DataFrame, other: pd.DataFrame, alpha: float) -> dict:
    """DeLong's paired test of ``other``'s AUC against ``baseline``'s on the images both scored
    (a variant may reject images, e.g. where no lungs were found: they are counted, not compared)."""
    common = baseline.index.intersection(other.index)
    a, b = baseline.loc[common], other.loc[common]
    if (a["label"].to_numpy() != b["label"].to_numpy()).any():
        raise InputError("the baseline and a variant disagree on the labels of the same images")
    result = delong_paired_test(
        a["label"].to_numpy(np.int64), b["score"].to_numpy(float), a["score"].to_numpy(float), alpha
    )
    return {
        "images": int(len(common)),
        "not_scored": int(len(baseline.index.difference(other.index))),
        "difference": result["difference"],
        "difference_low": result["low"],
        "difference_high": result["high"],
        "p_value": result["p_value"],
    }


def variant_row(folder: Path) -> dict:
    """The study's numbers of one variant's two runs (the audit, repeats and heatmaps of the internal one)."""
    internal, external = folder / "internal" / "metrics", folder / "external" / "metrics"
    ev_in, ev_ex = _json(internal / "evaluate.json"), _json(external / "evaluate.json")
    # a quick run (deepcovid mitigation --quick) stops at evaluate: no audit, heatmaps or repeats
    audit, explain, repeats = (
        _json(internal / name) if (internal / name).is_file() else {}
        for name in ("audit.json", "explain.json", "repeats.json")
    )
    return {
        "internal_auc": _get(ev_in, "test", "auc"),
        "internal_auc_low": _get(ev_in, "test", "auc_low"),
        "internal_auc_high": _get(ev_in, "test", "auc_high"),
        "repeats_auc_mean": _get(repeats, "repeats", "auc", "mean"),
        "repeats_auc_p2_5": _get(repeats, "repeats", "auc", "p2_5"),
        "repeats_auc_p97_5": _get(repeats, "repeats", "auc", "p97_5"),
        "external_auc": _get(ev_ex, "external", "auc"),
        "external_auc_low": _get(ev_ex, "external", "auc_low"),
        "external_auc_high": _get(ev_ex, "external", "auc_high"),
        "external_sensitivity": _get(ev_ex, "external", "sensitivity"),
        "external_specificity": _get(ev_ex, "external", "specificity"),
        "source_from_features_covid": _get(audit, "source_readability", "positives", "auc"),
        "source_from_features_other": _get(audit, "source_readability", "negatives", "auc"),
        "style_baseline_difference": _get(audit, "style_baseline", "difference"),
        "metadata_baseline_difference": _get(audit, "metadata_baseline", "difference"),
        "lung_mass": _get(explain, "lung_mass"),
        "lung_area": _get(explain, "lung_area"),
        "pointing_lung": _get(explain, "pointing_lung"),
        "random_pointing_lung": _get(explain, "random_pointing_lung"),
        "with_lungs": _get(explain, "with_lungs"),
    }


def study_table(study: str | Path, variants: dict, baseline: str, alpha: float = 0.05) -> pd.DataFrame:
    """One row per declared variant (in declaration order), with the paired tests against ``baseline``."""
    study = Path(study)
    if baseline not in variants:
        raise InputError(f"mitigation.baseline {baseline!r} is not among the variants ({', '.join(variants)})")
    rows = []
    scores = {run: {} for run in RUNS}
    for name, overrides in variants.items():
        folder = study / name
        row = {"variant": name, "overrides": "; ".join(f"{k}={v}" for k, v in overrides.items()) or "(none)"}
        row.update(variant_row(folder))
        for run in RUNS:
            scores[run][name] = _scores(folder / run, TEST_SPLIT[run])
        rows.append(row)
    table = pd.DataFrame(rows)
    for run in RUNS:
        tests = {
            name: paired_against(scores[run][baseline], scores[run][name], alpha)
            for name in variants
            if name != baseline
        }
        for key in ("images", "not_scored", "difference", "difference_low", "difference_high", "p_value"):
            table[f"{run}_vs_baseline_{key}"] = [tests[v][key] if v in tests else None for v in table["variant"]]
        tested = table[f"{run}_vs_baseline_p_value"].notna()
        table[f"{run}_vs_baseline_p_holm"] = None
        if tested.any():
            table.loc[tested, f"{run}_vs_baseline_p_holm"] = multipletests(
                table.loc[tested, f"{run}_vs_baseline_p_value"].astype(float), method="holm"
            )[1]
    return table


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(row, key: str) -> str:
    return f"{_f(row[key])} [{_f(row[key + '_low'])}, {_f(row[key + '_high'])}]"


def _diff(row, run: str) -> str:
    p = row[f"{run}_vs_baseline_p_holm"]
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "(baseline)"
    key = f"{run}_vs_baseline_difference"
    return f"{row[key]:+.3f} [{row[key + '_low']:+.3f}, {row[key + '_high']:+.3f}], p_Holm {_f(p)}"


def study_markdown(table: pd.DataFrame) -> str:
    """The study's table as Markdown (the numbers of ``table.csv``, rounded)."""
    lines = [
        "| variant | internal test AUC | vs baseline | 20 repeated splits: mean [2.5%, 97.5%] | "
        "external AUC (Actualmed) | vs baseline | source from features (COVID / other) | "
        "lung mass | pointing (trained / randomised) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['variant']} (`{r['overrides']}`) | {_ci(r, 'internal_auc')} | {_diff(r, 'internal')} | "
            f"{_f(r['repeats_auc_mean'])} [{_f(r['repeats_auc_p2_5'])}, {_f(r['repeats_auc_p97_5'])}] | "
            f"{_ci(r, 'external_auc')} | {_diff(r, 'external')} | "
            f"{_f(r['source_from_features_covid'])} / {_f(r['source_from_features_other'])} | "
            f"{_f(r['lung_mass'])} | {_f(r['pointing_lung'])} / {_f(r['random_pointing_lung'])} |"
        )
    return "\n".join(lines) + "\n"


def study_figure(table: pd.DataFrame, path: Path) -> None:
    """External AUC with its 95% interval, variant by variant, beside the internal one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.arange(len(table))[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(table) + 1.4))
    for key, colour, shift, label in (
        ("external_auc", "tab:red", -0.12, "external test (a source never seen)"),
        ("internal_auc", "tab:blue", 0.12, "internal test"),
    ):
        value = table[key].astype(float).to_numpy()
        low, high = table[key + "_low"].astype(float).to_numpy(), table[key + "_high"].astype(float).to_numpy()
        ax.errorbar(value, y + shift, xerr=[value - low, high - value], fmt="o", color=colour, capsize=3, label=label)
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(y, table["variant"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC AUC with 95% DeLong interval")
    ax.set_title("Mitigation study: each pre-declared variant (nothing chosen on the external test)", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(study, variants: dict, baseline: str, out, alpha: float = 0.05) -> pd.DataFrame:
    """``table.csv``, ``table.md``, ``study.json`` and ``external_auc.png`` of the study into ``out``."""
    table = study_table(study, variants, baseline, alpha)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_csv(out / "table.csv", table)
    files.write_text(out / "table.md", study_markdown(table))
    records = json.loads(table.to_json(orient="records"))
    files.write_json(out / "study.json", {"baseline": baseline, "variants": variants, "rows": records})
    study_figure(table, out / "external_auc.png")
    return table


# --------------------------------------------------------------------------- running the study

#: What each run keeps of the pipeline's outputs (all the report reads, and what explains it).
KEPT = {
    "internal": (
        "metrics/evaluate.json",
        "metrics/repeats.json",
        "metrics/audit.json",
        "metrics/explain.json",
        "metrics/segment.json",
        "metrics/train.json",
        "data/predictions.csv",
        "data/preprocessed/rejected.csv",
    ),
    "external": (
        "metrics/evaluate.json",
        "metrics/segment.json",
        "metrics/train.json",
        "data/predictions.csv",
        "data/preprocessed/rejected.csv",
    ),
}


def _set(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise InputError(f"mitigation: {dotted} is not a parameter (no section {part!r})")
        node = node[part]
    if last not in node:
        raise InputError(f"mitigation: {dotted} is not a parameter")
    node[last] = value


def run_params(base: dict, overrides: dict, run: str, external_sources: list[str]) -> dict:
    """params.yaml of one run: ``base`` with the variant's ``overrides`` and, for the external run,
    ``split.external_sources``; validated (a bad override stops before anything runs)."""
    import copy

    from deepcovid.config import validate

    params = copy.deepcopy(base)
    for key, value in overrides.items():
        _set(params, key, value)
    if run == "external":
        params["split"]["external_sources"] = list(external_sources)
    validate(params)
    return params


def run_study(
    study: str | Path,
    *,
    params_path: str | Path = "params.yaml",
    variants: dict,
    external_sources: list[str],
    repro=None,
    quick: bool = False,
) -> None:
    """Run every variant twice (``internal``, ``external``) with ``dvc repro`` in the current DVC
    project, keeping each run's outputs (:data:`KEPT`) under ``study/<variant>/<run>``. All the runs'
    parameters are validated first; params.yaml is restored at the end. Runs that already have their
    outputs in ``study`` are not run again (an interrupted study resumes). ``repro``: the command
    that runs the pipeline (default ``dvc repro``; the external run stops at ``evaluate``, what the
    report reads of it). ``quick``: the internal runs stop at ``evaluate`` too (the AUCs only, no
    repeated splits, audit or heatmaps: what CI checks)."""
    import shutil
    import subprocess

    import yaml

    from deepcovid.config import read_yaml
    from deepcovid.evaluation.compare import dvc_binary

    study, params_path = Path(study), Path(params_path)
    original = params_path.read_text(encoding="utf-8")
    base = read_yaml(params_path)
    plan = [
        (run, name, run_params(base, overrides, run, external_sources))
        for run in RUNS  # the split changes once: the segmenter is trained twice, not per variant
        for name, overrides in variants.items()
    ]
    try:
        for run, name, params in plan:
            target = study / name / run
            done = target / "done"  # what the kept run was: "quick" (internal, up to evaluate) or "full"
            if done.is_file() and (quick or done.read_text(encoding="utf-8") == "full"):
                continue
            files.write_text(params_path, yaml.safe_dump(params, sort_keys=False))
            until = ["evaluate"] if run == "external" or quick else []
            command = [*repro, *until] if repro else [dvc_binary(), "repro", *until]
            proc = subprocess.run(command, check=False)
            if proc.returncode != 0:
                failed = f"{' '.join(command)}: exit {proc.returncode}"
                raise InputError(f"mitigation: the {run} run of variant {name!r} failed ({failed})")
            shutil.rmtree(target, ignore_errors=True)
            for rel in KEPT["external" if until else run]:
                if Path(rel).is_file():
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(rel, target / rel)
            done.write_text("quick" if quick and run == "internal" else "full", encoding="utf-8")
    finally:
        files.write_text(params_path, original)


# --------------------------------------------------------------------------- regression check

#: The study's numbers CI holds against the committed report (higher is better).
CHECKED = ("internal_auc", "external_auc", "repeats_auc_mean")


def regressions(table: pd.DataFrame, baseline_json: str | Path, tolerance: float) -> tuple[list[str], list[str]]:
    """``(failures, lines)``: each variant's :data:`CHECKED` number against the committed report's
    ``study.json``; a failure is a number more than ``tolerance`` below it, or a variant missing from
    one side. A number this study did not compute (``--quick``: no repeated splits) is not compared."""
    committed = {row["variant"]: row for row in _json(Path(baseline_json))["rows"]}
    failures, lines = [], []
    now = {row["variant"]: row for row in json.loads(table.to_json(orient="records"))}
    for name in sorted(set(committed) | set(now), key=lambda v: (v not in now, v)):
        if name not in now or name not in committed:
            failures.append(f"{name}: {'not in the committed report' if name in now else 'not run'}")
            continue
        for key in CHECKED:
            old, new = committed[name].get(key), now[name].get(key)
            if new is None:
                continue
            if old is None:
                failures.append(f"{name}.{key}: {new:.4f}, but the committed report has none")
                continue
            line = f"{name}.{key}: {new:.4f} (committed {old:.4f}, {new - old:+.4f})"
            lines.append(line)
            if new < old - tolerance:
                failures.append(line + f": worse by more than {tolerance}")
    return failures, lines
