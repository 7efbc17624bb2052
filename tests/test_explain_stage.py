"""The explain stage and `deepcovid explain` on tiny synthetic data: outputs, the metrics checked
against the saved maps and masks, bad input that leaves the other images explained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from workspace import REPO, error_line, override_params, read, run_python, run_stage

# this module's explain settings, on the shared tiny trained pipeline (tests/conftest.py: TINY, ResNet18
# with random weights, trained up to evaluate; the explain settings change nothing before the explain stage)
EXPLAIN = {
    "explain.window": 16,
    "explain.stride": 8,
    "explain.top_covid": 2,
    "explain.false_negatives": 1,
    "explain.false_positives": 1,
}


@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
    return _copy(tiny_trained, tmp_path_factory.mktemp("explain") / "ws", **EXPLAIN)


def _copy(ws: Path, dst: Path, **overrides) -> Path:
    shutil.copytree(ws, dst)
    override_params(dst / "params.yaml", dst / "params.yaml", overrides)
    return dst


def test_stage_outputs_and_metrics_from_the_saved_maps(trained, tmp_path):
    ws = _copy(trained, tmp_path / "ws")
    run_stage(ws, "explain")
    index = pd.read_csv(ws / "data/explain/index.csv")
    predictions = pd.read_csv(ws / "data/predictions.csv")
    threshold = json.loads((ws / "metrics/evaluate.json").read_text())["test"]["threshold"]
    test = predictions[predictions["split"] == "test"]
    top = test[test["label"] == 1].nlargest(2, "score")["image_id"].tolist()
    assert index["image_id"].tolist()[:2] == top and index["kind"].tolist()[:2] == ["top", "top"]
    for row in index.itertuples():
        if row.kind == "false_negative":
            assert row.label == 1 and row.score < threshold
        if row.kind == "false_positive":
            assert row.label == 0 and row.score >= threshold
    maps = np.load(ws / "data/explain/maps.npz")
    n = len(index)
    assert maps["pixel"].shape == (n, 64, 64) and maps["scores"].shape == (n, 7, 7)  # 64 px, window 16, stride 8
    assert maps["image_id"].tolist() == index["image_id"].tolist()
    for k, row in enumerate(index.itertuples()):
        pixel, lung = maps["pixel"][k], maps["lung"][k]
        assert lung.any(), "synthetic images come with lung masks"
        positive = np.clip(pixel, 0, None)
        assert row.lung_mass == pytest.approx(positive[lung].sum() / positive.sum(), abs=1e-5)
        assert row.pointing_lung == float(lung[pixel == pixel.max()].all())
        assert row.lung_area == pytest.approx(lung.mean())
        assert row.base_score == pytest.approx(row.score, abs=1e-5)  # the train stage's score
        assert (ws / "plots/explain" / row.figure).is_file()
    assert sorted(p.name for p in (ws / "plots/explain").iterdir()) == sorted(index["figure"])
    metrics = json.loads((ws / "metrics/explain.json").read_text())
    assert metrics["images"] == n and metrics["with_lungs"] == n
    assert metrics["lung_mass"] == pytest.approx(index["lung_mass"].mean(), abs=1e-6)
    assert metrics["pointing_lung"] == pytest.approx(index["pointing_lung"].mean(), abs=1e-6)
    assert metrics["sanity_spearman"] == pytest.approx(index["sanity_spearman"].mean(), abs=1e-6)
    assert not np.allclose(maps["pixel"], maps["random_pixel"])  # the randomised head maps differently
    assert read(ws / "data/explain/rejected.csv").empty


def test_bad_inputs_are_reported_and_the_others_explained(trained, tmp_path):
    ws = _copy(trained, tmp_path / "ws")
    index = read(ws / "data/preprocessed/index.csv").set_index("image_id")
    first, second = [i for i in _chosen(ws) if i.startswith("cohen/")][:2]
    (ws / "data/preprocessed" / index.loc[first, "cache_path"]).write_bytes(b"not a png")  # unreadable
    manifest = read(ws / "data/manifest.csv").set_index("image_id")
    truth = read(ws / "data/raw/cohen/annotations/synthetic_truth.csv").set_index("filename")
    lung = ws / "data/raw/cohen" / truth.loc[Path(manifest.loc[second, "relpath"]).name, "lung_mask"]
    Image.new("L", (7, 5), 255).save(lung)  # a mask of another size
    run_stage(ws, "explain")
    rejected = read(ws / "data/explain/rejected.csv").set_index("image_id")
    assert "cached image unavailable" in rejected.loc[first, "reason"]
    assert f"mask {lung.name} is 7x5" in rejected.loc[second, "reason"]
    explained = pd.read_csv(ws / "data/explain/index.csv")
    assert first not in set(explained["image_id"]) and second in set(explained["image_id"])
    assert np.isnan(explained.set_index("image_id").loc[second, "lung_mass"])  # mapped, not measured
    assert len(explained) == len(_chosen(ws)) - 1


def _chosen(ws: Path) -> list[str]:
    from deepcovid.explain.explain_run import select_images

    threshold = json.loads((ws / "metrics/evaluate.json").read_text())["test"]["threshold"]
    chosen = select_images(pd.read_csv(ws / "data/predictions.csv"), threshold, 2, 1, 1)
    return chosen["image_id"].tolist()


def test_bad_parameter_is_one_line(trained, tmp_path):
    ws = _copy(trained, tmp_path / "ws", **{"explain.stride": 20})
    proc = run_stage(ws, "explain", check=False)
    assert proc.returncode == 2
    assert "explain.stride" in error_line(proc) and "larger than the window 16" in error_line(proc)


def test_cli_explains_a_real_image_with_the_pipeline_preprocessing(trained, tmp_path, shared_data):
    from deepcovid.data.images import read_image, resize_square
    from deepcovid.model.inference import load_model
    from deepcovid.model.presets import eval_transform

    image = shared_data / "cohen" / "images" / "lancet-case2a.jpg"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "figures"
    proc = run_python(
        [
            "-m",
            "deepcovid",
            "explain",
            str(image),
            str(bad),
            "--model",
            str(trained / "models"),
            "--out",
            str(out),
            "--evaluation",
            str(trained / "metrics/evaluate.json"),
            "--params",
            str(trained / "params.yaml"),
        ],
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr  # one file failed
    lines = dict(line.split("\t", 1) for line in proc.stdout.strip().splitlines())
    score, figure = lines[str(image)].split("\t")
    assert Path(figure) == out / "lancet-case2a_occlusion.png" and Path(figure).is_file()
    model, record = load_model(trained / "models")
    prep = record["preprocessing"]
    cached = resize_square(read_image(image, grayscale=prep["grayscale"]), prep["cache_size"], prep["resize"])
    with torch.inference_mode():
        expected = torch.softmax(model(eval_transform(prep, 64)(cached)[None]), 1)[0, 1].item()
    assert float(score) == pytest.approx(expected, abs=1e-5)
    assert "not explained: cannot decode" in lines[str(bad)] or "not a recognised" in lines[str(bad)]
