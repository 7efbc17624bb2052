"""External tests: a trained model on data from a source it never saw in training.

- In the pipeline: the sources listed in ``split.external_sources`` never enter train or
  validation; their images get the split ``external`` and are evaluated beside the internal test
  at the same operating point (``external`` in metrics/evaluate.json).
- From the command line, for any folder in the Cohen layout (``metadata.csv`` with file name,
  patient, finding and view columns, images under ``images/``):
  ``deepcovid evaluate-external FOLDER --model models --out-dir DIR`` scores its frontal X-rays
  with the trained model, prepared exactly as the pipeline prepares its own, and writes the
  evaluate stage's outputs for them at the model's operating point.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from deepcovid import files
from deepcovid.data.metadata import read_cohen_style
from deepcovid.data.positives import is_covid, is_frontal, is_xray
from deepcovid.errors import InputError

log = logging.getLogger("external")

NORMAL_FINDINGS = {"no finding", "normal"}


def folder_table(folder: str | Path, frontal_views: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frontal X-rays of a Cohen-layout folder with a finding (label 1 when it names
    COVID-19), and the rows left out with the reason (``image_id, reason``)."""
    folder = Path(folder)
    meta = read_cohen_style(folder / "metadata.csv", source=folder.name)
    meta["image_id"] = meta["relpath"]
    finding = meta["finding"].astype(str).str.strip()
    reasons = pd.Series("", index=meta.index)
    for mask, reason in (
        (~is_xray(meta["modality"]), "not an X-ray"),
        (~is_frontal(meta["view"], frontal_views), "not a frontal view"),
        (finding.eq("") | finding.str.lower().eq("todo"), "no finding"),
        (meta["image_id"].duplicated(), "listed twice"),
    ):
        reasons = reasons.mask((reasons == "") & mask, reason)
    kept = meta[reasons == ""].copy()
    kept["label"] = is_covid(kept["finding"]).astype(int)
    kept["group"] = np.where(
        kept["label"] == 1,
        "covid",
        np.where(kept["finding"].str.strip().str.lower().isin(NORMAL_FINDINGS), "normal", "other-disease"),
    )
    kept["category"] = kept["finding"]
    kept["path"] = [str(folder / r) for r in kept["relpath"]]
    rejected = pd.DataFrame({"image_id": meta.loc[reasons != "", "image_id"], "reason": reasons[reasons != ""]})
    return kept.reset_index(drop=True), rejected.reset_index(drop=True)


def evaluate_external(
    folder: str | Path,
    *,
    models: str | Path,
    evaluation: str | Path,
    out_dir: str | Path,
    cfg,
    frontal_views: list[str],
    batch_size: int = 32,
    threshold: float | None = None,
) -> dict:
    """``deepcovid evaluate-external``: score a Cohen-layout folder with the trained model and
    write, under ``out_dir``, predictions.csv, rejected.csv, the evaluate stage's metrics
    (evaluate.json, evaluate_details.json, thresholds.csv) and its plots and figures, at the
    model's operating point (``test.threshold`` of ``evaluation``, which must name this model's
    SHA-256) or at ``threshold`` when given. Returns the compact metrics."""
    from deepcovid.evaluation.evaluate import evaluate
    from deepcovid.evaluation.predictions import operating_point
    from deepcovid.evaluation.report import OutputPaths, write_outputs
    from deepcovid.model.inference import load_model, load_segmenter, score_files

    model, record = load_model(models)
    if threshold is None:
        threshold = operating_point(evaluation, model_sha256=record["model_sha256"])
    elif not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold}: must lie in [0, 1]")
    table, rejected = folder_table(folder, frontal_views)
    if table.empty:
        raise InputError(f"{folder}: no frontal X-ray with a finding in metadata.csv")
    scores, errors = score_files(
        model, record, list(table["path"]), batch_size, segmenter=load_segmenter(models, record)
    )
    unreadable = pd.DataFrame({"image_id": table["image_id"].iloc[list(errors)], "reason": list(errors.values())})
    rejected = pd.concat([rejected, unreadable], ignore_index=True)
    table = table.assign(score=scores, split="test").dropna(subset=["score"]).reset_index(drop=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = table[["image_id", "source", "patient", "label", "group", "category", "view", "split", "score"]]
    files.write_csv(out / "predictions.csv", predictions, report=True)
    files.write_csv(out / "rejected.csv", rejected, report=True)
    log.info(
        "%s: %d images scored (%d COVID-19), %d left out (rejected.csv)",
        folder,
        len(table),
        int(table["label"].sum()),
        len(rejected),
    )
    result = evaluate(
        predictions.astype({"label": np.int64, "score": np.float64}),
        cfg,
        name=str(folder),
        threshold=threshold,
        model_sha256=record["model_sha256"],
    )
    write_outputs(result, OutputPaths.into(out, out / "plots"))
    return result.metrics
