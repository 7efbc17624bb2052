"""The train stage: fine-tune the chosen network, score every validation and test image, and
write models/, the predictions, the loss curve and metrics (and log the run to MLflow).

last_layer: the head trains on the cached backbone features (the paper's method). full: the
whole network trains end to end, checkpointed every epoch under a name that changes with
every input of the result (:func:`deepcovid.model.checkpoints.checkpoint_inputs`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepcovid import config, files
from deepcovid.errors import StateError
from deepcovid.model import tracking
from deepcovid.model.architectures import preprocessing, split_backbone_head
from deepcovid.model.checkpoints import checkpoint_inputs, checkpoint_key
from deepcovid.model.datasets import ImageDataset, load_table
from deepcovid.model.environment import compute_environment, init_distributed, resolve_device, seed_everything
from deepcovid.model.features import state_digest
from deepcovid.model.inference import covid_probability
from deepcovid.model.presets import eval_transform, train_transform
from deepcovid.model.training import class_weights, predict_scores, train_full, train_head
from deepcovid.model.weights import build_model

log = logging.getLogger(__name__)
PRED_COLUMNS = ["image_id", "source", "patient", "label", "group", "category", "split", "score"]
SPLITS = ("train", "val", "test", "external")
SCORED = ("val", "test", "external")  # the splits written to the predictions


def _auc(y, s) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y)) == 2 else None


def _train_last_layer(model, params: config.Params, parts: dict, features: Path, on_epoch):
    """Train the head on the cached features; return (history, best epoch, scores)."""
    name, cfg = params.model, params.train
    meta = json.loads((features / "meta.json").read_text())
    if meta.get("skipped") or meta.get("model") != name or meta.get("image_size") != cfg.image_size:
        raise StateError(f"{features} does not hold {name} features at {cfg.image_size}px: run dvc repro featurize")
    backbone, head = split_backbone_head(model, name)
    if meta.get("preprocessing") != preprocessing(name, cfg.normalization):
        raise StateError(
            f"{features} was computed with another input normalisation than train.normalization="
            f"{cfg.normalization}: run dvc repro featurize"
        )
    if state_digest(backbone) != meta["backbone_sha256"]:
        raise StateError(f"{features} was computed with other backbone weights than weights={params.weights}")
    feats = torch.from_numpy(np.load(features / "features.npy"))
    index = pd.read_csv(features / "index.csv", dtype=str, keep_default_na=False)
    row_of = {img: i for i, img in enumerate(index["image_id"])}
    x = {s: feats[[row_of[i] for i in parts[s]["image_id"]]] for s in parts}
    y = {s: torch.tensor(parts[s]["label"].to_numpy(), dtype=torch.long) for s in parts}
    head, history, best_epoch = train_head(
        head,
        x["train"],
        y["train"],
        x["val"],
        y["val"],
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=params.seed,
        weight_decay=cfg.weight_decay,
        patience=cfg.patience,
        on_epoch=on_epoch,
        class_weight=class_weights(y["train"], cfg.class_weight),
    )
    with torch.no_grad():
        scores = {s: covid_probability(head(x[s])).numpy() for s in SCORED}
    return history, best_epoch, scores


def _train_full(
    model,
    params: config.Params,
    parts: dict,
    provenance: dict,
    device: torch.device,
    *,
    manifest,
    cache,
    augmented,
    distributed: bool,
    rank0: bool,
    on_epoch,
):
    """Fine-tune end to end with a checkpoint; return (model, history, best epoch, scores)."""
    name, cfg = params.model, params.train
    prep, size = preprocessing(name, cfg.normalization), cfg.image_size
    evaluate = eval_transform(prep, size)
    train_set = ImageDataset(
        parts["train"]["file"], parts["train"]["label"], train_transform(prep, size, params.augment)
    )
    val_set = ImageDataset(parts["val"]["file"], parts["val"]["label"], evaluate)
    inputs = checkpoint_inputs(
        params,
        provenance,
        manifest=manifest,
        preprocessed=cache,
        augmented=augmented,
        device=device,
        world_size=torch.distributed.get_world_size() if distributed else 1,
    )
    checkpoint = Path(cfg.checkpoint_dir) / f"{name}-{checkpoint_key(inputs)[:16]}.pt"
    log.info("checkpoint %s", checkpoint)
    others = sorted(p for p in checkpoint.parent.glob("*.pt*") if p != checkpoint and not p.name.endswith(".tmp"))
    if others and rank0:  # kept: switching parameters back resumes them; remove them by hand
        log.info(
            "%s also holds %d other checkpoint file(s) (%.0f MB) that this run does not use",
            checkpoint.parent,
            len(others),
            sum(p.stat().st_size for p in others) / 1e6,
        )
    model, history, best_epoch = train_full(
        model,
        train_set,
        val_set,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=params.seed,
        device=device,
        checkpoint=checkpoint,
        num_workers=cfg.num_workers,
        weight_decay=cfg.weight_decay,
        patience=cfg.patience,
        class_weight=class_weights(parts["train"]["label"].to_numpy(), cfg.class_weight),
        on_epoch=on_epoch,
    )
    scores = (
        {
            s: predict_scores(model, ImageDataset(parts[s]["file"], parts[s]["label"], evaluate), 64, device)
            for s in SCORED
        }
        if rank0
        else {}
    )
    if rank0 and checkpoint.exists():
        checkpoint.unlink()
    return model, history, best_epoch, scores


def _lung_record(cache, prep: config.Preprocess) -> dict:
    """What the cached images saw of the lungs (preprocess.lungs), as model.json records it, checked
    against the cache's own report: a new image is then prepared the same way (with the same segmenter)."""
    report = files.read_json(Path(cache) / "report.json", "the preprocess stage")
    for key in ("lungs", "intensity"):
        used, said = report.get(key, "none"), getattr(prep, key)
        if used != said:
            raise StateError(
                f"{cache}: its images were cached with preprocess.{key} {used!r}, the parameters say {said!r}: "
                f"rerun the preprocess stage (dvc repro)"
            )
    record = {"lungs": prep.lungs, "intensity": prep.intensity}
    if prep.lungs != "none":
        record.update(lung_margin=report["lung_margin"], segmenter_sha256=report["segmenter_sha256"])
    return record


