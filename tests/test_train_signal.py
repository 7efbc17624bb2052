"""The train stage on data with a planted signal: it learns a signal that is there, and its
``train.shuffle_labels`` control learns nothing (test AUC about 0.5) while leaving the
validation and test labels alone.

The data is built by hand (manifest + preprocessed cache, 32x32 PNGs), not by the data
stages: every image is a flat field of random brightness (30..220) plus pixel noise of random
strength (std 5..60) plus a random linear gradient; COVID-19 images also carry a Gaussian blob
(amplitude 80, sigma 4 px) in the centre. The class-independent variation (brightness, noise,
gradient) dominates the features of a random-init ResNet-18, so a head trained on shuffled
labels (a random direction in feature space) barely ranks the classes, while a head trained
on the real labels finds the blob (a global brightness difference between the classes would
not do: with it a random head ranks the two classes almost perfectly one way or the other and
the shuffled control gives AUC ~0 or ~1).

Measured with this stage on this data: real-label test AUC 0.876..0.972 for seeds 0, 3..11 (the
test asserts > 0.8 for seed 0, which gives 0.902); for seeds 0..11 the shuffled-label test AUC 0.407..0.613 per seed
(mean 0.517, sd 0.060), the mean of seeds 0-2, 3-5, 6-8, 9-11: 0.489, 0.518, 0.523, 0.538.
With 200 + 200 test images the AUC of pure noise alone has sd 0.029; the rest is the random
head direction and the choice of the best epoch on (true-labelled) validation data, which
biases the control slightly upwards. Tolerances: each shuffled run within 0.5 +- 0.2 (3.3 sd),
the mean of seeds 0, 1, 2 within 0.5 +- 0.12 (its sd is about 0.035). Runs are bitwise
reproducible on one machine; another machine moves an AUC by far less than these margins.
A stage that ignores shuffle_labels gives ~0.9 (fails both); one that also shuffles validation
or test labels fails the label checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workspace import make_workspace, override_params, read, run_stage

pytestmark = pytest.mark.slow

SIZE = 32
SPLITS = {"train": 240, "val": 60, "test": 400}  # labels alternate 0/1: balanced in every part
PARAMS = {
    "model": "resnet18",
    "weights": "none",
    "seed": 0,
    "preprocess.cache_size": SIZE,
    "train.mode": "last_layer",
    "train.image_size": SIZE,
    "train.epochs": 5,
    "train.batch_size": 20,
    "train.lr": 0.03,
    "train.weight_decay": 0.0,
    "train.patience": 0,
    "train.device": "cpu",
    "train.num_workers": 0,
    "train.feature_batch_size": 128,
    "train.shuffle_labels": False,
}
SHUFFLE_SEEDS = (0, 1, 2)


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = rng.uniform(30, 220) + rng.uniform(5, 60) * rng.normal(0, 1, (SIZE, SIZE))
    gx, gy = rng.normal(0, 40, 2)
    img = img + gx * (xx / SIZE - 0.5) + gy * (yy / SIZE - 0.5)
    if label:
        img = img + 80 * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 4**2))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A workspace holding data/manifest.csv and data/preprocessed (no augmented copies)."""
    ws = make_workspace(tmp_path_factory.mktemp("planted"), **PARAMS)
    cache = ws / "data/preprocessed"
    (cache / "images").mkdir(parents=True)
    rng = np.random.default_rng(123)
    rows, index = [], []
    i = 0
    for split, n in SPLITS.items():
        for _ in range(n):
            label = i % 2
            source = "cohen" if label else "chexpert"
            image_id = f"{source}/img{i:04d}.png"
            rel = f"images/img{i:04d}.png"
            Image.fromarray(_image(label, rng)).save(cache / rel)
            rows.append(
                {
                    "image_id": image_id,
                    "source": source,
                    "relpath": f"img{i:04d}.png",
                    "patient": f"p{i:04d}",
                    "split_group": f"g{i:05d}",
                    "label": label,
                    "group": "covid" if label else "normal",
                    "category": "COVID-19" if label else "No Finding",
                    "finding": "COVID-19" if label else "",
                    "view": "PA",
                    "pool": "" if label else ("test" if split == "test" else "train"),
                    "split": split,
                    "sha256": f"{i:064x}",
                }
            )
            index.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "label": label,
                    "group": rows[-1]["group"],
                    "cache_path": rel,
                    "width": SIZE,
                    "height": SIZE,
                }
            )
            i += 1
    pd.DataFrame(rows).to_csv(ws / "data/manifest.csv", index=False)
    pd.DataFrame(index).to_csv(cache / "index.csv", index=False)
    report = {"cache_size": SIZE, "resize": "stretch", "grayscale": True, "decoded": len(index), "rejected": 0}
    (cache / "report.json").write_text(json.dumps(report))  # as preprocess writes it (lungs: none)
    return ws


