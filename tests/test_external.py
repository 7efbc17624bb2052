"""External tests: held-out sources in the split (split.external_sources) evaluated beside the
internal test, and `deepcovid evaluate-external` on a Cohen-layout folder (the real Actualmed copy).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from deepcovid.config import ConfigError, read_yaml, validate
from deepcovid.data.split import SplitError, check_no_leak, make_split
from deepcovid.evaluation.evaluate import COMPACT_KEYS, evaluate, operating_summary
from deepcovid.evaluation.external import folder_table
from workspace import REPO, evaluate_external, read

FRONTAL = ["PA", "AP", "AP Supine", "AP semi erect", "AP erect"]


def _row(source, relpath, patient, label, pool=""):
    return {
        "source": source,
        "relpath": relpath,
        "patient": patient,
        "finding": "COVID-19" if label else "No finding",
        "view": "PA",
        "label": label,
        "group": "covid" if label else "normal",
        "category": "COVID-19" if label else "No Finding",
        "pool": pool,
        "sha256": "",
    }


def _tables():
    pos = pd.DataFrame(
        [_row("cohen", f"p{i}/0.png", f"p{i}", 1) for i in range(30)]
        + [_row("actualmed", f"a{i}.png", f"A{i}", 1) for i in range(8)]
    ).drop(columns="pool")
    neg = pd.DataFrame(
        [_row("cohen", f"n{i}/0.png", f"n{i}", 0, "test" if i < 8 else "train") for i in range(24)]
        + [_row("actualmed", f"b{i}.png", f"B{i}", 0, "train") for i in range(6)]
    )
    return pos, neg


@pytest.mark.parametrize("seed", range(4))
def test_external_sources_never_enter_train_or_validation(seed):
    pos, neg = _tables()
    manifest, report = make_split(
        pos, neg, covid_test_images=10, val_fraction=0.25, seed=seed, external_sources=["actualmed"]
    )
    check_no_leak(manifest)
    ext = manifest[manifest["split"] == "external"]
    assert set(ext["source"]) == {"actualmed"} and len(ext) == 14
    assert not (manifest.loc[manifest["split"] != "external", "source"] == "actualmed").any()
    assert report["external"] == {"images": 14, "patients": 14, "covid": 8, "normal": 6, "other-disease": 0}
    assert report["test"]["covid"] == 10 and report["external_linked_to_internal"] == {"images": 0, "image_ids": []}
    internal, _ = make_split(pos, neg, covid_test_images=10, val_fraction=0.25, seed=seed)
    assert (internal["source"] == "actualmed").any() and not (internal["split"] == "external").any()


def test_an_external_copy_of_an_internal_image_is_left_out():
    """An external image that is a near-duplicate of an internal one (or of its patient) would
    test the model on what it trained on: it is dropped from the external set and counted."""
    pos, neg = _tables()
    near = pd.DataFrame(
        [
            {"group": "d00000", "image_id": "cohen/p3/0.png", "source": "cohen", "patient": "p3", "label": 1},
            {"group": "d00000", "image_id": "actualmed/a2.png", "source": "actualmed", "patient": "A2", "label": 1},
        ]
    )
    manifest, report = make_split(
        pos, neg, covid_test_images=10, val_fraction=0.25, seed=0, duplicates=near, external_sources=["actualmed"]
    )
    assert "actualmed/a2.png" not in set(manifest["image_id"])
    assert report["external_linked_to_internal"] == {"images": 1, "image_ids": ["actualmed/a2.png"]}
    assert report["external"]["images"] == 13
    check_no_leak(manifest, near)
    broken = manifest.copy()
    broken.loc[broken["image_id"] == "cohen/p3/0.png", "split"] = "external"
    with pytest.raises(SplitError):
        check_no_leak(broken, near.assign(image_id=["cohen/p3/0.png", "cohen/p4/0.png"]))


def test_external_source_must_be_a_source_of_the_dataset():
    params = read_yaml(REPO / "params.yaml")
    params["split"]["external_sources"] = ["nih"]
    with pytest.raises(ConfigError, match="split.external_sources"):
        validate(params)


def _predictions(rng, split, n_pos, n_neg, shift):
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(np.int64)
    scores = np.clip(rng.uniform(0, 0.6, n_pos + n_neg) + shift * labels, 0, 1)
    return pd.DataFrame(
        {
            "image_id": [f"{split}{k}" for k in range(n_pos + n_neg)],
            "label": labels,
            "split": split,
            "score": scores,
            "group": np.where(labels == 1, "covid", "normal"),
        }
    )


def test_evaluate_reports_the_external_split_at_the_validation_operating_point(cfg):
    rng = np.random.default_rng(0)
    df = pd.concat(
        [
            _predictions(rng, "val", 20, 40, 0.4),
            _predictions(rng, "test", 30, 60, 0.4),
            _predictions(rng, "external", 25, 15, 0.1),
        ],
        ignore_index=True,
    )
    result = evaluate(df, cfg)
    threshold = result.details["test"]["threshold"]
    ext = df[df["split"] == "external"]
    want = operating_summary(ext["label"].to_numpy(), ext["score"].to_numpy(), threshold, cfg)
    got = result.details["external"]
    for key in ("sensitivity", "specificity", "sensitivity_low", "specificity_high", "n_pos", "n_neg"):
        assert got[key] == pytest.approx(want[key]), key
    assert got["threshold"] == threshold and got["auc"] < result.details["test"]["auc"]
    assert (
        set(result.metrics["external"])
        == set(COMPACT_KEYS["external"])
        >= {"auc", "auc_low", "sensitivity", "specificity", "n_pos", "n_neg"}
    )
    # the test figures and tables stay the internal test's
    assert len(result.test) == 90


def test_evaluate_with_a_given_operating_point(cfg):
    rng = np.random.default_rng(1)
    df = _predictions(rng, "test", 30, 60, 0.4)
    result = evaluate(df, cfg, threshold=0.37)
    assert result.details["test"]["threshold"] == 0.37
    assert result.details["settings"]["operating_point_chosen_on"] == "given" and not result.warnings
    assert not result.details["test"]["threshold_chosen_on_val"]


def test_folder_table_reads_the_real_actualmed_layout(shared_data):
    table, rejected = folder_table(shared_data / "actualmed", FRONTAL)
    assert len(table) == 44 and int(table["label"].sum()) == 26
    assert set(table.loc[table["label"] == 0, "group"]) == {"normal"}
    assert rejected["reason"].tolist() == ["no finding"] * 10
    assert all((shared_data / "actualmed" / r).is_file() for r in table["relpath"])


# ------------------------------------------------------------------------- with a trained model


@pytest.fixture
def trained(tiny_trained):
    return tiny_trained


def test_scoring_files_reproduces_the_pipeline_predictions(trained):
    """The model applied to the raw files (decoded and prepared in memory, as predict and
    evaluate-external do) gives the train stage's own test and validation scores to 1e-6."""
    from deepcovid.data.sources import image_path, read_sources
    from deepcovid.model.inference import load_model, score_files

    pred = pd.read_csv(trained / "data/predictions.csv", dtype={"image_id": str})
    manifest = read(trained / "data/manifest.csv").set_index("image_id")
    roots = read_sources(trained / "data/raw")
    paths = [
        image_path(roots, manifest.loc[i, "source"], manifest.loc[i, "relpath"], trained / "data/raw")
        for i in pred["image_id"]
    ]
    model, record = load_model(trained / "models")
    scores, errors = score_files(model, record, paths, batch_size=16)
    assert not errors
    np.testing.assert_allclose(scores, pred["score"].to_numpy(), atol=1e-6, rtol=0)


def test_evaluate_external_cli_on_the_real_actualmed_folder(trained, shared_data, tmp_path):
    out = tmp_path / "actualmed-eval"
    proc = evaluate_external(shared_data / "actualmed", trained, out, timeout=600)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "evaluate.json").read_text())
    threshold = json.loads((trained / "metrics/evaluate.json").read_text())["test"]["threshold"]
    assert metrics["test"]["threshold"] == pytest.approx(threshold)
    assert metrics["test"]["n_pos"] == 26 and metrics["test"]["n_neg"] == 18
    assert len(pd.read_csv(out / "rejected.csv")) == 10
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 44 and pred["score"].between(0, 1).all()
    assert (out / "plots" / "figures" / "roc.png").is_file() and (out / "thresholds.csv").is_file()
    assert "external test AUC" in proc.stdout
    missing = evaluate_external(tmp_path / "nowhere", trained, out, timeout=120)
    assert missing.returncode == 2 and "nowhere" in missing.stderr.strip().splitlines()[-1]