def run_training(
    params: config.Params,
    *,
    manifest: str | os.PathLike,
    cache: str | os.PathLike,
    augmented: str | os.PathLike | None,
    features: str | os.PathLike,
    models: str | os.PathLike,
    predictions: str | os.PathLike,
    metrics: str | os.PathLike,
    plot: str | os.PathLike,
    use_mlflow: bool = True,
) -> None:
    """Train as ``params`` say (validated), then write ``models`` (model.pt, model.json),
    ``predictions``, ``plot`` (loss per epoch) and ``metrics``; log to MLflow unless told not to.

    Seeded, with deterministic algorithms (strictly): a rerun on the same machine with the same
    thread count gives bitwise identical outputs. The compute environment goes to ``metrics``
    and MLflow; wall time to the log and MLflow only. Under torchrun only rank 0 writes."""
    name, weights, cfg, seed = params.model, params.weights, params.train, params.seed
    device = resolve_device(cfg.device)
    distributed = init_distributed(device)
    rank0 = not distributed or torch.distributed.get_rank() == 0
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())

    if rank0 and use_mlflow:  # a store that cannot be opened fails now, in one line, not after training
        tracking.open_store(params.mlflow.experiment, params.mlflow.tracking_uri)
    lungs = _lung_record(cache, params.preprocess)  # a cache of other settings fails now, not after training
    seed_everything(seed)  # and deterministic algorithms
    environment = compute_environment()
    log.info("compute environment: %s", ", ".join(f"{k}={v}" for k, v in environment.items()))
    model, provenance = build_model(name, weights)
    table = load_table(manifest, cache, augmented)
    if cfg.shuffle_labels:  # control experiment: labels carry no information
        rng = np.random.default_rng(seed)
        is_train = table["split"] == "train"
        table.loc[is_train, "label"] = rng.permutation(table.loc[is_train, "label"].to_numpy())
    parts = {s: table[table["split"] == s].reset_index(drop=True) for s in SPLITS}

    run = tracking.start_training_run(params, device, provenance, environment) if rank0 and use_mlflow else None

    def on_epoch(entry):
        log.info(
            "epoch %3d  train loss %.4f  val loss %.4f  (%.1f s)",
            entry.epoch,
            entry.train_loss,
            entry.val_loss,
            entry.seconds,
        )
        if run is not None:
            tracking.log_epoch(entry)

    start = time.perf_counter()
    if cfg.mode == "last_layer":
        history, best_epoch, scores = _train_last_layer(model, params, parts, Path(features), on_epoch)
    else:
        model, history, best_epoch, scores = _train_full(
            model,
            params,
            parts,
            provenance,
            device,
            manifest=manifest,
            cache=cache,
            augmented=augmented,
            distributed=distributed,
            rank0=rank0,
            on_epoch=on_epoch,
        )
    seconds = time.perf_counter() - start
    if not rank0:
        return

    results = {
        "model": name,
        "weights": provenance["weights"],
        "mode": cfg.mode,
        "device": str(device),
        "best_epoch": int(best_epoch),
        "epochs_run": len(history),
        "best_val_loss": float(min(h.val_loss for h in history)),
        "val_auc": _auc(parts["val"]["label"], scores["val"]),
        "test_auc": _auc(parts["test"]["label"], scores["test"]),
        "train_images": int(len(parts["train"])),
        "shuffled_labels": cfg.shuffle_labels,
        **environment,  # what bitwise equality depends on (compared across machines within a tolerance)
    }
    log.info(
        "best epoch %d; val AUC %s, test AUC %s; %.1f s", best_epoch, results["val_auc"], results["test_auc"], seconds
    )
    prep = preprocessing(name, cfg.normalization)
    models = Path(models)  # model.pt and model.json are DVC outputs of their own (the model card sits beside)
    models.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(models / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    files.write_json(
        models / "model.json",
        {
            "architecture": name,
            "classes": ["non-COVID", "COVID-19"],
            "positive_class": 1,
            "preprocessing": {
                **prep,
                "input_size": cfg.image_size,
                "cache_size": params.preprocess.cache_size,
                "resize": params.preprocess.resize,
                "grayscale": params.preprocess.grayscale,
                "max_pixels": params.preprocess.max_pixels,
                **lungs,
            },
            "weights": provenance,
            "train": cfg.as_dict(),
            "seed": seed,
            "dataset": params.dataset,
            "best_epoch": int(best_epoch),
            "device": str(device),
            "model_sha256": files.sha256_file(models / "model.pt"),  # inference refuses a model.pt without it
        },
    )
    scored = pd.concat([parts[s].assign(score=scores[s]) for s in SCORED], ignore_index=True)
    files.write_csv(predictions, scored[PRED_COLUMNS])
    files.write_csv(
        plot, pd.DataFrame([{"epoch": h.epoch, "train_loss": h.train_loss, "val_loss": h.val_loss} for h in history])
    )
    files.write_json(metrics, results)
    if run is not None:
        segmenter = models / "segment" if params.preprocess.lungs != "none" else None
        tracking.finish_training_run(
            results,
            environment,
            seconds,
            plot=plot,
            model_json=models / "model.json",
            model_pt=models / "model.pt",
            segmenter=segmenter,
        )
