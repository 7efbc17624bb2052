"""Stage train: fine-tune the chosen architecture; score every validation and test image.

last_layer: the head trains on the cached backbone features (the paper's method).
full: the whole network trains end to end, with a checkpoint every epoch (resumes). The
checkpoint is named after everything that changes the result (parameters, weights file,
data, code: deepcovid.model.training.checkpoint_inputs), so a run never resumes from stale state.

Randomness is seeded and torch uses deterministic algorithms (strictly): a rerun on the same
machine with the same thread count gives bitwise identical outputs. The thread count and the
CPU kernels in use (deepcovid.model.training.compute_environment) go to metrics/train.json and MLflow.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepcovid import runner

from deepcovid import files

from deepcovid import tracking
from deepcovid.model.features import state_digest
from deepcovid.model.datasets import ImageDataset, load_table, normalize_transform, train_transform
from deepcovid.model.architectures import build_model, preprocessing, split_backbone_head
from deepcovid.params import flatten, get, load_params
from deepcovid.model.trainparams import validate_train_params
from deepcovid.model.training import (checkpoint_inputs, checkpoint_key, compute_environment, init_distributed,
                                predict_scores, resolve_device, seed_everything, train_full, train_head)

log = logging.getLogger("train")
PRED_COLUMNS = ["image_id", "source", "patient", "label", "group", "category", "split", "score"]


def _auc(y, s) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y)) == 2 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/manifest.csv")
    ap.add_argument("--cache", default="data/preprocessed")
    ap.add_argument("--augmented", default="data/augmented")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--models", default="models")
    ap.add_argument("--predictions", default="data/predictions.csv")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--plot", default="plots/train_loss.csv")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = ap.parse_args()

    params = load_params(args.params)
    validate_train_params(params)
    name, weights, cfg, seed = params["model"], params["weights"], params["train"], int(params["seed"])
    device = resolve_device(cfg["device"])
    distributed = init_distributed(device)
    rank0 = not distributed or torch.distributed.get_rank() == 0
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())

    seed_everything(seed)  # and deterministic algorithms
    environment = compute_environment()
    log.info("compute environment: %s", ", ".join(f"{k}={v}" for k, v in environment.items()))
    model, provenance = build_model(name, weights)
    prep = preprocessing(name)
    size = cfg["image_size"]
    table = load_table(args.manifest, args.cache, args.augmented)
    if cfg["shuffle_labels"]:  # control experiment: labels carry no information
        rng = np.random.default_rng(seed)
        is_train = table["split"] == "train"
        table.loc[is_train, "label"] = rng.permutation(table.loc[is_train, "label"].to_numpy())
    parts = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}

    run = tracking.start_run(get(params, "mlflow.experiment"), get(params, "mlflow.tracking_uri", "")) \
        if rank0 and not args.no_mlflow else None
    if run is not None:
        import mlflow

        mlflow.log_params({k: v for k, v in flatten({"model": name, "weights": weights, "seed": seed,
                                                              "dataset": params.get("dataset"), "train": cfg}).items()})
        mlflow.log_params({"device": str(device), "weights_source": provenance["weights_source"]})
        mlflow.log_params(environment)

    def on_epoch(entry):
        log.info("epoch %3d  train loss %.4f  val loss %.4f  (%.1f s)", entry.epoch, entry.train_loss,
                 entry.val_loss, entry.seconds)
        if run is not None:
            mlflow.log_metrics({"train_loss": entry.train_loss, "val_loss": entry.val_loss}, step=entry.epoch)

    start = time.perf_counter()
    if cfg["mode"] == "last_layer":
        meta = json.loads((Path(args.features) / "meta.json").read_text())
        if meta.get("skipped") or meta.get("model") != name or meta.get("image_size") != size:
            raise RuntimeError(f"{args.features} does not hold {name} features at {size}px: run dvc repro featurize")
        backbone, head = split_backbone_head(model, name)
        if state_digest(backbone) != meta["backbone_sha256"]:
            raise RuntimeError(f"{args.features} was computed with other backbone weights than weights={weights}")
        feats = torch.from_numpy(np.load(Path(args.features) / "features.npy"))
        index = pd.read_csv(Path(args.features) / "index.csv", dtype=str, keep_default_na=False)
        row_of = {img: i for i, img in enumerate(index["image_id"])}
        x = {s: feats[[row_of[i] for i in parts[s]["image_id"]]] for s in parts}
        y = {s: torch.tensor(parts[s]["label"].to_numpy(), dtype=torch.long) for s in parts}
        head, history, best_epoch = train_head(head, x["train"], y["train"], x["val"], y["val"],
                                               epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                                               seed=seed, weight_decay=cfg["weight_decay"],
                                               patience=cfg["patience"], on_epoch=on_epoch)
        with torch.no_grad():
            scores = {s: torch.softmax(head(x[s]), 1)[:, 1].numpy() for s in ("val", "test")}
    else:
        evaluate = normalize_transform(prep, size)
        train_set = ImageDataset(parts["train"]["file"], parts["train"]["label"],
                                 train_transform(prep, size, params["augment"]))
        val_set = ImageDataset(parts["val"]["file"], parts["val"]["label"], evaluate)
        inputs = checkpoint_inputs(params, provenance, manifest=args.manifest, preprocessed=args.cache,
                                   augmented=args.augmented, device=device,
                                   world_size=torch.distributed.get_world_size() if distributed else 1,
                                   code_files=[__file__])
        checkpoint = Path(cfg["checkpoint_dir"]) / f"{name}-{checkpoint_key(inputs)[:16]}.pt"
        log.info("checkpoint %s", checkpoint)
        others = sorted(p for p in checkpoint.parent.glob("*.pt*") if p != checkpoint and not p.name.endswith(".tmp"))
        if others and rank0:  # kept: switching parameters back resumes them; remove them by hand
            log.info("%s also holds %d other checkpoint file(s) (%.0f MB) that this run does not use",
                     checkpoint.parent, len(others), sum(p.stat().st_size for p in others) / 1e6)
        model, history, best_epoch = train_full(model, train_set, val_set, epochs=cfg["epochs"],
                                                batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed,
                                                device=device, checkpoint=checkpoint,
                                                num_workers=cfg["num_workers"], weight_decay=cfg["weight_decay"],
                                                patience=cfg["patience"], on_epoch=on_epoch)
        scores = {s: predict_scores(model, ImageDataset(parts[s]["file"], parts[s]["label"], evaluate), 64, device)
                  for s in ("val", "test")} if rank0 else {}
        if rank0 and checkpoint.exists():
            checkpoint.unlink()
    seconds = time.perf_counter() - start
    if not rank0:
        return

    predictions = pd.concat([parts[s].assign(score=scores[s]) for s in ("val", "test")], ignore_index=True)
    predictions = predictions[PRED_COLUMNS]
    metrics = {
        "model": name, "weights": provenance["weights"], "mode": cfg["mode"], "device": str(device),
        "best_epoch": int(best_epoch), "epochs_run": len(history),
        "best_val_loss": float(min(h.val_loss for h in history)),
        "val_auc": _auc(parts["val"]["label"], scores["val"]),
        "test_auc": _auc(parts["test"]["label"], scores["test"]),
        "train_images": int(len(parts["train"])),
        "shuffled_labels": bool(cfg["shuffle_labels"]),
        **environment,  # what bitwise equality depends on (compared across machines within a tolerance)
    }
    # wall time goes to the log and MLflow only: metrics/ must be identical on a rerun
    log.info("best epoch %d; val AUC %s, test AUC %s; %.1f s", best_epoch, metrics["val_auc"], metrics["test_auc"],
             seconds)
    model_dir = Path(args.models)
    with files.atomic_path(model_dir) as tmp:
        tmp.mkdir()
        torch.save(model.state_dict(), tmp / "model.pt")
        files.write_json(tmp / "model.json", {
            "architecture": name, "classes": ["non-COVID", "COVID-19"], "positive_class": 1,
            "preprocessing": {**prep, "input_size": size, "cache_size": params["preprocess"]["cache_size"],
                              "resize": params["preprocess"]["resize"], "grayscale": params["preprocess"]["grayscale"]},
            "weights": provenance, "train": cfg, "seed": seed, "dataset": params.get("dataset"),
            "best_epoch": int(best_epoch), "device": str(device),
        })
    files.write_csv(args.predictions, predictions)
    files.write_csv(args.plot, pd.DataFrame([{"epoch": h.epoch, "train_loss": h.train_loss, "val_loss": h.val_loss}
                                          for h in history]))
    files.write_json(args.metrics, metrics)
    if run is not None:
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                            and v is not None and k not in environment})  # the environment: params
        mlflow.log_metric("train_seconds", round(seconds, 1))
        mlflow.log_artifact(args.plot)
        mlflow.log_artifact(str(model_dir / "model.json"))
        import mlflow.pytorch

        # pickle format: the pt2 default traces the graph, which needs an input example and
        # does not support every architecture here (efficientnet-lite's own modules)
        mlflow.pytorch.log_model(model.cpu(), name="model", serialization_format="pickle",
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        mlflow.end_run()


if __name__ == "__main__":
    runner.run(main, "train")
