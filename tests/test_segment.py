"""The segment stage (deepcovid/segment): the held-out Dice against an independent reference, what the
stage writes, that it learns real lungs, that a foreign or tampered segmenter is refused, and that a
model trained with preprocess.lungs (crop, mask) is applied to new files exactly as the pipeline
prepared its own images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from deepcovid.data.annotations import annotation_index, load_mask
from deepcovid.data.images import read_image
from deepcovid.data.lungs import mask_at, read_mask, segment_input
from deepcovid.files import sha256_file
from deepcovid.segment import network
from deepcovid.segment.training import dice, fit
from workspace import REPO, override_params, read, registry_scores, run_python, run_stage

# ------------------------------------------------------------------------------------------ Dice


def test_dice_equals_monais_on_random_masks():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    pred = rng.random((12, 20, 24)) < rng.uniform(0.05, 0.9, (12, 1, 1))
    ref = rng.random((12, 20, 24)) < rng.uniform(0.05, 0.9, (12, 1, 1))
    metric = DiceMetric(include_background=True, reduction="none")
    theirs = metric(torch.as_tensor(pred[:, None]).float(), torch.as_tensor(ref[:, None]).float()).numpy().ravel()
    ours = np.array([dice(p, r) for p, r in zip(pred, ref)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # both empty: the same (MONAI: nan)
    assert dice(np.ones((3, 3)), np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        dice(np.ones((3, 3)), np.ones((3, 4)))


# ------------------------------------------------------------------------------------------ the stage


def test_stage_masks_every_manifest_image_and_judges_on_unseen_patients(tiny_trained):
    ws = tiny_trained
    manifest = read(ws / "data/manifest.csv")
    index = read(ws / "data/lungs/index.csv")
    assert list(index["image_id"]) == list(manifest["image_id"])
    size = json.loads((ws / "data/lungs/report.json").read_text())["size"]
    assert size == 32
    for row in index.head(20).itertuples():
        mask = read_mask(ws / "data/lungs" / row.mask_path, size)
        assert mask.mean() == pytest.approx(float(row.lung_fraction), abs=1e-6)
    roles = index.merge(manifest[["image_id", "split", "split_group"]], on="image_id")
    learnt, judged = roles[roles["role"] == "train"], roles[roles["role"] == "held_out"]
    assert len(learnt) == 24 and len(judged) > 0  # segment.max_train_images of TINY
    assert set(learnt["split"]) <= {"train", "val"} and set(judged["split"]) <= {"test", "external"}
    assert not set(learnt["split_group"]) & set(judged["split_group"])  # no patient on both sides
    assert (roles.loc[roles["role"] != "", "reference"].astype(int) == 1).all()
    assert roles.loc[roles["role"] != "held_out", "dice"].eq("").all()
    metrics = json.loads((ws / "metrics/segment.json").read_text())
    held = metrics["held_out_dice"]
    assert held["images"] == len(judged) and held["patients"] == judged["split_group"].nunique()
    assert held["mean"] == pytest.approx(judged["dice"].astype(float).mean(), abs=1e-5)
    lo, hi = held["ci95"]
    assert lo <= held["mean"] <= hi
    record = json.loads((ws / "models/segment/segment.json").read_text())
    assert record["segment_sha256"] == sha256_file(ws / "models/segment/segment.pt")
    assert (ws / "plots/segment/masks.png").stat().st_size > 1000


def test_a_loaded_segmenter_masks_a_raw_file_as_the_stage_did(tiny_trained):
    """`deepcovid predict` segments a new file through :class:`Segmenter`: on the pipeline's own
    images it gives the stage's masks (one image at a time against the stage's batches)."""
    from deepcovid.data.sources import image_path, read_sources

    ws = tiny_trained
    segmenter = network.load_segmenter(ws / "models/segment")
    manifest = read(ws / "data/manifest.csv").head(12)
    roots = read_sources(ws / "data/raw")
    for row in manifest.itertuples():
        image = read_image(image_path(roots, row.source, row.relpath, ws / "data/raw"))
        expected = read_mask(ws / "data/lungs/masks" / f"{row.image_id}.png", segmenter.size)
        np.testing.assert_array_equal(segmenter.mask(image), expected)


def _cohen_masks(shared_data, size: int):
    """Every real Cohen image with a lungVAE mask: (patients, images at ``size``, masks at ``size``)."""
    root = shared_data / "cohen"
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    patient = dict(zip(meta["filename"], meta["patientid"]))
    rows = [
        (patient[path.name], path, entry["lung"][1])
        for path, entry in sorted(annotation_index(root).items())
        if entry.get("lung", ("",))[0] == "mask" and path.name in patient
    ]
    images, masks = [], []
    for _, path, mask in rows:
        image = read_image(path)
        images.append(segment_input(image, size))
        masks.append(mask_at(load_mask(mask, image.size), size))
    return np.array([p for p, _, _ in rows]), np.stack(images), np.stack(masks)


def test_the_segmenter_learns_real_lungs_on_patients_it_never_saw(shared_data):
    """The issue's aim (Dice >= 0.90 held out) at the pipeline's settings is measured in
    metrics/segment.json of the public configuration (0.936); here, smaller and faster (48 px, 12
    epochs, one thread: 0.926 when written), it must still reach 0.88 on the patients left out, and
    clearly beat the best fixed mask (0.77)."""
    patients, images, masks = _cohen_masks(shared_data, 48)
    assert len(patients) >= 180
    held = np.isin(patients, np.unique(patients)[::4])  # a quarter of the patients
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside another test worker: two threads each would contend
    try:
        net, losses = fit(
            images[~held], masks[~held], features=(8, 16, 32, 64, 128, 8), epochs=12, batch_size=16, lr=1e-3, seed=0
        )
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < losses[0]
    pred = network.predict(net, images[held], threshold=0.5)
    scores = np.array([dice(p, r) for p, r in zip(pred, masks[held])])
    prior = masks[~held].mean(axis=0) >= 0.5  # the best fixed mask
    baseline = np.array([dice(prior, r) for r in masks[held]])
    assert scores.mean() >= 0.88, scores.mean()
    assert scores.mean() > baseline.mean() + 0.1, (scores.mean(), baseline.mean())


# ------------------------------------------------------------------------------------------ trust


def _saved(tmp_path, features=(4, 4, 8, 8, 16, 4)):
    net = network.build(features)
    record = network.save(net, tmp_path, {"size": 32, "features": list(features), "threshold": 0.5})
    return net, record


def test_a_replaced_or_foreign_segmenter_is_refused(tmp_path):
    _, record = _saved(tmp_path / "a")
    network.load(tmp_path / "a", record["segment_sha256"])  # the recorded one loads
    with pytest.raises(network.SegmenterError, match="the classifier's record"):
        network.load(tmp_path / "a", "0" * 64)
    # another network's weights under this record, its digest rewritten to match
    _saved(tmp_path / "b", features=(8, 8, 8, 8, 8, 8))
    shutil.copy(tmp_path / "b" / network.WEIGHTS, tmp_path / "a" / network.WEIGHTS)
    with pytest.raises(network.SegmenterError, match="its record"):
        network.load(tmp_path / "a")
    (tmp_path / "a" / network.RECORD).write_text(
        json.dumps({**record, "segment_sha256": sha256_file(tmp_path / "a" / network.WEIGHTS)})
    )
    with pytest.raises(network.SegmenterError, match="not the recorded segmenter"):
        network.load(tmp_path / "a")
    # NaN weights, digest matching
    net, record = _saved(tmp_path / "c")
    state = net.state_dict()
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, tmp_path / "c" / network.WEIGHTS)
    (tmp_path / "c" / network.RECORD).write_text(
        json.dumps({**record, "segment_sha256": sha256_file(tmp_path / "c" / network.WEIGHTS)})
    )
    with pytest.raises(network.SegmenterError, match="non-finite"):
        network.load(tmp_path / "c")
    (tmp_path / "c" / network.RECORD).write_text("{not json")
    with pytest.raises(network.SegmenterError, match="not a segmenter record"):
        network.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="run the segment stage"):
        network.load(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ lungs in the model


def _predict(ws, paths, out):
    return run_python(
        ["-m", "deepcovid", "predict", *map(str, paths), "--model", str(ws / "models"), "--out", str(out),
         "--evaluation", str(ws / "metrics/evaluate.json"), "--params", str(ws / "params.yaml")],
        cwd=REPO,
    )  # fmt: skip


VARIANTS = {  # the study's kinds of variant: lungs, intensity, normalisation, and combinations
    "mask+equalize": {"preprocess.lungs": "mask", "preprocess.intensity": "equalize"},
    "crop": {"preprocess.lungs": "crop"},
    "clahe": {"preprocess.intensity": "clahe"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_model_trained_on_changed_inputs_scores_new_files_as_the_pipeline_did(tiny_trained, tmp_path, variant):
    from deepcovid.data.sources import image_path, read_sources

    overrides = VARIANTS[variant]
    ws = tmp_path / "ws"
    shutil.copytree(tiny_trained, ws)
    override_params(ws / "params.yaml", ws / "params.yaml", overrides)
    proc = run_stage(ws, "train", check=False, args=("--no-mlflow",))  # the cache and features are the old ones
    stale = "preprocess.intensity 'none'" if variant == "clahe" else "preprocess.lungs 'none'"
    assert proc.returncode == 2 and f"cached with {stale}" in proc.stderr.splitlines()[-1], proc.stderr[-500:]
    mlflow = variant == "crop"  # one variant logs and registers its model (with the segmenter) in MLflow
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for stage in ("preprocess", "augment", "featurize", "train", "evaluate"):
        if stage == "train" and mlflow:
            run_stage(ws, stage, env={"MLFLOW_TRACKING_URI": uri})
        else:
            run_stage(ws, stage, args=("--no-mlflow",) if stage == "train" else ())
    prep = json.loads((ws / "models/model.json").read_text())["preprocessing"]
    assert prep["lungs"] == overrides.get("preprocess.lungs", "none")
    assert prep["intensity"] == overrides.get("preprocess.intensity", "none")
    if prep["lungs"] != "none":
        segment = json.loads((ws / "models/segment/segment.json").read_text())
        assert prep["segmenter_sha256"] == segment["segment_sha256"]
    pred = pd.read_csv(ws / "data/predictions.csv", dtype={"image_id": str})
    pred = pred[pred["split"] == "test"].reset_index(drop=True)
    manifest = read(ws / "data/manifest.csv").set_index("image_id")
    roots = read_sources(ws / "data/raw")
    paths = [
        image_path(roots, manifest.loc[i, "source"], manifest.loc[i, "relpath"], ws / "data/raw")
        for i in pred["image_id"]
    ]
    out = tmp_path / "scores.csv"
    proc = _predict(ws, paths, out)
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out, keep_default_na=False)
    np.testing.assert_allclose(got["score"].astype(float), pred["score"], atol=1e-6, rtol=0)
    if mlflow:  # the registered model carries its segmenter and scores the files alike, nothing unpickled
        loaded = registry_scores(uri, "models:/deep-covid-resnet18/latest", paths, tmp_path)
        np.testing.assert_allclose(loaded, pred["score"], atol=1e-6, rtol=0)
    # the changed preparation matters: the plain model's scores of the same images differ
    plain = pd.read_csv(tiny_trained / "data/predictions.csv", dtype={"image_id": str}).set_index("image_id")
    assert np.abs(plain.loc[pred["image_id"], "score"].to_numpy() - pred["score"].to_numpy()).max() > 1e-3
    if prep["lungs"] != "none":
        shutil.rmtree(ws / "models/segment")
        proc = _predict(ws, paths[:1], out)
        assert proc.returncode == 2 and "run the segment stage" in proc.stderr.splitlines()[-1]


def test_normalisation_is_the_backbones_or_imagenets_and_features_of_the_other_are_refused(tiny_trained, tmp_path):
    from deepcovid.model.architectures import ModelError, preprocessing

    assert preprocessing("efficientnet_lite0")["mean"] == [127 / 255] * 3
    assert preprocessing("efficientnet_lite0", "imagenet")["mean"] == [0.485, 0.456, 0.406]
    assert preprocessing("efficientnet_lite0", "imagenet")["std"] == [0.229, 0.224, 0.225]
    assert preprocessing("resnet18", "imagenet") == preprocessing("resnet18")  # torchvision's own is ImageNet's
    with pytest.raises(ModelError, match="unknown normalization"):
        preprocessing("resnet18", "zscore")
    ws = tmp_path / "ws"
    shutil.copytree(tiny_trained, ws)
    meta = json.loads((ws / "data/features/meta.json").read_text())
    meta["preprocessing"]["mean"] = [0.5, 0.5, 0.5]  # features of another normalisation
    (ws / "data/features/meta.json").write_text(json.dumps(meta))
    proc = run_stage(ws, "train", check=False, args=("--no-mlflow",))
    assert proc.returncode == 2 and "another input normalisation" in proc.stderr.splitlines()[-1]
