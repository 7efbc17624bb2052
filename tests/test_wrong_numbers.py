"""Fast tests that catch a wrong number by what the code produces, in the places where planted bugs
once slipped through: the numeric values of the input normalisation, the rows the audit's
metadata baseline is fitted on, the direction of the pointing game, a NaN on one side of the
reproduction check, the COVID-19 column of the softmax, and the repeats summary without the
pipeline's own split. (A score exactly at the operating point: tests/test_model_integrity.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from deepcovid.checks.reproduction import compare_metrics
from deepcovid.evaluation import audit as A
from deepcovid.evaluation import repeats as R
from deepcovid.explain.regions import pointing_hit
from deepcovid.model.architectures import preprocessing
from deepcovid.model.inference import covid_probability
from deepcovid.model.presets import eval_transform


def _constant(rgb, size=8) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (size, size, 3)).copy()


@pytest.mark.parametrize(
    "name, expect",
    [
        # EfficientNet-Lite: (pixel - 127) / 128, as the TensorFlow training normalised
        ("efficientnet_lite0", lambda p: (p - 127.0) / 128.0),
        # torchvision: ImageNet mean / std, per channel in RGB order
        ("resnet18", lambda p: (p / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])),
    ],
)
def test_the_input_normalisation_gives_the_values_the_network_was_trained_on(name, expect):
    pixel = np.array([255, 0, 128], dtype=np.float64)
    out = eval_transform(preprocessing(name), 8)(_constant(pixel.astype(np.uint8)))
    assert out.shape == (3, 8, 8)
    assert out.mean(dim=(1, 2)).numpy() == pytest.approx(expect(pixel), abs=1e-5)
    assert float(out.std()) > 0 and float(out[0].std()) == pytest.approx(0, abs=1e-6)  # channels kept apart


def test_the_covid_score_is_the_softmax_of_class_1():
    logits = torch.tensor([[0.0, 3.0], [3.0, 0.0], [1.0, 1.0]])
    sigmoid = 1 / (1 + math.exp(-3.0))
    assert covid_probability(logits).tolist() == pytest.approx([sigmoid, 1 - sigmoid, 0.5], abs=1e-7)


def test_the_pointing_game_looks_at_the_hottest_point_not_the_coldest():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[3, 3] = 5.0, -5.0
    hot, cold = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    hot[0, 0] = cold[3, 3] = True
    assert pointing_hit(heat, hot) == 1.0 and pointing_hit(heat, cold) == 0.0
    assert pointing_hit(-heat, hot) == 0.0 and pointing_hit(-heat, cold) == 1.0
    tied = np.zeros((4, 4))
    tied[0, 0] = tied[1, 1] = 1.0
    assert pointing_hit(tied, hot) == 0.0  # every maximum must be inside
    assert math.isnan(pointing_hit(heat, np.zeros((4, 4), bool)))


@pytest.mark.parametrize(
    "committed, current, status",
    [
        (float("nan"), 0.9, "FAIL"),
        (0.9, float("nan"), "FAIL"),
        (float("nan"), float("nan"), "ok"),
        (0.9, 0.9005, "ok"),
        (0.9, 0.92, "FAIL"),
    ],
)
def test_a_nan_on_one_side_of_the_reproduction_check_fails(committed, current, status):
    rows = compare_metrics({"test": {"auc": committed}}, {"test": {"auc": current}}, {"test.*": 0.001})
    assert [r["status"] for r in rows] == [status]


def test_the_metadata_baseline_is_fitted_on_train_and_scored_on_test():
    """Source tells the label one way in train and the other way in validation and test: fitted
    on train, the baseline scores test at AUC 0; fitted on test, validation or all rows, at 1."""
    n = 200
    label = np.array([0, 1] * (n // 2))
    split = np.array(["train", "train", "val", "test", "test"] * (n // 5))
    reverse = split != "train"
    source = np.where((label == 1) ^ reverse, "cohen", "chexpert")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "source": source,
            "view": "PA",
            "label": label,
            "split": split,
            "split_group": [f"g{k}" for k in range(n)],
            "score": np.clip(0.5 * label + rng.uniform(0, 0.6, n), 0, 1),
        }
    )
    result = A.audit(table, None, 0.5, folds=5, seed=0, flag_auc=0.7, metadata=["source"], min_per_class=5)
    assert result["metadata_baseline"]["auc"] == 0.0


def test_the_repeats_summary_leaves_out_the_pipelines_own_split(monkeypatch):
    def fake(head, features, labels, split, *, seed, **kw):
        pipeline = seed == 7  # the pipeline's split is fitted with the stage's seed
        value = 0.0 if pipeline else 1.0
        return {
            "train_images": 1,
            "val_images": 1,
            "test_images": 1,
            "test_covid": 1,
            "threshold": value,
            "auc": value,
            "sensitivity": value,
            "specificity": value,
            "best_epoch": 1,
        }

    monkeypatch.setattr(R, "fit_and_score", fake)
    n = 60
    table = pd.DataFrame(
        {
            "split_group": [f"g{k}" for k in range(n)],
            "label": [k % 3 == 0 for k in range(n)],
            "split": ["train", "val", "test"] * (n // 3),
        }
    )
    summary, rows = R.repeated_splits(
        table, np.zeros((n, 2)), None, splits=4, seed=7, val_fraction=0.2, train={}, target_sensitivity=0.9
    )
    assert rows["split"].tolist() == ["pipeline", "repeat-1", "repeat-2", "repeat-3", "repeat-4"]
    assert summary["pipeline_split"]["auc"] == 0.0
    assert summary["repeats"]["auc"]["mean"] == 1.0 and summary["repeats"]["auc"]["min"] == 1.0
