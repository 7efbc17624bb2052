"""Repeated patient-grouped splits: how much the test metrics move when only the split changes.

The public configuration tests on about 135 images, the default on 400: one split's interval
says how precisely that split was measured, not how much another equally valid split would give.
This module retrains the model's last layer on the cached features ``splits`` times, each time
on a new random split by patient group (patients joined with their near-duplicates, as the split
stage groups them) with the pipeline's test sizes (COVID-19 and other images) and validation
fraction, picks the operating point on that split's validation part as the evaluate stage does,
and reports the spread of test AUC, sensitivity and specificity across the splits.

What differs from the train stage, said in the output too: the repeats use the original images
only (no augmented copies: those exist only for the pipeline's own training images), and draw
test negatives from all internal negatives (the pipeline's test negatives come from the negatives
stage's test pool). ``pipeline_split`` retrains the same way on the pipeline's own split, so the
effect of those two differences can be read apart from the effect of the split.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from deepcovid import config
from deepcovid.data.split import take_groups_until
from deepcovid.errors import InputError
from deepcovid.evaluation.audit import load_features
from deepcovid.evaluation.proportions import confusion_at_threshold, threshold_for_sensitivity
from deepcovid.model.architectures import construct, replace_head, split_backbone_head
from deepcovid.model.inference import covid_probability
from deepcovid.model.training import class_weights, train_head
from deepcovid.runner import die_with_parent

log = logging.getLogger(__name__)

INTERNAL = ("train", "val", "test")
STATISTICS = ("mean", "sd", "min", "p2_5", "median", "p97_5", "max")
ROW_COLUMNS = [
    "split",
    "seed",
    "train_images",
    "val_images",
    "test_images",
    "test_covid",
    "threshold",
    "auc",
    "sensitivity",
    "specificity",
    "best_epoch",
]


class RepeatsError(InputError):
    """Inputs the repeated splits cannot use (one line, names the input)."""


def grouped_split(
    table: pd.DataFrame, test_pos: int, test_neg: int, val_fraction: float, rng: np.random.Generator
) -> pd.Series:
    """A new split of ``table`` (``split_group``, ``label``) by whole groups, as the split stage
    makes one: groups holding a COVID-19 image are drawn until ``test_pos`` COVID-19 images, the
    others until ``test_neg`` images; of the rest, ``val_fraction`` of each class's images goes to
    validation (never above the target), the remainder to training. Returns the split per row."""
    if table["label"].dtype.kind not in "iub":
        raise RepeatsError(f"grouped_split needs integer labels, got dtype {table['label'].dtype}")
    covid_groups = set(table.loc[table["label"] == 1, "split_group"])
    is_covid_group = table["split_group"].isin(covid_groups)
    split_of: dict[str, str] = {}
    for mask, target, covid in ((is_covid_group, test_pos, True), (~is_covid_group, test_neg, False)):
        part = table[mask]
        counted = part[part["label"] == 1] if covid else part  # COVID-19 groups: counted by COVID-19 images
        sizes = counted.groupby("split_group").size().sort_index()
        for g in take_groups_until(sizes, target, rng):
            split_of[g] = "test"
        rest = sizes.drop(index=[g for g in sizes.index if g in split_of])
        for g in take_groups_until(rest, int(round(val_fraction * rest.sum())), rng):
            split_of[g] = "val"
        for g in rest.index:
            split_of.setdefault(g, "train")
    return table["split_group"].map(split_of)


def spread(values) -> dict:
    """Mean, standard deviation (n - 1), minimum, 2.5th percentile, median, 97.5th percentile and
    maximum of ``values`` (linear interpolation between order statistics)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        raise RepeatsError(f"spread needs finite values, got {v.tolist()}")
    q = np.percentile(v, [2.5, 50, 97.5])
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "p2_5": float(q[0]),
        "median": float(q[1]),
        "p97_5": float(q[2]),
        "max": float(v.max()),
    }