@pytest.fixture(scope="module")
def featurized(planted, tmp_path_factory):
    """Workspaces featurized once per seed (weights: none, so the backbone depends on the seed)."""
    done: dict[int, Path] = {}

    def get(seed: int) -> Path:
        if seed not in done:
            ws = tmp_path_factory.mktemp(f"feat{seed}")
            shutil.copytree(planted, ws, dirs_exist_ok=True)
            override_params(ws / "params.yaml", ws / "params.yaml", {"seed": seed})
            run_stage(ws, "featurize")
            done[seed] = ws
        return done[seed]

    return get


def _train(featurized, seed: int, dst: Path, shuffle: bool) -> Path:
    ws = shutil.copytree(featurized(seed), dst)
    override_params(ws / "params.yaml", ws / "params.yaml", {"train.shuffle_labels": shuffle})
    run_stage(ws, "train", args=("--no-mlflow",))
    return ws


def _test_auc(ws: Path) -> float:
    from sklearn.metrics import roc_auc_score

    pred = read(ws / "data/predictions.csv")
    test = pred[pred["split"] == "test"]
    return float(roc_auc_score(test["label"].astype(int), test["score"].astype(float)))


def _check_heldout_labels_untouched(ws: Path) -> None:
    """predictions.csv: exactly the manifest's val and test images, each with its manifest label."""
    manifest = read(ws / "data/manifest.csv").set_index("image_id")
    pred = read(ws / "data/predictions.csv").set_index("image_id")
    held_out = manifest[manifest["split"].isin(["val", "test"])]
    assert sorted(pred.index) == sorted(held_out.index)
    assert (pred["split"] == held_out.loc[pred.index, "split"]).all()
    mismatched = pred.index[pred["label"] != held_out.loc[pred.index, "label"]]
    assert len(mismatched) == 0, f"{len(mismatched)} held-out labels changed, e.g. {list(mismatched[:3])}"
    for split in ("val", "test"):  # still balanced as built
        assert (pred.loc[pred["split"] == split, "label"] == "1").sum() == SPLITS[split] // 2


def test_planted_signal_is_learnt(featurized, tmp_path):
    ws = _train(featurized, 0, tmp_path / "real", shuffle=False)
    auc = _test_auc(ws)
    assert auc > 0.8, f"test AUC {auc:.3f} on an obvious planted signal"
    metrics = json.loads((ws / "metrics/train.json").read_text())
    assert metrics["test_auc"] == pytest.approx(auc, abs=1e-9)
    assert metrics["shuffled_labels"] is False
    assert metrics["train_images"] == SPLITS["train"]
    _check_heldout_labels_untouched(ws)


def test_shuffled_labels_give_chance_auc_and_keep_heldout_labels(featurized, tmp_path):
    aucs = []
    for seed in SHUFFLE_SEEDS:
        ws = _train(featurized, seed, tmp_path / f"shuffled{seed}", shuffle=True)
        metrics = json.loads((ws / "metrics/train.json").read_text())
        assert metrics["shuffled_labels"] is True
        assert metrics["train_images"] == SPLITS["train"]  # permuted, none dropped
        assert json.loads((ws / "models/model.json").read_text())["train"]["shuffle_labels"] is True
        _check_heldout_labels_untouched(ws)
        auc = _test_auc(ws)
        assert metrics["test_auc"] == pytest.approx(auc, abs=1e-9)
        aucs.append(auc)
    assert all(abs(a - 0.5) < 0.2 for a in aucs), aucs
    assert abs(np.mean(aucs) - 0.5) < 0.12, aucs
