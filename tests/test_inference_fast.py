"""Inference on a model folder written by the test in a second (a random SqueezeNet with a 2-class
head, as the train stage records it): loading and its refusals, preparing an image as the
pipeline does, scoring in batches, predict's table. In process, so that mutation testing sees
the code (the end-to-end tests with a trained pipeline: tests/test_predict.py,
tests/test_model_integrity.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepcovid.data.images import read_image, resize_square
from deepcovid.errors import MissingInputError
from deepcovid.files import sha256_file
from deepcovid.model import inference as I
from deepcovid.model import predict as P
from deepcovid.model.architectures import ModelError, construct, preprocessing, replace_head
from deepcovid.model.presets import eval_transform
from dicom_files import chest, write_dicom

ARCH = "squeezenet"


def _write_folder(folder, state=None, **record_changes):
    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        torch.manual_seed(0)
        net = construct(ARCH)
        replace_head(net, ARCH, 2)
        state = net.state_dict()
    torch.save(state, folder / "model.pt")
    record = {
        "architecture": ARCH,
        "classes": ["non-COVID", "COVID-19"],
        "positive_class": 1,
        "preprocessing": {
            **preprocessing(ARCH),
            "input_size": 64,
            "cache_size": 80,
            "resize": "stretch",
            "grayscale": True,
            "max_pixels": 1_000_000,
        },
        "train": {"image_size": 64},
        "model_sha256": sha256_file(folder / "model.pt"),
    }
    record.update(record_changes)
    (folder / "model.json").write_text(json.dumps(record))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("model") / "models")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for k in range(5):
        paths.append(root / f"{k}.png")
        Image.fromarray(chest(90 + 10 * k, 100, bits=8, seed=k).astype(np.uint8), "L").save(paths[-1])
    return paths


def test_load_model_gives_the_saved_weights_in_eval_mode(folder):
    model, record = I.load_model(folder)
    assert not model.training and record["model_sha256"] == sha256_file(folder / "model.pt")
    saved = torch.load(folder / "model.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert I.model_sha256(folder) == record["model_sha256"]


def test_load_refuses_each_broken_pair(folder, tmp_path):
    with pytest.raises(MissingInputError, match="model.json not found"):
        I.load_model(tmp_path / "nothing")
    bad = _write_folder(tmp_path / "json")
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a model record"):
        I.load_model(bad)
    (bad / "model.json").write_text(json.dumps(["a list"]))
    with pytest.raises(ModelError, match="no architecture, classes, preprocessing, train, model_sha256"):
        I.load_model(bad)
    gone = _write_folder(tmp_path / "gone")
    (gone / "model.pt").unlink()
    with pytest.raises(MissingInputError, match="model.pt not found"):
        I.load_model(gone)
    other = _write_folder(tmp_path / "other", model_sha256="f" * 64)
    with pytest.raises(
        ModelError,
        match=r"SHA-256 [0-9a-f]{16}\.\.\. is not the ffffffffffffffff\.\.\. that "
        r"model\.json records",
    ):
        I.load_model(other)
    state = torch.load(folder / "model.pt", weights_only=True)
    wide = dict(state, **{"classifier.1.weight": torch.zeros(1000, 512, 1, 1), "classifier.1.bias": torch.zeros(1000)})
    with pytest.raises(ModelError, match=r"classifier\.1\.weight\) has 1000 outputs, the model record names 2"):
        I.load_model(_write_folder(tmp_path / "wide", wide))
    three = _write_folder(tmp_path / "three", state, classes=["a", "b", "c"])
    with pytest.raises(ModelError, match="has 2 outputs, the model record names 3 classes"):
        I.load_model(three)
    inf = dict(state, **{"features.0.bias": torch.full_like(state["features.0.bias"], float("inf"))})
    with pytest.raises(ModelError, match=r"1 tensors hold NaN or infinite values \(first: features\.0\.bias\)"):
        I.load_model(_write_folder(tmp_path / "inf", inf))
    counts = dict(state)
    counts["features.0.weight"] = counts["features.0.weight"][:, :2]
    with pytest.raises(ModelError, match="do not match architecture squeezenet"):
        I.load_model(_write_folder(tmp_path / "shape", counts))


def test_prepare_is_read_resize_then_the_evaluation_transform(folder, images):
    _, record = I.load_model(folder)
    prep = record["preprocessing"]
    want = eval_transform(prep, 64)(resize_square(read_image(images[0], grayscale=True, max_pixels=10**6), 80))
    got = I.prepare(images[0], record)
    assert got.shape == (3, 64, 64) and torch.equal(got, want)
    notes: list[str] = []
    I.prepare(images[0], {**record, "train": {"image_size": 96}}, notes=notes)
    assert notes == ["image 100x90 px, smaller than the model input (96 px): upscaled"]
    notes = []
    I.prepare(images[0], record, notes=notes)
    assert notes == []
    with pytest.raises(I.ImageReadError, match="above the pixel budget of 1,000"):
        I.prepare(images[0], {**record, "preprocessing": {**prep, "max_pixels": 1000}})


def test_score_files_scores_each_file_in_order_across_batches(folder, images, tmp_path):
    model, record = I.load_model(folder)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    lateral = write_dicom(tmp_path / "lat.dcm", chest(70, 70), bits_stored=12, ViewPosition="LL")
    paths = [images[0], broken, *images[1:], lateral]
    with torch.no_grad():
        want = [float(I.covid_probability(model(I.prepare(p, record)[None]))[0]) for p in (*images, lateral)]
    warnings: dict[int, str] = {}
    scores, errors = I.score_files(model, record, paths, batch_size=2, warnings=warnings)
    assert scores.shape == (7,) and np.isnan(scores[1]) and errors == {1: "not a recognised image format"}
    np.testing.assert_allclose(np.delete(scores, 1), want, rtol=0, atol=1e-6)
    assert set(warnings) == {6} and "lateral view" in warnings[6]
    again, _ = I.score_files(model, record, paths, batch_size=32)
    np.testing.assert_allclose(again, scores, rtol=0, atol=1e-6, equal_nan=True)


def test_predict_files_labels_at_the_threshold_and_validates(folder, images, tmp_path):
    missing = tmp_path / "missing.png"
    table = P.predict_files([str(p) for p in images] + [str(missing)], models=folder, threshold=0.5, batch_size=3)
    assert list(table.columns) == P.COLUMNS and len(table) == 6
    scored = table["score"].notna()
    assert scored.tolist() == [True] * 5 + [False]
    assert table.loc[5, "error"] == "file not found" and table.loc[5, "label"] == ""
    middle = float(P.predict_files([str(images[2])], models=folder, threshold=0.5).loc[0, "score"])
    at = P.predict_files([str(images[2])], models=folder, threshold=middle)
    above = P.predict_files([str(images[2])], models=folder, threshold=min(1.0, middle + 1e-9))
    assert at["label"].tolist() == ["COVID-19"] and above["label"].tolist() == ["non-COVID"]
    for bad in (-0.1, 1.1):
        with pytest.raises(P.PredictError, match=f"threshold {bad}: must lie in"):
            P.predict_files([str(images[0])], models=folder, threshold=bad)
    assert P.predict_files([str(images[0])], models=folder, threshold=0.0)["label"].tolist() == ["COVID-19"]
    assert P.predict_files([str(images[0])], models=folder, threshold=1.0)["label"].tolist() in (
        ["non-COVID"],
        ["COVID-19"],
    )
    with pytest.raises(P.PredictError, match="--batch-size 0: must be at least 1"):
        P.predict_files([str(images[0])], models=folder, threshold=0.5, batch_size=0)


def test_collect_files_takes_images_and_suffixless_dicom_only(tmp_path, images):
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("a.PNG", "b/c.jpeg", "z.tif", ".hidden/x.png", "notes.txt", "b/.dot.png"):
        (root / name).write_bytes(images[0].read_bytes())
    write_dicom(root / "b" / "study", chest(), bits_stored=12)
    (root / "b" / "plain").write_text("no marker")
    found = P.collect_files([root, tmp_path / "named.bmp"])
    assert found == [
        str(root / "a.PNG"),
        str(root / "b/c.jpeg"),
        str(root / "b/study"),
        str(root / "z.tif"),
        str(tmp_path / "named.bmp"),
    ]


def test_predict_files_reports_paths_warnings_and_scores_batch_by_batch(folder, images, tmp_path):
    lateral = write_dicom(tmp_path / "lat.dcm", chest(70, 70), bits_stored=12, ViewPosition="LL")
    paths = [str(images[0]), str(lateral), str(images[1])]
    one = P.predict_files(paths, models=folder, threshold=0.5, batch_size=1)
    assert list(one.columns) == P.COLUMNS and one["path"].tolist() == paths
    assert one["warning"].tolist()[0] == "" and "lateral view" in one["warning"][1] and one["warning"][2] == ""
    assert one["error"].tolist() == ["", "", ""]
    many = P.predict_files(paths, models=folder, threshold=0.5)
    np.testing.assert_allclose(one["score"], many["score"], rtol=0, atol=1e-6)
    model, record = I.load_model(folder)
    want, _ = I.score_files(model, record, paths, batch_size=1)
    np.testing.assert_allclose(one["score"], want, rtol=0, atol=0)