def _fresh_head(head: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``head`` with every layer re-initialised (PyTorch's default init) under ``seed``."""
    fresh = copy.deepcopy(head)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh


def fit_and_score(
    head: torch.nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    *,
    seed: int,
    train: config.Train,
    target_sensitivity: float,
) -> dict:
    """Train a fresh copy of ``head`` on the ``train`` rows as the train stage does (its epochs,
    batch size, learning rate, weight decay, patience, class weight; permuted labels when
    ``train.shuffle_labels``), choose the operating point on ``val`` for ``target_sensitivity``
    and return the test AUC, sensitivity, specificity and counts."""
    parts = {s: np.flatnonzero(split == s) for s in INTERNAL}
    for s in ("val", "test"):
        if len(set(labels[parts[s]])) < 2:
            raise RepeatsError(
                f"a repeated split's {s} part holds a single class ({len(parts[s])} images): "
                f"raise split.val_fraction or the test size, or set repeats.splits: 0"
            )
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    train_y = y[parts["train"]]
    if train.shuffle_labels:
        train_y = train_y[torch.from_numpy(np.random.default_rng(seed).permutation(len(train_y)))]
    net, _, best_epoch = train_head(
        _fresh_head(head, seed),
        x[parts["train"]],
        train_y,
        x[parts["val"]],
        y[parts["val"]],
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        seed=seed,
        weight_decay=train.weight_decay,
        patience=train.patience,
        class_weight=class_weights(train_y, train.class_weight),
    )
    with torch.no_grad():
        score = {s: covid_probability(net(x[parts[s]])).numpy().astype(np.float64) for s in ("val", "test")}
    threshold = threshold_for_sensitivity(labels[parts["val"]], score["val"], target_sensitivity)
    test_y = labels[parts["test"]]
    c = confusion_at_threshold(test_y, score["test"], threshold)
    return {
        "train_images": len(parts["train"]),
        "val_images": len(parts["val"]),
        "test_images": len(parts["test"]),
        "test_covid": int(test_y.sum()),
        "threshold": float(threshold),
        "auc": float(roc_auc_score(test_y, score["test"])),
        "sensitivity": c["tp"] / (c["tp"] + c["fn"]),
        "specificity": c["tn"] / (c["tn"] + c["fp"]),
        "best_epoch": int(best_epoch),
    }


_WORK: tuple | None = None  # what a worker process fits on (set once by its initializer)


def _init_worker(features, labels, head, kw, parent: int) -> None:
    global _WORK
    die_with_parent(parent)
    torch.set_num_threads(1)  # one fit per core (the fits' numbers do not depend on the thread count: tested)
    _WORK = (features, labels, head, kw)


def _fit_job(job: tuple[np.ndarray, int]) -> dict:
    features, labels, head, kw = _WORK
    split, seed = job
    return fit_and_score(head, features, labels, split, seed=seed, **kw)


def _fits(jobs: list[tuple[np.ndarray, int]], features, labels, head, kw, workers: int):
    """:func:`fit_and_score` of each ``(split, seed)`` job, in order; ``workers`` processes at a
    time (spawned: torch's threads do not survive a fork)."""
    if workers <= 1 or len(jobs) <= 1:
        for split, seed in jobs:
            yield fit_and_score(head, features, labels, split, seed=seed, **kw)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(features, labels, head, kw, os.getpid()),
    ) as pool:
        yield from pool.map(_fit_job, jobs)


def repeated_splits(
    table: pd.DataFrame,
    features: np.ndarray,
    head: torch.nn.Module,
    *,
    splits: int,
    seed: int,
    val_fraction: float,
    train: config.Train,
    target_sensitivity: float,
    workers: int = 1,
) -> tuple[dict, pd.DataFrame]:
    """The pipeline's split (``table["split"]``) and ``splits`` new grouped splits of the internal
    images of ``table`` (``split_group``, ``label``, ``split``; ``features`` row-aligned), each
    retrained and scored by :func:`fit_and_score`, ``workers`` at a time (the same numbers for any
    count). Returns (summary, one row per split)."""
    internal = table["split"].isin(INTERNAL).to_numpy()
    table, features = table[internal].reset_index(drop=True), features[internal]
    labels = table["label"].astype(int).to_numpy()
    table = table.assign(label=labels)
    test = table["split"] == "test"
    test_pos, test_neg = int(labels[test].sum()), int((labels[test] == 0).sum())
    kw = dict(train=train, target_sensitivity=target_sensitivity)
    jobs = [(table["split"].to_numpy(), seed)]
    for r in range(splits):
        s = int(np.random.SeedSequence([seed, r]).generate_state(1)[0])
        jobs.append((grouped_split(table, test_pos, test_neg, val_fraction, np.random.default_rng(s)).to_numpy(), s))
    rows = []
    for k, result in enumerate(_fits(jobs, features, labels, head, kw, workers)):
        rows.append({"split": "pipeline" if k == 0 else f"repeat-{k}", "seed": jobs[k][1], **result})
        if k == 0:
            continue
        r = k - 1
        log.info(
            "split %d/%d: test %d images (%d COVID-19), AUC %.4f, sensitivity %.4f, specificity %.4f at %.4g",
            r + 1,
            splits,
            rows[-1]["test_images"],
            rows[-1]["test_covid"],
            rows[-1]["auc"],
            rows[-1]["sensitivity"],
            rows[-1]["specificity"],
            rows[-1]["threshold"],
        )
    frame = pd.DataFrame(rows, columns=ROW_COLUMNS)
    repeats = frame.iloc[1:]
    pipeline = frame.iloc[0]
    summary = {
        "repeats": {
            "splits": int(splits),
            "augmented_copies": False,
            "test_covid_asked": test_pos,
            "test_other_asked": test_neg,
            **{m: spread(repeats[m]) for m in ("auc", "sensitivity", "specificity", "threshold")},
            "test_images": spread(repeats["test_images"]),
            "test_covid": spread(repeats["test_covid"]),
        },
        "pipeline_split": {m: float(pipeline[m]) for m in ("auc", "sensitivity", "specificity", "threshold")}
        | {"augmented_copies": False},
    }
    return summary, frame


def single_split(evaluation: dict) -> dict:
    """The pipeline's test metrics with their intervals (metrics/evaluate.json ``test``)."""
    t = evaluation["test"]
    keys = (
        "auc",
        "auc_low",
        "auc_high",
        "sensitivity",
        "sensitivity_low",
        "sensitivity_high",
        "specificity",
        "specificity_low",
        "specificity_high",
        "n_pos",
        "n_neg",
    )
    return {k: t[k] for k in keys}


def run_repeats(manifest_csv, features_dir, evaluation_json, params: config.Params) -> tuple[dict, pd.DataFrame]:
    """The repeats stage: the summary for metrics/repeats.json and the per-split table."""
    import json

    cfg, train = params.repeats, params.train
    empty = pd.DataFrame(columns=ROW_COLUMNS)
    if cfg.splits == 0:
        return {"skipped": "repeats.splits is 0"}, empty
    if train.mode != "last_layer":
        return {
            "skipped": f"train.mode={train.mode}: the repeats retrain the last layer on cached features, "
            f"which full fine-tuning does not have"
        }, empty
    manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    features = load_features(features_dir, manifest["image_id"])
    if features is None:
        raise RepeatsError(f"{features_dir}: no cached features (run dvc repro featurize)")
    meta = json.loads((Path(features_dir) / "meta.json").read_text())
    if meta.get("model") != params.model:
        raise RepeatsError(f"{features_dir} holds {meta.get('model')} features, params say model={params.model}")
    try:
        evaluation = json.loads(Path(evaluation_json).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepeatsError(f"{evaluation_json} not found: run the evaluate stage first") from None
    model = construct(params.model)
    replace_head(model, params.model, 2)
    _, head = split_backbone_head(model, params.model)
    summary, frame = repeated_splits(
        manifest,
        features,
        head,
        splits=cfg.splits,
        seed=params.seed,
        val_fraction=params.split.val_fraction,
        train=train,
        target_sensitivity=params.evaluate.target_sensitivity,
        workers=cfg.workers,
    )
    summary["single_split"] = single_split(evaluation)
    r, one = summary["repeats"], summary["single_split"]
    log.info(
        "test AUC over %d patient-grouped splits: mean %.3f, 95%% of splits in [%.3f, %.3f] (sd %.3f); "
        "the pipeline's split: %.3f [%.3f, %.3f]",
        r["splits"],
        r["auc"]["mean"],
        r["auc"]["p2_5"],
        r["auc"]["p97_5"],
        r["auc"]["sd"],
        one["auc"],
        one["auc_low"],
        one["auc_high"],
    )
    for m in ("sensitivity", "specificity"):
        log.info(
            "test %s over the splits: mean %.3f, [%.3f, %.3f]; the pipeline's split %.3f [%.3f, %.3f]",
            m,
            r[m]["mean"],
            r[m]["p2_5"],
            r[m]["p97_5"],
            one[m],
            one[f"{m}_low"],
            one[f"{m}_high"],
        )
    return summary, frame
