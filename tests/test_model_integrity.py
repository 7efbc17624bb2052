"""Inference loads exactly what was trained, and labels at that model's own operating point.

A model.pt that is not the file model.json was written for (its SHA-256), a head of another
size, NaN weights: refused in one line (exit 2) by predict, explain, evaluate-external and the
MLflow model's loader. An evaluation file chosen for another model: refused unless a threshold
is given. A non-finite score is an error for that file, never a score. A score exactly at the
operating point is labelled COVID-19 (``score >= threshold``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from deepcovid.errors import InputError
from deepcovid.evaluation.predictions import operating_point
from deepcovid.files import sha256_file
from deepcovid.model import inference
from deepcovid.model import predict as P
from deepcovid.model.architectures import ModelError
from dicom_files import chest
from workspace import REPO, run_python


def _copy_models(tiny_trained, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_trained / "models", models)
    return models


def _rewrite(models, state):
    """Save ``state`` as model.pt and record its digest in model.json (a consistent pair)."""
    torch.save(state, models / "model.pt")
    record = json.loads((models / "model.json").read_text())
    record["model_sha256"] = sha256_file(models / "model.pt")
    (models / "model.json").write_text(json.dumps(record))


def _cli(command, *args):
    return run_python(["-m", "deepcovid", command, *map(str, args)], cwd=REPO, timeout=300)


def _one_line_refusal(proc, *words):
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in last, last


def test_the_train_stage_records_the_digest_of_its_model(tiny_trained):
    record = json.loads((tiny_trained / "models/model.json").read_text())
    assert record["model_sha256"] == sha256_file(tiny_trained / "models/model.pt")
    evaluation = json.loads((tiny_trained / "metrics/evaluate.json").read_text())
    assert evaluation["model_sha256"] == record["model_sha256"]
    assert (
        operating_point(tiny_trained / "metrics/evaluate.json", record["model_sha256"])
        == evaluation["test"]["threshold"]
    )


def test_a_model_file_of_another_run_is_refused(tiny_trained, tmp_path):
    models = _copy_models(tiny_trained, tmp_path)
    state = torch.load(models / "model.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0  # the same architecture and shapes, other weights
    torch.save(state, models / "model.pt")
    with pytest.raises(ModelError, match="different runs"):
        inference.load_model(models)
    image = tmp_path / "x.png"
    Image.fromarray(chest(240, 240, bits=8).astype(np.uint8), "L").save(image)
    _one_line_refusal(_cli("predict", image, "--model", models, "--threshold", "0.5"), "model.pt", "SHA-256")


def test_a_1000_class_head_is_refused_not_replaced(tiny_trained, tmp_path):
    models = _copy_models(tiny_trained, tmp_path)
    state = torch.load(models / "model.pt", weights_only=True)
    state["fc.weight"] = torch.zeros(1000, state["fc.weight"].shape[1])
    state["fc.bias"] = torch.zeros(1000)
    _rewrite(models, state)  # even with a matching digest
    with pytest.raises(ModelError, match="1000 outputs"):
        inference.load_model(models)
    image = tmp_path / "x.png"
    Image.fromarray(chest(240, 240, bits=8).astype(np.uint8), "L").save(image)
    _one_line_refusal(_cli("predict", image, "--model", models, "--threshold", "0.5"), "1000 outputs")


def test_nan_weights_and_missing_tensors_are_refused(tiny_trained, tmp_path):
    models = _copy_models(tiny_trained, tmp_path)
    state = torch.load(models / "model.pt", weights_only=True)
    broken = dict(state)
    broken["layer1.0.conv1.weight"] = torch.full_like(state["layer1.0.conv1.weight"], float("nan"))
    _rewrite(models, broken)
    with pytest.raises(ModelError, match="NaN or infinite"):
        inference.load_model(models)
    partial = {k: v for k, v in state.items() if k != "fc.bias"}
    _rewrite(models, partial)
    with pytest.raises(ModelError, match="missing fc.bias"):
        inference.load_model(models)


def test_a_record_without_the_digest_is_refused(tiny_trained, tmp_path):
    models = _copy_models(tiny_trained, tmp_path)
    record = json.loads((models / "model.json").read_text())
    del record["model_sha256"]
    (models / "model.json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match="no model_sha256"):
        inference.load_model(models)


def test_the_operating_point_of_another_model_is_refused(tiny_trained, tmp_path):
    evaluation = json.loads((tiny_trained / "metrics/evaluate.json").read_text())
    evaluation["model_sha256"] = "0" * 64
    other = tmp_path / "evaluate.json"
    other.write_text(json.dumps(evaluation))
    image = tmp_path / "x.png"
    Image.fromarray(chest(240, 240, bits=8).astype(np.uint8), "L").save(image)
    models = tiny_trained / "models"
    _one_line_refusal(_cli("predict", image, "--model", models, "--evaluation", other), "another", "--threshold")
    _one_line_refusal(
        _cli("explain", image, "--model", models, "--evaluation", other, "--out", tmp_path / "maps"), "--threshold"
    )
    given = _cli("predict", image, "--model", models, "--evaluation", other, "--threshold", "0.25")
    assert given.returncode == 0, given.stderr
    assert "label COVID-19 at score >= 0.25" in given.stderr
    del evaluation["model_sha256"]
    other.write_text(json.dumps(evaluation))
    with pytest.raises(InputError, match="does not name the model"):
        operating_point(other, model_sha256="0" * 64)
    assert operating_point(other) == evaluation["test"]["threshold"]  # no model to check against


class _Constant(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[: x.shape[0]]


def _record():
    return {
        "preprocessing": {
            "grayscale": True,
            "cache_size": 64,
            "resize": "stretch",
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "interpolation": "bilinear",
            "max_pixels": 50_000_000,
        },
        "train": {"image_size": 32},
    }


def test_a_non_finite_score_is_an_error_for_that_file_not_a_score(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 40), 60 * i, np.uint8), "L").save(paths[-1])
    model = _Constant([[0.0, 1.0], [float("nan"), 0.0], [0.0, float("inf")]])
    scores, errors = inference.score_files(model, _record(), paths, batch_size=8)
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert np.isnan(scores[1:]).all() and errors == {1: inference.NON_FINITE, 2: inference.NON_FINITE}


def test_a_score_exactly_at_the_operating_point_is_labelled_covid(monkeypatch):
    scores = np.array([0.25, 0.2500001, 0.2499999, np.nan])
    monkeypatch.setattr(P, "load_model", lambda models: (torch.nn.Identity(), {}))
    monkeypatch.setattr(P, "score_files", lambda *a, **k: (scores, {3: "unreadable"}))
    table = P.predict_files(["a", "b", "c", "d"], models="m", threshold=0.25, device="cpu")
    assert table["label"].tolist() == ["COVID-19", "COVID-19", "non-COVID", ""]
    assert table["error"].tolist() == ["", "", "", "unreadable"]


def test_spreadsheet_formulas_from_file_names_are_neutralised(tiny_trained, tmp_path):
    """OWASP's rule in the reports written for people: a text cell starting with = + - @ tab or CR
    gets a leading ' (shown as text by a spreadsheet, never run); numbers stay numbers."""
    import pandas as pd

    from deepcovid.files import neutralise_formulas

    names = ["=1+1.png", "+SUM(A1).png", "-2.png", "@cmd.png", "plain.png"]
    for name in names:
        Image.fromarray(chest(64, 64, bits=8).astype(np.uint8), "L").save(tmp_path / name)
    out = tmp_path / "scores.csv"
    proc = run_python(
        [
            "-m",
            "deepcovid",
            "predict",
            "--model",
            tiny_trained / "models",
            "--threshold",
            "0.5",
            "--out",
            out,
            "--",
            *names,
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out, keep_default_na=False)
    assert rows["path"].tolist() == ["'=1+1.png", "'+SUM(A1).png", "'-2.png", "'@cmd.png", "plain.png"]
    assert rows["score"].between(0, 1).all()
    frame = pd.DataFrame({"id": ["\tx", "\ry", "ok", "-1"], "value": [-1.5, 2.0, 3.0, -4.0]})
    assert neutralise_formulas(frame).to_dict("list") == {
        "id": ["'\tx", "'\ry", "ok", "'-1"],
        "value": [-1.5, 2.0, 3.0, -4.0],
    }
